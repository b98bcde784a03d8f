"""Subspace identification of a linear state-space model (N4SID).

Van Overschee & De Moor (1994, 1996): for the system

    h_{t+1} = A h_t + B u_t + w_t ,   y_t = C h_t + D u_t + v_t ,
    Cov([w_t; v_t]) = [[Q, S], [Sᵀ, R]] ,

stack ``k = horizon`` past and ``k`` future blocks of outputs (and inputs) into
block Hankel matrices with ``j = T − 2k + 1`` columns,

    Y_p = Y_{0|k−1},  Y_f = Y_{k|2k−1},  U_p, U_f likewise,  W_p = [U_p; Y_p].

The *oblique projection* of the future outputs along the future inputs onto
the past, ``O_k = Y_f /_{U_f} W_p``, equals ``Γ_k X̂_k``: the extended
observability matrix ``Γ_k = [C; CA; …; CA^{k−1}]`` times a bank of Kalman
filter states (for no inputs it is the orthogonal projection ``Y_f / Y_p``).
It is computed from the LQ factorisation ``[U_f; W_p; Y_f] = L Qᵀ`` as

    O_k = L₃₂ L₂₂⁺ [L₂₁  L₂₂] [Q₁  Q₂]ᵀ ,

so its SVD ``O_k = U Σ Vᵀ`` only needs the small matrix in front of
``[Q₁ Q₂]ᵀ`` (orthonormal rows). The order ``n`` is the number of dominant
singular values (by default the largest gap ``σ_i / σ_{i+1}``), and
``Γ_k = U₁ Σ₁^{1/2}``. Then

* ``C`` is the first block row of ``Γ_k`` and ``A`` solves the shift
  invariance ``Γ̲_k A = Γ̄_k`` (``Γ_k`` without its last / first block row) by
  least squares;
* the state sequences ``X̂_k = Γ_k⁺ O_k`` and ``X̂_{k+1} = Γ_{k−1}⁺ O_{k+1}``
  (the projection with the past/future boundary shifted one block) give
  ``B`` and ``D`` by least squares from
  ``[X̂_{k+1} − A X̂_k; Y_{k|k} − C X̂_k] = [B; D] U_{k|k} + ρ``;
* the residuals ``ρ = [ρ_w; ρ_v]`` give ``[[Q, S], [Sᵀ, R]] = ρ ρᵀ / j``.

The state basis is arbitrary (any similarity ``T A T⁻¹`` fits equally), and
because the states are Kalman-filter estimates the noise covariances are
those of an output-equivalent *innovation-form* realisation
(``Q ≈ K Rₑ Kᵀ``, ``S ≈ K Rₑ``, ``R ≈ Rₑ``), not of the unidentifiable
original ``Q``, ``R``. No mean is removed: centre the data first if the model
should have none. N4SID needs complete data; for missing values use
:func:`tertulia.filters.learn.fit_em`.

Legend: T time steps, p outputs, m inputs, n states, k horizon (block rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

from ..errors import DataError, ShapeError
from .kalman import LinearGaussian

__all__ = ["N4SIDResult", "n4sid"]


@dataclass
class N4SIDResult:
    """An identified model (torch float64; ``B``, ``D`` are ``None`` without inputs).

    ``singular_values`` are those of the oblique projection ``O_k`` (length
    ``k·p``); ``order`` is the chosen state dimension; ``dt`` the sampling
    step given to :func:`n4sid` (``None`` if not given).
    """

    A: torch.Tensor  # (n, n)
    B: torch.Tensor | None  # (n, m)
    C: torch.Tensor  # (p, n)
    D: torch.Tensor | None  # (p, m)
    Q: torch.Tensor  # (n, n)
    R: torch.Tensor  # (p, p)
    S: torch.Tensor  # (n, p)  Cov(w_t, v_t)
    singular_values: torch.Tensor  # (k·p,)
    order: int
    dt: float | None = None

    @property
    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues of ``A`` (complex), the discrete-time poles."""
        return torch.linalg.eigvals(self.A)

    @property
    def continuous_eigenvalues(self) -> torch.Tensor:
        """Continuous-time poles ``log(λ) / dt``; needs ``dt``."""
        if self.dt is None:
            raise DataError("continuous_eigenvalues needs the sampling step: pass dt= to n4sid")
        return torch.log(self.eigenvalues) / self.dt

    def model(self, *, augment: bool = False) -> LinearGaussian:
        """The identified system as a :class:`~tertulia.filters.kalman.LinearGaussian`.

        ``LinearGaussian`` has uncorrelated ``w`` and ``v``. With
        ``augment=False`` (n states) the cross-covariance ``S`` is dropped: exact
        only when ``S = 0``, and a poor filter when the identified noise is
        mostly the innovation-form ``K e_t`` (then ``Q`` is small). With
        ``augment=True`` (n + p states) the state noise is split as
        ``w_t = K v_t + w̃_t`` (``K = S R⁻¹``, ``w̃ ⟂ v``) and ``v_t`` becomes a
        state:

            [h_{t+1}; v_{t+1}] = [[A, K], [0, 0]] [h_t; v_t] + [B; 0] u_t + [w̃_t; v_{t+1}],
            y_t = [C, I] [h_t; v_t] + D u_t ,

        which reproduces ``Q``, ``R``, ``S`` exactly (state noise
        ``blockdiag(Q − K R Kᵀ, R)``, floored at zero; observation noise 0;
        start the filter with the ``v`` block of the covariance at ``R``).
        """
        if not augment:
            return LinearGaussian(A=self.A, C=self.C, Q=self.Q, R=self.R, B=self.B, D=self.D)
        n, p = self.A.shape[0], self.C.shape[0]
        K = torch.linalg.solve(self.R, self.S.T).T
        A = torch.zeros(n + p, n + p, dtype=self.A.dtype)
        A[:n, :n], A[:n, n:] = self.A, K
        C = torch.cat([self.C, torch.eye(p, dtype=self.C.dtype)], dim=1)
        Qh = self.Q - K @ self.R @ K.T
        w, V = torch.linalg.eigh(0.5 * (Qh + Qh.T))
        Qh = (V * w.clamp_min(0.0)) @ V.T
        Q = torch.zeros(n + p, n + p, dtype=self.A.dtype)
        Q[:n, :n], Q[n:, n:] = Qh, self.R
        B = None
        if self.B is not None:
            B = torch.cat([self.B, torch.zeros(p, self.B.shape[1], dtype=self.B.dtype)], dim=0)
        R = torch.zeros(p, p, dtype=self.R.dtype)
        return LinearGaussian(A=A, C=C, Q=Q, R=R, B=B, D=self.D)


