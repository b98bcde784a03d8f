"""Batched, differentiable Kalman filter and Rauch–Tung–Striebel smoother.

Model (discrete, linear Gaussian, possibly time-varying), t = 0 … T−1::

    h_{t+1} = A_t h_t + B_t u_t + w_t,   w_t ~ N(0, Q_t)
    y_t     = C_t h_t + D_t u_t + v_t,   v_t ~ N(0, R_t)

The start is the *predicted* state at t = 0 (Durbin & Koopman's a_1, P_1): the
first step is an update, with no prediction before it.

Filter, one step (a, P the predicted moments a_{t|t−1}, P_{t|t−1})::

    v = y − C a − D u            innovation
    F = C P Cᵀ + R = L Lᵀ        innovation covariance and its Cholesky factor
    K = P Cᵀ F⁻¹                 gain (through cholesky_solve, never F⁻¹)
    a_{t|t} = a + K v
    P_{t|t} = (I − KC) P (I − KC)ᵀ + K R Kᵀ   (Joseph)   or   P − K C P
            = Y − (Y Cᵀ − K R) Kᵀ,  Y = (I − KC) P = P − K (C P)   (how Joseph is evaluated)
    ℓ_t = −½ (p_t log 2π + 2 Σ log diag L + vᵀ F⁻¹ v)
    a_{t+1|t} = A a_{t|t} + B u,   P_{t+1|t} = A P_{t|t} Aᵀ + Q

Every covariance is symmetrised, ``P ← (P + Pᵀ)/2``. The covariance recursion
does not depend on y: when nothing in it differs between series (no batch axis
in the model or the start covariance, one missing pattern) it runs once and
the covariance outputs are expanded views over B. Missing values (NaN in
y) are exact: the missing rows of C and entries of v are zeroed and the
missing block of F is replaced by the identity, decoupled from the rest, so
the update uses the observed entries only (K has zero columns for them, so
``K R Kᵀ`` and ``K C`` are unchanged by the masking) and only the p_t observed
entries count in the 2π term. A fully missing step leaves ``a_{t|t} = a``,
``P_{t|t} = P`` and ``ℓ_t = 0``.

Exact diffuse start (Durbin & Koopman 2012 §5.2, Koopman 1997),
``P_1 = κ P_∞ + P_*`` with κ → ∞: while ``‖P_∞‖²_F > 1e-10`` the
observations are processed one scalar at a time (univariate treatment; a
non-diagonal R is decorrelated by ``R = L_u Δ L_uᵀ`` (unit-lower L_u, diagonal
Δ, from the Cholesky factor; the same LDL transform statsmodels uses), i.e.
``y* = L_u⁻¹ y``, ``C* = L_u⁻¹ C``, scalar noise variances Δ_ii). For scalar
entry i with row z::

    M_∞ = P_∞ zᵀ, F_∞ = z M_∞;   M_* = P_* zᵀ, F_* = z M_* + r_i
    F_∞ > 1e-10:  K = M_∞/F_∞, a += K v,
                  P_* ← P_* + K Kᵀ F_* − M_* Kᵀ − K M_*ᵀ,  P_∞ ← P_∞ − K M_∞ᵀ,
                  ℓ += −½ log(2π F_∞)
    else F_* > 1e-10:  K = M_*/F_*, a += K v, P_* ← P_* − K M_*ᵀ,
                  ℓ += −½ (log 2π F_* + v²/F_*)

then ``P_∞ ← A P_∞ Aᵀ``. This is statsmodels' convention: the diffuse steps
add their ``−½ log 2π F_∞`` terms (so with ``burn=0`` the local-level log-
likelihood is ``−½ log 2π`` below the ``loglikelihood_burn=1`` value), and
``burn`` drops the first steps from the sum. ``diffuse_steps`` (d) is the
number of steps of the batch's longest diffuse period; from step d the
batched multivariate filter runs. The reported ``cov``/``pred_cov`` are the
P_* parts during the diffuse period, ``diffuse_cov``/``diffuse_pred_cov`` the
P_∞ parts. The Joseph form is used outside the diffuse period only.

RTS smoother, backwards from the filtered moments (m, P filtered; m⁻, P⁻
predicted)::

    J_t   = P_{t|t} A_tᵀ P_{t+1|t}⁻¹
    m_t^s = m_{t|t} + J_t (m_{t+1}^s − m_{t+1|t})
    P_t^s = P_{t|t} + J_t (P_{t+1}^s − P_{t+1|t}) J_tᵀ
    Cov(h_{t+1}, h_t | Y) = P_{t+1}^s J_tᵀ

The solve with P_{t+1|t} is a Cholesky solve (an eigen pseudo-inverse for a
series whose P_{t+1|t} is singular). At diffuse steps with ``P_∞,t|t ≠ 0`` the
gain and the conditional covariance ``Σ_t = P_{t|t} − J_t P_{t+1|t} J_tᵀ`` are
their exact κ → ∞ limits (see :func:`_diffuse_gain`, which needs an
eigendecomposition of ``A P_∞ Aᵀ``: no gradients through those steps), and
``P_t^s = Σ_t + J_t P_{t+1}^s J_tᵀ``.

Legend: B series, T steps, n states, p observations, m inputs, d diffuse
steps. All outputs are batched (leading B) even when y is (T, p).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import CovarianceError, DataError, ShapeError
from ._checks import as_tensor, check_covariance, check_shape, check_square

_LOG_2PI = math.log(2.0 * math.pi)
_TOL_DIFFUSE = 1e-10  # F_∞ and ‖P_∞‖²_F thresholds (statsmodels' tolerance_diffuse)
_INITS = ("known", "diffuse", "approximate_diffuse")
_SERIAL_SIZE = 1 << 17  # per-step tensors smaller than this run on one intra-op thread


@contextmanager
def _one_thread(enabled: bool) -> Iterator[None]:
    """One intra-op thread inside the block (restored after) when ``enabled``.

    The recursions are long chains of tiny tensor ops: extra threads only add
    a synchronisation per op, which costs milliseconds on a busy machine.
    """
    threads = torch.get_num_threads()
    if not enabled or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _serial_when_small(fn: Callable[..., FilterResult]) -> Callable[..., FilterResult]:
    """Run ``fn(model, y, …)`` on one intra-op thread when its per-step tensors are small."""

    @functools.wraps(fn)
    def wrapper(model: LinearGaussian, y: Tensor, **kwargs: Any) -> FilterResult:
        with _one_thread(_small(model.A, model.C, y)):
            return fn(model, y, **kwargs)

    return wrapper


def _small(A, C, y) -> bool:
    """Whether the per-step tensors of a filter call are small (see :func:`_one_thread`)."""
    try:
        n = int(np.shape(A)[-1]) if not hasattr(A, "shape") else int(A.shape[-1])
        p = int(np.shape(C)[-2]) if not hasattr(C, "shape") else int(C.shape[-2])
        ys = tuple(y.shape) if hasattr(y, "shape") else np.shape(y)
    except (IndexError, TypeError, ValueError):
        return False
    nb = int(ys[0]) if len(ys) == 3 else 1
    return nb * (n + p) ** 2 <= _SERIAL_SIZE


# --------------------------------------------------------------------- model


@dataclass
class LinearGaussian:
    """Discrete model ``h_{t+1} = A_t h_t + B_t u_t + w_t``, ``w ~ N(0, Q_t)``;
    ``y_t = C_t h_t + D_t u_t + v_t``, ``v ~ N(0, R_t)``.

    Each matrix is time-invariant ``(r, c)``, time-varying ``(T, r, c)`` or
    per series and time ``(B, T, r, c)`` (size-1 B or T axes broadcast).
    ``A[t]``, ``B[t]``, ``Q[t]`` map step t to t+1 (the last one is unused).
    Shapes: A (n, n), C (p, n), Q (n, n), R (p, p), B (n, m), D (p, m).
    """

    A: Tensor
    C: Tensor
    Q: Tensor
    R: Tensor
    B: Tensor | None = None
    D: Tensor | None = None

    @property
    def n_state(self) -> int:
        """n, the state dimension."""
        return int(torch.as_tensor(self.A).shape[-1])

    @property
    def n_obs(self) -> int:
        """p, the observation dimension."""
        return int(torch.as_tensor(self.C).shape[-2])

    def validate(self) -> LinearGaussian:
        """Check shapes and covariances; returns ``self`` (unchanged).

        Time-invariant Q and R must be symmetric PSD; time-varying ones are
        checked for shape and symmetry only (cheap).
        """
        _model_tensors(self, torch.float64)
        return self


def _model_tensors(model: LinearGaussian, dtype: torch.dtype) -> dict[str, Tensor]:
    """Validated model matrices as ``dtype`` tensors (None entries left out)."""
    mats: dict[str, Tensor] = {}
    for name in ("A", "C", "Q", "R", "B", "D"):
        value = getattr(model, name)
        if value is None:
            continue
        t = as_tensor(name, value, dtype=dtype)
        if not 2 <= t.dim() <= 4:
            raise ShapeError(
                f"{name} must be (r, c), (T, r, c) or (B, T, r, c); got shape {tuple(t.shape)}"
            )
        mats[name] = t
    n = check_square("A", mats["A"])
    check_shape("C", mats["C"], None, n)
    p = int(mats["C"].shape[-2])
    if check_square("Q", mats["Q"]) != n:
        raise ShapeError(f"Q must be ({n}, {n}) like A; got {tuple(mats['Q'].shape[-2:])}")
    if check_square("R", mats["R"]) != p:
        raise ShapeError(
            f"R must be ({p}, {p}) for C with {p} rows; got {tuple(mats['R'].shape[-2:])}"
        )
    m = None
    for name, rows in (("B", n), ("D", p)):
        if name in mats:
            check_shape(name, mats[name], rows, m)
            m = int(mats[name].shape[-1])
    # leading axes: a common time length and batch size (or 1)
    for axis, what in ((-3, "time"), (-4, "batch")):
        sizes = {k: int(v.shape[axis]) for k, v in mats.items() if v.dim() >= -axis}
        big = {s for s in sizes.values() if s != 1}
        if len(big) > 1:
            raise ShapeError(
                f"model matrices disagree on the {what} axis: {sizes}; use one length (or 1)"
            )
    for name in ("Q", "R"):
        t = mats[name]
        if all(s == 1 for s in t.shape[:-2]):
            check_covariance(name, t.reshape(t.shape[-2:]))
        else:
            scale = t.abs().amax().clamp_min(1e-300)
            asym = (t - t.transpose(-1, -2)).abs().amax()
            if asym > 1e-8 * scale:
                raise CovarianceError(
                    f"{name} is not symmetric at some step (max |M - Mᵀ| = {float(asym):.3g});"
                    " covariances must be symmetric positive semi-definite"
                )
    return mats


class _Seq:
    """A model matrix as ``(Bm, Tm, r, c)``; ``at(t)`` is (r, c) or (B, r, c)."""

    def __init__(self, m: Tensor, n_batch: int, n_time: int, name: str):
        while m.dim() < 4:
            m = m.unsqueeze(0)
        bm, tm = m.shape[0], m.shape[1]
        if bm not in (1, n_batch) or tm not in (1, n_time):
            raise ShapeError(
                f"{name} has leading shape {tuple(m.shape[:2])} (batch, time); allowed batch 1 or"
                f" {n_batch}, time 1 or {n_time}"
            )
        self.full = m
        self.varying = tm > 1
        self._fixed = m[0, 0] if bm == 1 else m[:, 0]
        self._fixed_t = self._fixed.transpose(-1, -2)
        self._kron_t: Tensor | None = None

    def at(self, t: int) -> Tensor:
        if not self.varying:
            return self._fixed
        m = self.full[:, t]
        return m[0] if m.shape[0] == 1 else m

    def at_t(self, t: int) -> Tensor:
        """The transpose of ``at(t)``."""
        if not self.varying:
            return self._fixed_t
        return self.at(t).transpose(-1, -2)

    def quad(self, t: int, P: Tensor) -> Tensor:
        """``M_t P M_tᵀ`` for symmetric P (nc, c, c): (nc, r, r).

        A matrix shared by the batch with c ≤ 8 uses one product with the
        Kronecker square, ``vec(M P Mᵀ) = (M ⊗ M) vec(P)`` (row-major vec).
        """
        m = self.at(t)
        r, c = int(m.shape[-2]), int(m.shape[-1])
        if m.dim() == 2 and c <= 8:
            if not self.varying:
                if self._kron_t is None:
                    self._kron_t = torch.kron(m, m).transpose(0, 1)
                kt = self._kron_t
            else:
                kt = torch.kron(m, m).transpose(0, 1)
            nc = P.shape[0]
            return (P.reshape(nc, c * c) @ kt).view(nc, r, r)
        return m @ P @ self.at_t(t)


def _mv(m: Tensor, x: Tensor) -> Tensor:
    """``m x`` for m (r, c), (1, r, c) or (B, r, c) and x (B, c): (B, r)."""
    if m.dim() == 3 and m.shape[0] == 1:
        m = m[0]
    if m.dim() == 2:
        return x @ m.transpose(0, 1)
    return (m @ x.unsqueeze(-1)).squeeze(-1)


def _sym(p: Tensor) -> Tensor:
    return 0.5 * (p + p.transpose(-1, -2))


def _apply_input(
    seq: _Seq | None, u: Tensor | None, shape: tuple[int, ...], like: Tensor
) -> Tensor:
    """``M_t u_t`` for every t at once: (B, T, r) (zeros when there is no input)."""
    if seq is None or u is None:
        return like.new_zeros(shape)
    return torch.einsum("...tij,...tj->...ti", seq.full, u).expand(shape)


# --------------------------------------------------------------------- results


@dataclass
class FilterResult:
    """Kalman filter output (always batched).

    ``mean``/``cov``: filtered ``E[h_t | y_0..y_t]`` (B, T, n) / (B, T, n, n).
    ``pred_mean``/``pred_cov``: predicted ``E[h_t | y_0..y_{t−1}]``; index 0 is
    the start. ``innovation`` (B, T, p): ``y_t − C a_{t|t−1} − D u_t``, NaN where
    y is missing; ``innovation_cov`` (B, T, p, p): ``C P_{t|t−1} Cᵀ + R`` (the
    P_* part during the diffuse period). ``loglik_t`` (B, T): per-step terms,
    0 for fully missing and burnt steps; ``loglik`` (B,) their sum; ``nobs``
    (B,) the observed scalars counted. ``diffuse_steps``: d, the length of the
    exact diffuse period (0 unless ``init='diffuse'``; d = T means some
    diffuse direction was never identified, and its moments are not
    meaningful); ``diffuse_cov`` / ``diffuse_pred_cov`` (B, d, n, n): the
    filtered / predicted P_∞ parts. Covariances shared by all series are
    expanded views (stride 0 over B): ``.contiguous()`` before editing in place.
    """

    mean: Tensor
    cov: Tensor
    pred_mean: Tensor
    pred_cov: Tensor
    innovation: Tensor
    innovation_cov: Tensor
    loglik_t: Tensor
    loglik: Tensor
    diffuse_steps: int
    nobs: Tensor
    diffuse_cov: Tensor | None = None
    diffuse_pred_cov: Tensor | None = None


@dataclass
class SmootherResult:
    """RTS smoother output (always batched).

    ``mean`` (B, T, n): ``E[h_t | y_0..y_{T−1}]``; ``cov`` (B, T, n, n);
    ``lag1_cov`` (B, T, n, n): ``Cov(h_t, h_{t−1} | Y) = P_t^s J_{t−1}ᵀ`` (entry
    0 is zeros); ``gain`` (B, T−1, n, n): the smoother gains J_t.
    """

    mean: Tensor
    cov: Tensor
    lag1_cov: Tensor
    gain: Tensor


# --------------------------------------------------------------------- inputs


def _series(y, dtype: torch.dtype) -> Tensor:
    try:
        t = torch.as_tensor(y, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"y is not a numeric array: {exc}") from None
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise ShapeError(f"y must be (T, p) or (B, T, p); got shape {tuple(t.shape)}")
    if torch.isinf(t).any():
        raise DataError("y has infinite entries; only NaN (missing) is allowed")
    return t


def _inputs(u, dtype: torch.dtype, n_batch: int, n_time: int, m: int) -> Tensor:
    try:
        t = torch.as_tensor(u, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"u is not a numeric array: {exc}") from None
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[1] != n_time or t.shape[2] != m or t.shape[0] not in (1, n_batch):
        raise ShapeError(
            f"u must be ({n_time}, {m}) or ({n_batch}, {n_time}, {m}); got shape {tuple(t.shape)}"
        )
    if not torch.isfinite(t).all():
        raise DataError("u has NaN or infinite entries; inputs must be finite")
    return t


def _start(
    name: str, value, default: Tensor, n: int, n_batch: int, dtype: torch.dtype, cov: bool
) -> Tensor:
    """Initial mean (B, n) or covariance (1 or B, n, n) (a shared covariance keeps 1)."""
    t = default if value is None else as_tensor(name, value, dtype=dtype)
    want = (n, n) if cov else (n,)
    k = len(want)
    if (
        tuple(t.shape[-k:]) != want
        or t.dim() not in (k, k + 1)
        or (t.dim() == k + 1 and t.shape[0] not in (1, n_batch))
    ):
        raise ShapeError(
            f"{name} must be {want} or ({n_batch}, {', '.join(map(str, want))}); got shape"
            f" {tuple(t.shape)}"
        )
    if cov and value is not None:
        check_covariance(name, t)
    if cov:
        return t if t.dim() == 3 else t.unsqueeze(0)
    return t.expand(n_batch, n)


# --------------------------------------------------------------------- filter


@_serial_when_small
def kalman_filter(
    model: LinearGaussian,
    y: Tensor,
    *,
    u: Tensor | None = None,
    init_mean: Tensor | None = None,
    init_cov: Tensor | None = None,
    init: str = "known",
    kappa: float = 1e6,
    init_cov_inf: Tensor | None = None,
    joseph: bool = True,
    burn: int = 0,
    dtype: torch.dtype = torch.float64,
) -> FilterResult:
    """Kalman filter over a batch of series (see the module docstring).

    ``y``: (T, p) or (B, T, p), NaN = missing; ``u``: (T, m) or (B, T, m),
    needed when the model has B or D. The start is the predicted state at
    t = 0: ``init='known'``: ``N(init_mean, init_cov)`` (defaults 0, I);
    ``'approximate_diffuse'``: ``P_1 = κ P_∞ + P_*``; ``'diffuse'``: exact
    κ → ∞ (Durbin & Koopman), with ``P_* = init_cov`` (default 0) and ``P_∞ =
    init_cov_inf`` (default I; e.g. ``diag(mask)`` for a partly diffuse
    state). ``burn`` leading steps are left out of the log-likelihood.
    Differentiable in the model matrices, the start and y.

    The covariance recursion does not depend on the data: when no model
    matrix and no start covariance has a batch axis and every series has the
    same missing pattern, it runs once and the covariance outputs are
    expanded views over B (stride 0). When the per-step tensors are small the
    recursion runs on one intra-op thread (``torch.set_num_threads`` is
    restored afterwards): threads only add synchronisation to tiny ops.
    """
    if init not in _INITS:
        raise ValueError(f"init must be one of {_INITS}, got {init!r}")
    if burn < 0:
        raise ValueError(f"burn must be >= 0, got {burn}")
    if init == "approximate_diffuse" and not kappa > 0:
        raise ValueError(f"kappa must be > 0, got {kappa}")
    mats = _model_tensors(model, dtype)
    n, p = int(mats["A"].shape[-1]), int(mats["C"].shape[-2])
    yt = _series(y, dtype)
    nb, nt = int(yt.shape[0]), int(yt.shape[1])
    if yt.shape[2] != p:
        raise ShapeError(f"y has {yt.shape[2]} columns but C has {p} rows; y must be (T, {p})")
    if nt == 0:
        raise DataError("y has no time steps; need T >= 1")
    obs = ~torch.isnan(yt)  # (B, T, p)
    counts = obs.flatten(1).sum(1)
    if (counts == 0).any():
        i = int(torch.nonzero(counts == 0)[0, 0])
        raise DataError(f"series {i} has no observations; every series needs at least one value")
    seq = {k: _Seq(v, nb, nt, k) for k, v in mats.items()}
    has_input = "B" in seq or "D" in seq
    if has_input and u is None:
        raise ShapeError("the model has B or D but u is None; pass u as (T, m) or (B, T, m)")
    if not has_input and u is not None:
        raise ShapeError("u was given but the model has neither B nor D; pass B and/or D")
    ut = None
    if u is not None:
        m = int(mats["B" if "B" in mats else "D"].shape[-1])
        ut = _inputs(u, dtype, nb, nt, m)
    bu = _apply_input(seq.get("B"), ut, (nb, nt, n), yt)  # (B, T, n)
    du = _apply_input(seq.get("D"), ut, (nb, nt, p), yt)  # (B, T, p)

    dev = yt.device
    eye_n = torch.eye(n, dtype=dtype, device=dev)
    a = _start("init_mean", init_mean, yt.new_zeros(n), n, nb, dtype, cov=False)
    p_inf = None
    if init == "known":
        P = _start("init_cov", init_cov, eye_n, n, nb, dtype, cov=True)
    else:
        P = _start("init_cov", init_cov, yt.new_zeros(n, n), n, nb, dtype, cov=True)
        p_inf = _start("init_cov_inf", init_cov_inf, eye_n, n, nb, dtype, cov=True)
        if init == "approximate_diffuse":
            P = kappa * p_inf + P
            p_inf = None
    # covariances are shared (batch 1) when nothing in their recursion depends on the series
    shared = (
        all(int(s.full.shape[0]) == 1 for s in seq.values())
        and P.shape[0] == 1
        and (p_inf is None or p_inf.shape[0] == 1)
        and bool((obs == obs[:1]).all())
    )
    nc = 1 if shared else nb
    P = P.expand(nc, n, n)
    obs_c = obs[:1] if shared else obs  # (nc, T, p): the pattern the covariances see

    y0 = torch.where(obs, yt, torch.zeros((), dtype=dtype)) - du  # y − D u; missing → −D u
    has_missing = not bool(obs.all())
    obs_f = obs_c.to(dtype)
    out: dict[str, list[Tensor]] = {k: [] for k in ("m", "P", "pm", "pP", "v", "F", "ll", "no")}
    infos: list[Tensor] = []
    d = 0
    diff_f: list[Tensor] = []
    diff_p: list[Tensor] = []
    if p_inf is not None:
        p_inf = p_inf.expand(nc, n, n)
        r_diag = _is_diagonal(mats["R"])
        while d < nt:
            live = (p_inf.detach() ** 2).sum((-2, -1)) > _TOL_DIFFUSE
            if not bool(live.any()):
                break
            p_inf = p_inf * live.to(dtype)[:, None, None]
            out["pm"].append(a)
            out["pP"].append(P)
            diff_p.append(p_inf)
            a, P, p_inf_f, ll, no, v, F = _diffuse_update(
                a, P, p_inf, y0[:, d], obs_c[:, d], seq["C"].at(d), seq["R"].at(d), r_diag
            )
            for k, val in (("m", a), ("P", P), ("ll", ll), ("no", no), ("v", v), ("F", F)):
                out[k].append(val)
            diff_f.append(p_inf_f)
            a = _mv(seq["A"].at(d), a) + bu[:, d]
            P = _sym(seq["A"].quad(d, P) + seq["Q"].at(d))
            p_inf = _sym(seq["A"].quad(d, p_inf_f))
            d += 1

    A, C, Q, R = seq["A"], seq["C"], seq["Q"], seq["R"]
    full_count = torch.full((nc,), float(p), dtype=dtype, device=dev)
    for t in range(d, nt):
        out["pm"].append(a)
        out["pP"].append(P)
        Ct, Ctt, Rt = C.at(t), C.at_t(t), R.at(t)
        pct = P @ Ctt  # (nc, n, p) = P Cᵀ
        F = _sym(C.quad(t, P) + Rt)  # (nc, p, p)
        v = y0[:, t] - _mv(Ct, a)  # (B, p)
        if has_missing:
            o = obs_f[:, t]  # (nc, p)
            pct = pct * o[:, None, :]
            v = v * o
            Fm = F * (o[:, :, None] * o[:, None, :]) + torch.diag_embed(1.0 - o)
            count = o.sum(-1)
        else:
            Fm, count = F, full_count
        L, info = torch.linalg.cholesky_ex(Fm)
        infos.append(info)
        G = pct.transpose(-1, -2)  # (nc, p, n) = C̃ P
        if shared:
            Kt = torch.cholesky_solve(G, L)  # (1, p, n) = Kᵀ
            fv = torch.cholesky_solve(v.transpose(0, 1).unsqueeze(0), L)[0].transpose(0, 1)
        else:
            X = torch.cholesky_solve(torch.cat([G, v.unsqueeze(-1)], dim=-1), L)
            Kt, fv = X[..., :n], X[..., n]  # Kᵀ = F⁻¹ C̃ P, F⁻¹ v
        K = Kt.transpose(-1, -2)  # (nc, n, p); zero columns where y is missing
        a = a + _mv(K, v)
        Y = P - K @ G  # (I − KC) P
        if joseph:  # (I − KC) P (I − KC)ᵀ + K R Kᵀ = Y − (Y Cᵀ − K R) Kᵀ
            P = Y - (Y @ Ctt - K @ Rt) @ Kt
        else:
            P = Y
        P = _sym(P)
        logdet = 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)  # (nc,)
        ll = -0.5 * (count * _LOG_2PI + logdet + (v * fv).sum(-1))  # (B,)
        for k, val in (("m", a), ("P", P), ("v", v), ("F", F), ("ll", ll), ("no", count)):
            out[k].append(val)
        if t + 1 < nt:
            a = _mv(A.at(t), a) + bu[:, t]
            P = _sym(A.quad(t, P) + Q.at(t))

    if infos:
        bad = torch.stack(infos, 1) > 0  # (nc, T − d)
        if bool(bad.any()):
            b, s = (int(x) for x in torch.nonzero(bad)[0])
            raise CovarianceError(
                f"innovation covariance C P Cᵀ + R is not positive definite (series {b}, step"
                f" {s + d}); R must be positive definite on the observed entries"
            )

    def cat(key: str) -> Tensor:
        x = torch.stack(out[key], 1)
        return x.expand((nb,) + tuple(x.shape[1:]))

    keep = (torch.arange(nt, device=dev) >= burn).to(dtype)
    loglik_t = cat("ll") * keep
    nobs = (cat("no") * keep).sum(1)
    innovation = torch.where(obs, cat("v"), torch.full((), float("nan"), dtype=dtype))
    return FilterResult(
        mean=cat("m"),
        cov=cat("P"),
        pred_mean=cat("pm"),
        pred_cov=cat("pP"),
        innovation=innovation,
        innovation_cov=cat("F"),
        loglik_t=loglik_t,
        loglik=loglik_t.sum(1),
        diffuse_steps=d,
        nobs=nobs,
        diffuse_cov=torch.stack(diff_f, 1).expand(nb, d, n, n) if diff_f else None,
        diffuse_pred_cov=torch.stack(diff_p, 1).expand(nb, d, n, n) if diff_p else None,
    )


def _is_diagonal(r: Tensor) -> bool:
    off = r - torch.diag_embed(torch.diagonal(r, dim1=-2, dim2=-1))
    return not bool((off != 0).any())


def _diffuse_update(
    a: Tensor, Ps: Tensor, Pi: Tensor, y0: Tensor, obs: Tensor, Ct: Tensor, Rt: Tensor, r_diag: bool
):
    """One exact-diffuse update, one scalar observation at a time.

    a (B, n); Ps = P_* and Pi = P_∞ (nc, n, n) with nc = 1 (shared) or B;
    y0 = y − D u (B, p), missing entries arbitrary; obs (nc, p) bool. Returns
    the filtered a, P_*, P_∞, ℓ_t (B,), the observed count (nc,), the
    innovation (B, p) and ``C P_* Cᵀ + R`` (nc, p, p).
    """
    dtype = a.dtype
    nc, p = obs.shape
    n = a.shape[-1]
    v_full = y0 - _mv(Ct, a)
    F_full = Ct @ Ps @ Ct.transpose(-1, -2) + Rt
    cs = Ct.expand(nc, p, n)
    if r_diag:
        ys = y0
        r = torch.diagonal(Rt, dim1=-2, dim2=-1).expand(nc, p)
    else:  # R̃ = L_u Δ L_uᵀ on the observed block (missing block: identity)
        o = obs.to(dtype)
        Rm = Rt * (o[:, :, None] * o[:, None, :]) + torch.diag_embed(1.0 - o)
        L, info = torch.linalg.cholesky_ex(Rm)
        if bool((info > 0).any()):
            raise CovarianceError(
                "R is not positive definite on the observed entries; the exact diffuse start"
                " needs a positive definite R"
            )
        dl = torch.diagonal(L, dim1=-2, dim2=-1)  # (nc, p)
        y_obs = torch.where(obs, y0, torch.zeros((), dtype=dtype))
        ys = dl * torch.linalg.solve_triangular(L, y_obs.unsqueeze(-1), upper=False).squeeze(-1)
        cs = dl.unsqueeze(-1) * torch.linalg.solve_triangular(L, cs, upper=False)
        r = dl * dl
    ll = a.new_zeros(a.shape[0])
    count = a.new_zeros(nc)
    one = torch.ones((), dtype=dtype)
    zero = torch.zeros((), dtype=dtype)
    for i in range(p):
        z = cs[:, i]  # (nc, n)
        v = ys[:, i] - (z * a).sum(-1)  # (B,)
        mi = (Pi @ z.unsqueeze(-1)).squeeze(-1)
        fi = (mi * z).sum(-1)
        ms = (Ps @ z.unsqueeze(-1)).squeeze(-1)
        fs = (ms * z).sum(-1) + r[:, i]
        oi = obs[:, i]
        dif = oi & (fi.detach() > _TOL_DIFFUSE)
        reg = oi & ~dif & (fs.detach() > _TOL_DIFFUSE)
        fi_s = torch.where(dif, fi, one)
        fs_s = torch.where(reg, fs, one)
        # diffuse branch: K = M_∞/F_∞
        k0 = mi / fi_s.unsqueeze(-1)
        mk = ms.unsqueeze(-1) * k0.unsqueeze(-2)
        a_d = a + k0 * v.unsqueeze(-1)
        kk = k0.unsqueeze(-1) * k0.unsqueeze(-2)
        Ps_d = Ps + kk * fs[:, None, None] - mk - mk.transpose(-1, -2)
        Pi_d = Pi - k0.unsqueeze(-1) * mi.unsqueeze(-2)
        ll_d = -0.5 * (_LOG_2PI + torch.log(fi_s))
        # ordinary branch: K = M_*/F_*
        k1 = ms / fs_s.unsqueeze(-1)
        a_r = a + k1 * v.unsqueeze(-1)
        Ps_r = Ps - k1.unsqueeze(-1) * ms.unsqueeze(-2)
        ll_r = -0.5 * (_LOG_2PI + torch.log(fs_s) + v * v / fs_s)
        dv, rv = dif.unsqueeze(-1), reg.unsqueeze(-1)
        dm, rm = dv.unsqueeze(-1), rv.unsqueeze(-1)
        a = torch.where(dv, a_d, torch.where(rv, a_r, a))
        Ps = _sym(torch.where(dm, Ps_d, torch.where(rm, Ps_r, Ps)))
        Pi = _sym(torch.where(dm, Pi_d, Pi))
        ll = ll + torch.where(dif, ll_d, torch.where(reg, ll_r, zero))
        count = count + (dif | reg).to(dtype)
    return a, Ps, Pi, ll, count, v_full, F_full


# --------------------------------------------------------------------- smoother


def _psd_solve(M: Tensor, X: Tensor) -> Tensor:
    """``M⁺ X`` for symmetric PSD M (…, n, n): Cholesky, else an eigen pseudo-inverse."""
    L, info = torch.linalg.cholesky_ex(M)
    sol = torch.cholesky_solve(X, L)
    bad = info > 0
    if bool(bad.any()):
        lam, E = torch.linalg.eigh(M)
        cut = 1e-12 * lam.abs().amax(-1, keepdim=True).clamp_min(1e-300)
        inv = torch.where(lam > cut, 1.0 / torch.where(lam > cut, lam, 1.0), 0.0)
        pinv_x = E @ (inv.unsqueeze(-1) * (E.transpose(-1, -2) @ X))
        sol = torch.where(bad[..., None, None], pinv_x, sol)
    return sol


def _diffuse_gain(Pf: Tensor, Pf_inf: Tensor, Pp: Tensor, At: Tensor) -> tuple[Tensor, Tensor]:
    """κ → ∞ limits of ``J = P_f Aᵀ P_p⁻¹`` and ``Σ = P_f − J P_p Jᵀ``.

    With ``P_f = κ P∞_f + P*_f + O(1/κ)``, ``P_p = κ S + P*_p + O(1/κ)``,
    ``S = A P∞_f Aᵀ = V_r Λ V_rᵀ`` (range r, null space n of S, E = [V_r V_n]),
    H = P∞_f Aᵀ, G = P*_f Aᵀ, and P̃ = Eᵀ P*_p E with blocks a, b, c::

        J = H V_r Λ⁻¹ V_rᵀ + (G V_n − H V_r Λ⁻¹ b) c⁻¹ V_nᵀ
        Σ = P*_f − G V_n c⁻¹ V_nᵀ Gᵀ − H V_r Λ⁻¹ Zᵀ − Z Λ⁻¹ V_rᵀ Hᵀ
            + H V_r Λ⁻¹ (a − b c⁻¹ bᵀ) Λ⁻¹ V_rᵀ Hᵀ,   Z = G V_r − G V_n c⁻¹ bᵀ

    (the κ terms cancel when A is injective on the range of P∞_f; the O(1/κ)
    terms of P_f and P_p do not enter). Pf = P*_f, Pp = P*_p, all (nc, n, n).
    """
    S = _sym(At @ Pf_inf @ At.transpose(-1, -2))
    lam, E = torch.linalg.eigh(S)  # (nc, n), (nc, n, n)
    cut = 1e-9 * lam.abs().amax(-1, keepdim=True).clamp_min(1.0)
    rmask = (lam > cut).to(Pf.dtype)
    nmask = 1.0 - rmask
    lam_inv = rmask / torch.where(lam > cut, lam, torch.ones((), dtype=Pf.dtype))
    Et = E.transpose(-1, -2)
    Pt = _sym(Et @ Pp @ E)
    H = Pf_inf @ At.transpose(-1, -2) @ E
    G = Pf @ At.transpose(-1, -2) @ E
    nn_ = nmask[..., :, None] * nmask[..., None, :]
    c_full = Pt * nn_ + torch.diag_embed(rmask)
    W0 = _psd_solve(c_full, torch.diag_embed(nmask)) * nmask[..., None, :]  # Π_n c⁻¹ Π_n
    HL = H * lam_inv[..., None, :]  # H V_r Λ⁻¹ (zero n columns)
    J_e = HL + (G - HL @ Pt) @ W0
    Z = (G - G @ W0 @ Pt) * rmask[..., None, :]
    a_prime = Pt - Pt @ W0 @ Pt
    Sigma = (
        Pf
        - G @ W0 @ G.transpose(-1, -2)
        - HL @ Z.transpose(-1, -2)
        - Z @ HL.transpose(-1, -2)
        + HL @ a_prime @ HL.transpose(-1, -2)
    )
    return J_e @ Et, _sym(Sigma)


def _unshare(x: Tensor) -> Tensor:
    """A covariance output expanded over B (stride 0) back to batch 1; else unchanged."""
    return x[:1] if x.shape[0] > 1 and x.stride(0) == 0 else x


def rts_smoother(
    model: LinearGaussian, filt: FilterResult, *, u: Tensor | None = None
) -> SmootherResult:
    """Rauch–Tung–Striebel smoother from a :func:`kalman_filter` result.

    Uses the filtered and predicted moments stored in ``filt`` (so missing
    values and inputs need no special treatment; ``u`` is accepted for
    symmetry with the filter and only shape-checked). Batched, time-varying,
    exact after an exact diffuse start. Returns means, covariances, lag-one
    covariances ``Cov(h_t, h_{t−1} | Y)`` and gains J_t (see the module
    docstring); covariances shared by the filter stay shared (expanded views).
    """
    n = int(filt.mean.shape[-1])
    with _one_thread(int(filt.mean.shape[0]) * n * n <= _SERIAL_SIZE):
        return _rts_smoother(model, filt, u=u)


def _rts_smoother(
    model: LinearGaussian, filt: FilterResult, *, u: Tensor | None = None
) -> SmootherResult:
    """:func:`rts_smoother` without the thread setting."""
    mean = filt.mean
    dtype = mean.dtype
    nb, nt, n = (int(s) for s in mean.shape)
    mats = _model_tensors(model, dtype)
    if int(mats["A"].shape[-1]) != n:
        raise ShapeError(
            f"model has {int(mats['A'].shape[-1])} states but filt has {n}; use the"
            " model the filter ran with"
        )
    if u is not None:
        if "B" not in mats and "D" not in mats:
            raise ShapeError("u was given but the model has neither B nor D; pass B and/or D")
        _inputs(u, dtype, nb, nt, int(mats["B" if "B" in mats else "D"].shape[-1]))
    cov, pred_cov = _unshare(filt.cov), _unshare(filt.pred_cov)
    A = _Seq(mats["A"], nb, nt, "A")
    if cov.shape[0] == 1 and A.full.shape[0] > 1:
        cov, pred_cov = cov.expand(nb, nt, n, n), pred_cov.expand(nb, nt, n, n)
    nc = cov.shape[0]
    d = filt.diffuse_steps
    dcov = None
    live: list[bool] = []
    if d and filt.diffuse_cov is not None:
        dcov = _unshare(filt.diffuse_cov).expand(nc, d, n, n)
        on = (dcov.detach() ** 2).sum((-2, -1)) > _TOL_DIFFUSE  # (nc, d)
        dcov = dcov * on.to(dtype)[..., None, None]  # a negligible P_∞ counts as 0
        live = [bool(x) for x in on.any(0)]
    ms = [mean[:, nt - 1]]
    Vs = [cov[:, nt - 1]]
    gains: list[Tensor] = []
    lags: list[Tensor] = []
    for t in range(nt - 2, -1, -1):
        At = A.at(t)
        Pf, Pp = cov[:, t], pred_cov[:, t + 1]
        m_next, V_next = ms[-1], Vs[-1]
        if dcov is not None and t < d and live[t]:
            J, Sigma = _diffuse_gain(Pf, dcov[:, t], Pp, At.expand(nc, n, n))
            V = Sigma + J @ V_next @ J.transpose(-1, -2)
        else:
            APf = (Pf @ A.at_t(t)).transpose(-1, -2)  # A P_f (P_f symmetric)
            J = _psd_solve(Pp, APf).transpose(-1, -2)  # P_f Aᵀ P_p⁻¹
            V = Pf + J @ (V_next - Pp) @ J.transpose(-1, -2)
        ms.append(mean[:, t] + _mv(J, m_next - filt.pred_mean[:, t + 1]))
        Vs.append(_sym(V))
        gains.append(J)
        lags.append(V_next @ J.transpose(-1, -2))

    lags.append(torch.zeros_like(Vs[0]))

    def cat(xs: list[Tensor]) -> Tensor:
        x = torch.stack(xs[::-1], 1)
        return x.expand((nb,) + tuple(x.shape[1:]))

    return SmootherResult(
        mean=cat(ms),
        cov=cat(Vs),
        lag1_cov=cat(lags),
        gain=cat(gains) if gains else mean.new_zeros(nb, 0, n, n),
    )