def _as_series(name: str, x, T: int | None = None) -> np.ndarray:
    """``x`` as a float64 (T, k) array; 1-D is one column; NaN/Inf refused."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} is not a numeric array: {exc}") from None
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ShapeError(f"{name} must be (T,) or (T, channels); got shape {a.shape}")
    if T is not None and a.shape[0] != T:
        raise ShapeError(f"{name} has {a.shape[0]} time steps but y has {T}; they must match")
    bad = int((~np.isfinite(a)).sum())
    if bad:
        raise DataError(
            f"{name} has {bad} NaN/Inf entries; n4sid needs complete data"
            " (fill or drop them, or use fit_em, which handles missing values)"
        )
    return a


def _hankel(x: np.ndarray, first: int, rows: int, cols: int) -> np.ndarray:
    """Block Hankel matrix ``X_{first|first+rows−1}``: block row r is x[first+r : first+r+cols]ᵀ."""
    return np.concatenate([x[first + r : first + r + cols].T for r in range(rows)], axis=0)


def _oblique(
    yf: np.ndarray, uf: np.ndarray, wp: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Oblique projection ``Y_f /_{U_f} W_p`` from the LQ factorisation.

    Returns ``(small, basis, L_w)`` with ``O = small @ basis``, ``basis``
    having orthonormal rows (so the SVD of ``small`` gives that of ``O``), and
    ``L_w`` the Cholesky factor of ``Y_f Π⊥_{U_f} Y_fᵀ = L₃₂L₃₂ᵀ + L₃₃L₃₃ᵀ``.
    """
    mu, mw = uf.shape[0], wp.shape[0]
    Qm, Rm = np.linalg.qr(np.concatenate([uf, wp, yf], axis=0).T, mode="reduced")
    L = Rm.T
    L21, L22 = L[mu : mu + mw, :mu], L[mu : mu + mw, mu : mu + mw]
    L32, L33 = L[mu + mw :, mu : mu + mw], L[mu + mw :, mu + mw :]
    small = L32 @ np.linalg.pinv(L22) @ np.concatenate([L21, L22], axis=1)
    W = L32 @ L32.T + L33 @ L33.T
    W = 0.5 * (W + W.T) + 1e-12 * np.trace(W) / W.shape[0] * np.eye(W.shape[0])
    return small, Qm[:, : mu + mw].T, np.linalg.cholesky(W)


def n4sid(
    y,
    u=None,
    *,
    order: int | None = None,
    horizon: int = 10,
    dt: float | None = None,
    weighting: str = "cva",
) -> N4SIDResult:
    """Identify ``(A, B, C, D, Q, R, S)`` from one complete record (see module docstring).

    ``y`` is (T,) or (T, p), ``u`` (T,) or (T, m) or ``None``; numpy or torch.
    ``horizon`` is the number of block rows k of the past and future Hankel
    matrices (it bounds the order: ``n ≤ p·(k−1)``); it needs
    ``T − 2k + 1 ≥ 2k(m + p)`` columns. ``order=None`` picks the largest gap
    ``σ_i / σ_{i+1}`` in the singular values. ``dt`` is only recorded (for
    :attr:`N4SIDResult.continuous_eigenvalues`).
    """
    Y = _as_series("y", y)
    T, p = Y.shape
    U = None if u is None else _as_series("u", u, T)
    m = 0 if U is None else U.shape[1]
    if weighting not in ("cva", "none"):
        raise DataError(f"weighting must be 'cva' or 'none'; got {weighting!r}")
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 2:
        raise DataError(f"horizon must be an integer ≥ 2; got {horizon!r}")
    k = int(horizon)
    j = T - 2 * k + 1
    if j < 2 * k * (m + p):
        need = 2 * k * (m + p) + 2 * k - 1
        raise DataError(
            f"horizon={k} is too large for T={T} time steps: with {p} output(s) and {m} input(s)"
            f" it needs T ≥ {need}; use a smaller horizon or a longer record"
        )
    max_order = p * (k - 1)
    if order is not None and (
        isinstance(order, bool)
        or not isinstance(order, (int, np.integer))
        or not 1 <= order <= max_order
    ):
        raise ShapeError(
            f"order must be an integer in [1, p·(horizon−1)] = [1, {max_order}]; got {order!r}"
        )

    Yp, Yf = _hankel(Y, 0, k, j), _hankel(Y, k, k, j)
    # One block further: future k−1 blocks, past k+1 blocks (for X̂_{k+1}).
    Yf_m, Yp_p = _hankel(Y, k + 1, k - 1, j), _hankel(Y, 0, k + 1, j)
    if U is not None:
        Up, Uf = _hankel(U, 0, k, j), _hankel(U, k, k, j)
        Uf_m, Up_p = _hankel(U, k + 1, k - 1, j), _hankel(U, 0, k + 1, j)
        Wp, Wp_p = np.concatenate([Up, Yp]), np.concatenate([Up_p, Yp_p])
    else:
        Uf = Uf_m = np.zeros((0, j))
        Wp, Wp_p = Yp, Yp_p

    small, basis, Lw = _oblique(Yf, Uf, Wp)
    if weighting == "cva":
        Us, s, _ = np.linalg.svd(
            scipy.linalg.solve_triangular(Lw, small, lower=True), full_matrices=False
        )
    else:
        Us, s, _ = np.linalg.svd(small, full_matrices=False)
    if order is None:
        sv = s[: max_order + 1]
        ratio = np.log(np.maximum(sv[:-1], 1e-300)) - np.log(np.maximum(sv[1:], 1e-300))
        n = int(np.argmax(ratio)) + 1
    else:
        n = int(order)

    Gam = Us[:, :n] * np.sqrt(s[:n])
    if weighting == "cva":
        Gam = Lw @ Gam
    C = Gam[:p]
    A = np.linalg.lstsq(Gam[:-p], Gam[p:], rcond=None)[0]
    O_k = small @ basis
    small_m, basis_m, _ = _oblique(Yf_m, Uf_m, Wp_p)
    X_k = np.linalg.pinv(Gam) @ O_k
    X_k1 = np.linalg.pinv(Gam[:-p]) @ (small_m @ basis_m)
    Y_kk = Y[k : k + j].T
    lhs = np.concatenate([X_k1 - A @ X_k, Y_kk - C @ X_k])
    if U is not None:
        U_kk = U[k : k + j].T
        BD = np.linalg.lstsq(U_kk.T, lhs.T, rcond=None)[0].T
        rho = lhs - BD @ U_kk
        B, D = BD[:n], BD[n:]
    else:
        rho, B, D = lhs, None, None
    cov = rho @ rho.T / j
    cov = 0.5 * (cov + cov.T)

    def t(a):
        return None if a is None else torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64)

    return N4SIDResult(
        A=t(A),
        B=t(B),
        C=t(C),
        D=t(D),
        Q=t(cov[:n, :n]),
        R=t(cov[n:, n:]),
        S=t(cov[:n, n:]),
        singular_values=t(s),
        order=n,
        dt=dt,
    )
