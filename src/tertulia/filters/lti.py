"""Linear time-invariant state-space models: discretisation, modes, simulation, LQR.

Continuous time (``dt is None``) and discrete time (``dt`` the sampling step)::

    h'(t)   = A h(t) + B x(t) + w(t),      y(t) = C h(t) + D x(t) + v(t)
    h_{k+1} = A h_k  + B x_k  + w_k,       y_k  = C h_k  + D x_k  + v_k

with state h ∈ ℝⁿ, input x ∈ ℝᵐ, output y ∈ ℝᵖ. Noise: in discrete time
``w_k ~ N(0, Q)`` is the covariance added per step; in continuous time Q is the
spectral density of white noise (covariance per unit time), so ∫₀^τ w dt has
covariance ``Q τ``. Sensors sample at discrete times in both cases: ``v ~ N(0, R)``
is the covariance of each reading and discretisation leaves R unchanged.

Discretisation with step Δ (:meth:`LinearSSM.discretize`):

* ``zoh`` — exact for an input held constant over each step:
  ``expm([[A, B], [0, 0]] Δ) = [[A_d, B_d], [0, I]]``. Process noise by Van
  Loan's method: ``expm([[−A, Q], [0, Aᵀ]] Δ) = [[·, F₁₂], [0, F₂₂]]`` and
  ``Q_d = F₂₂ᵀ F₁₂ = ∫₀^Δ e^{As} Q e^{Aᵀs} ds``, the exact covariance of the
  state increment.
* ``bilinear`` (Tustin, s ≈ (2/Δ)(z−1)/(z+1)), with ``M = (I − AΔ/2)⁻¹``:
  ``A_d = M (I + AΔ/2)``, ``B_d = M B Δ``, ``C_d = C M``, ``D_d = D + C M B Δ/2``
  (the state is re-scaled so that the transfer function is exactly the Tustin
  one, the convention of scipy's ``cont2discrete``). ``Q_d = M Q Mᵀ Δ`` agrees
  with the exact covariance to O(Δ²).
* ``euler`` — forward Euler: ``A_d = I + AΔ``, ``B_d = BΔ``, ``Q_d = QΔ``.

Modes (:meth:`LinearSSM.modes`): each eigenvalue λ of A behaves like e^{λt}
(continuous) or λᵏ (discrete). Growth rate ``g = Re λ`` or ``log|λ| / Δ`` per unit
time, angular frequency ``ω = Im λ`` or ``arg λ / Δ``; period ``2π/|ω|``; doubling
time ``ln 2 / g`` (g > 0) or half-life ``ln 2 / (−g)`` (g < 0). A mode is stable
when g < 0, unstable when g > 0 and marginal when |g| is below a tolerance.

LQR (:func:`lqr`): the feedback ``u = −K h`` minimising ``∫ hᵀQh + uᵀRu dt`` (or
``Σ hₖᵀQhₖ + uₖᵀRuₖ``) from the stabilising solution P of the algebraic Riccati
equation, ``K = R⁻¹BᵀP`` (continuous) or ``K = (R + BᵀPB)⁻¹BᵀPA`` (discrete).

Legend: n states, m inputs, p outputs, T steps, ``…`` any leading batch axes.
All matrices are stored as float64 tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.linalg
import torch

from ..errors import CovarianceError, ShapeError, UserError
from ._checks import as_tensor, check_covariance, check_shape, check_square

__all__ = [
    "DISCRETIZATION_METHODS",
    "LQRResult",
    "LinearSSM",
    "Mode",
    "lqr",
    "psd_factor",
]

ArrayLike = Any  # tensors, numpy arrays, nested sequences, Python scalars
Stability = Literal["stable", "unstable", "marginal"]
DISCRETIZATION_METHODS = ("zoh", "bilinear", "euler")

# |growth| below which a mode is marginal (continuous: relative to max(1, |λ|))
_MARGINAL_TOL = 1e-9


def _matrix(name: str, value: ArrayLike) -> torch.Tensor:
    t = as_tensor(name, value)
    if t.dim() != 2:
        raise ShapeError(f"{name} must be a 2-D matrix; got shape {tuple(t.shape)}")
    return t.clone()


def _covariance(name: str, value: ArrayLike, size: int) -> torch.Tensor:
    # A scalar q means q·I; a matrix must be (size, size) and symmetric PSD.
    t = as_tensor(name, value)
    if t.dim() == 0:
        t = t * torch.eye(size, dtype=torch.float64)
    if t.dim() != 2:
        raise ShapeError(
            f"{name} must be a scalar or a ({size}, {size}) matrix; got {tuple(t.shape)}"
        )
    check_shape(name, t, size, size)
    check_covariance(name, t)
    return 0.5 * (t + t.T)


def _check_dt(dt: object) -> float:
    try:
        value = float(dt)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(dt, bool) or not math.isfinite(value) or value <= 0:
        raise UserError(f"dt must be a positive finite number (the sampling step); got {dt!r}")
    return value


def psd_factor(cov: torch.Tensor) -> torch.Tensor:
    """A matrix L with ``L Lᵀ = cov`` for a symmetric PSD ``cov`` (n, n).

    Cholesky when ``cov`` is positive definite; otherwise the symmetric square
    root ``V diag(√max(λ, 0))`` from ``cov = V diag(λ) Vᵀ``, which also covers
    singular covariances (noise confined to a subspace).
    """
    L, info = torch.linalg.cholesky_ex(cov)
    if int(info) == 0:
        return L
    lam, V = torch.linalg.eigh(0.5 * (cov + cov.T))
    return V * lam.clamp_min(0.0).sqrt()


@dataclass(frozen=True)
class Mode:
    """One eigenvalue λ of A read as a growth rate and a frequency.

    ``growth_rate`` is per unit time (``Re λ``, or ``log|λ|/dt`` in discrete
    time; −inf for λ = 0); ``angular_frequency`` is ``Im λ`` or ``arg λ/dt``.
    ``period`` is ``2π/|angular_frequency|`` and None for a non-oscillating mode
    (a discrete λ < 0 flips sign every step: period 2·dt). ``doubling_time`` is
    ``ln 2 / g`` for g > 0 and ``half_life`` is ``ln 2 / (−g)`` for g < 0.
    """

    eigenvalue: complex
    growth_rate: float
    angular_frequency: float
    stability: Stability
    oscillating: bool
    period: float | None
    doubling_time: float | None
    half_life: float | None

    @property
    def kind(self) -> str:
        """Plain words, e.g. ``"growing oscillation"`` or ``"decaying"``."""
        trend = {"stable": "decaying", "unstable": "growing", "marginal": "sustained"}[
            self.stability
        ]
        if self.oscillating:
            return f"{trend} oscillation"
        return "constant" if self.stability == "marginal" else trend


@dataclass(frozen=True)
class LQRResult:
    """Optimal state feedback ``u = −K h``.

    ``K`` (m, n) gain, ``P`` (n, n) solution of the Riccati equation (the optimal
    cost from h is ``hᵀ P h``), ``closed_loop_eigenvalues`` (n,) complex: the
    eigenvalues of ``A − B K``.
    """

    K: torch.Tensor
    P: torch.Tensor
    closed_loop_eigenvalues: torch.Tensor


class LinearSSM:
    """An immutable linear state-space model ``(A, B, C, D)`` with optional noise ``(Q, R)``.

    Parameters
    ----------
    A : (n, n) state matrix.
    B : (n, m) input matrix; a 1-D (n,) array means one input; None means no input (m = 0).
    C : (p, n) output matrix; None means C = I (the whole state is observed).
    D : (p, m) feed-through; None means zeros.
    dt : sampling step of a discrete-time model; None for continuous time.
    Q : (n, n) process-noise covariance per step (discrete) or spectral density
        (continuous); a scalar q means q·I; None means no process noise.
    R : (p, p) covariance of each output's noise; scalar or None as for Q.

    Raises :class:`ShapeError` for matrices that do not fit together and
    :class:`CovarianceError` for a Q or R that is not symmetric PSD.
    """

    __slots__ = ("A", "B", "C", "D", "dt", "Q", "R")

    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor
    dt: float | None
    Q: torch.Tensor | None
    R: torch.Tensor | None

    def __init__(
        self,
        A: ArrayLike,
        B: ArrayLike | None = None,
        C: ArrayLike | None = None,
        D: ArrayLike | None = None,
        *,
        dt: float | None = None,
        Q: ArrayLike | None = None,
        R: ArrayLike | None = None,
    ) -> None:
        a = _matrix("A", A)
        n = check_square("A", a)
        if B is None:
            b = torch.zeros(n, 0, dtype=torch.float64)
        else:
            b = as_tensor("B", B).clone()
            if b.dim() == 1:
                if b.shape[0] != n:
                    raise ShapeError(f"B must have shape ({n}, m) or ({n},); got {tuple(b.shape)}")
                b = b[:, None]
            if b.dim() != 2 or b.shape[0] != n:
                raise ShapeError(
                    f"B must have shape ({n}, m) to match A ({n}, {n}); got {tuple(b.shape)}"
                )
        m = b.shape[1]
        if C is None:
            c = torch.eye(n, dtype=torch.float64)
        else:
            c = _matrix("C", C)
            if c.shape[1] != n:
                raise ShapeError(
                    f"C must have shape (p, {n}) to match A ({n}, {n}); got {tuple(c.shape)}"
                )
        p = c.shape[0]
        if D is None:
            d = torch.zeros(p, m, dtype=torch.float64)
        else:
            d = as_tensor("D", D).clone()
            if tuple(d.shape) != (p, m):
                raise ShapeError(
                    f"D must have shape ({p}, {m}) (outputs, inputs); got {tuple(d.shape)}"
                )
        set_ = object.__setattr__
        set_(self, "A", a)
        set_(self, "B", b)
        set_(self, "C", c)
        set_(self, "D", d)
        set_(self, "dt", None if dt is None else _check_dt(dt))
        set_(self, "Q", None if Q is None else _covariance("Q", Q, n))
        set_(self, "R", None if R is None else _covariance("R", R, p))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"LinearSSM is immutable; use .replace({name}=...) for a new model")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("LinearSSM is immutable")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # copies rebuild through the constructor (attribute assignment is blocked)
        return _rebuild, tuple(getattr(self, k) for k in self.__slots__)

    def __repr__(self) -> str:
        time = "continuous" if self.dt is None else f"dt={self.dt:g}"
        noise = ", ".join(k for k in ("Q", "R") if getattr(self, k) is not None) or "no noise"
        return f"LinearSSM(n={self.n}, m={self.m}, p={self.p}, {time}, {noise})"

    # ----------------------------------------------------------------- basics

    @property
    def n(self) -> int:
        """Number of states."""
        return int(self.A.shape[0])

    @property
    def m(self) -> int:
        """Number of inputs."""
        return int(self.B.shape[1])

    @property
    def p(self) -> int:
        """Number of outputs."""
        return int(self.C.shape[0])

    @property
    def is_discrete(self) -> bool:
        """True for a discrete-time model (``dt`` set)."""
        return self.dt is not None

    def replace(self, **changes: Any) -> LinearSSM:
        """A new model with some of ``A, B, C, D, dt, Q, R`` replaced (validated again)."""
        unknown = set(changes) - set(self.__slots__)
        if unknown:
            raise UserError(
                f"unknown LinearSSM field(s) {sorted(unknown)}; fields are {list(self.__slots__)}"
            )
        fields = {k: getattr(self, k) for k in self.__slots__} | changes
        return LinearSSM(
            fields["A"], fields["B"], fields["C"], fields["D"],
            dt=fields["dt"], Q=fields["Q"], R=fields["R"],
        )  # fmt: skip

    def with_feedback(self, K: ArrayLike) -> LinearSSM:
        """The closed loop under ``u = −K h + x`` (x the new exogenous input).

        ``A ← A − B K`` and ``C ← C − D K``; B, D, noise and dt are unchanged.
        K is (m, n), or (n,) when m = 1.
        """
        k = as_tensor("K", K)
        if k.dim() == 1 and self.m == 1:
            k = k[None, :]
        if k.dim() != 2:
            raise ShapeError(f"K must have shape ({self.m}, {self.n}); got {tuple(k.shape)}")
        check_shape("K", k, self.m, self.n)
        return self.replace(A=self.A - self.B @ k, C=self.C - self.D @ k)

    def lqr(self, Q: ArrayLike, R: ArrayLike) -> LQRResult:
        """:func:`lqr` on (A, B) in this model's time domain (state cost Q, input cost R)."""
        return lqr(self.A, self.B, Q, R, discrete=self.is_discrete)

    # --------------------------------------------------------- discretisation

    def discretize(self, dt: float, method: str = "zoh") -> LinearSSM:
        """The discrete-time model sampled every ``dt`` (see the module docstring).

        ``method`` is ``"zoh"`` (exact for piecewise-constant inputs, Van Loan
        for Q), ``"bilinear"`` (Tustin) or ``"euler"``. R is carried over.
        """
        if self.is_discrete:
            raise UserError(
                f"this model is already discrete (dt={self.dt:g});"
                " discretize needs a continuous one"
            )
        dt = _check_dt(dt)
        if method not in DISCRETIZATION_METHODS:
            raise UserError(
                f"unknown discretisation method {method!r};"
                f" allowed: {', '.join(DISCRETIZATION_METHODS)}"
            )
        n, m = self.n, self.m
        A, B, C, D, Q = self.A, self.B, self.C, self.D, self.Q
        eye = torch.eye(n, dtype=torch.float64)
        Qd: torch.Tensor | None = None
        if method == "zoh":
            blk = torch.zeros(n + m, n + m, dtype=torch.float64)
            blk[:n, :n], blk[:n, n:] = A, B
            E = torch.linalg.matrix_exp(blk * dt)
            Ad, Bd, Cd, Dd = E[:n, :n], E[:n, n:], C, D
            if Q is not None:
                van = torch.zeros(2 * n, 2 * n, dtype=torch.float64)
                van[:n, :n], van[:n, n:], van[n:, n:] = -A, Q, A.T
                F = torch.linalg.matrix_exp(van * dt)
                Qd = F[n:, n:].T @ F[:n, n:]
        elif method == "bilinear":
            lhs = eye - A * (dt / 2)
            Ad = torch.linalg.solve(lhs, eye + A * (dt / 2))
            Bd = torch.linalg.solve(lhs, B * dt)
            Cd = torch.linalg.solve(lhs.T, C.T).T  # C M
            Dd = D + C @ Bd / 2
            if Q is not None:
                M = torch.linalg.inv(lhs)
                Qd = M @ Q @ M.T * dt
        else:  # euler
            Ad, Bd, Cd, Dd = eye + A * dt, B * dt, C, D
            if Q is not None:
                Qd = Q * dt
        if Qd is not None:
            Qd = 0.5 * (Qd + Qd.T)
        return LinearSSM(Ad, Bd, Cd, Dd, dt=dt, Q=Qd, R=self.R)

    # ------------------------------------------------------------------ modes

    def modes(self) -> list[Mode]:
        """Every eigenvalue of A as a :class:`Mode`, fastest-growing first.

        Conjugate pairs appear as two modes (positive imaginary part first).
        """
        lam = torch.linalg.eigvals(self.A).numpy()
        out = []
        for z in lam:
            z = complex(z)
            if self.dt is None:
                g, w = z.real, z.imag
                marginal = abs(g) <= _MARGINAL_TOL * max(1.0, abs(z))
                osc = abs(w) > _MARGINAL_TOL * max(1.0, abs(z))
            else:
                r = abs(z)
                g = math.log(r) / self.dt if r > 0 else -math.inf
                w = math.atan2(z.imag, z.real) / self.dt if r > 0 else 0.0
                marginal = abs(r - 1.0) <= _MARGINAL_TOL
                osc = abs(w * self.dt) > _MARGINAL_TOL
            stab: Stability = "marginal" if marginal else ("unstable" if g > 0 else "stable")
            out.append(
                Mode(
                    eigenvalue=z,
                    growth_rate=g,
                    angular_frequency=w,
                    stability=stab,
                    oscillating=osc,
                    period=2 * math.pi / abs(w) if osc else None,
                    doubling_time=math.log(2) / g if stab == "unstable" else None,
                    half_life=(math.log(2) / -g if math.isfinite(g) else 0.0)
                    if stab == "stable"
                    else None,
                )
            )
        out.sort(key=lambda md: (-md.growth_rate, -md.eigenvalue.imag))
        return out

    def stability(self) -> Stability:
        """``"unstable"`` if any mode grows, else ``"marginal"`` if any mode neither grows
        nor decays, else ``"stable"``.

        Marginal is judged from the eigenvalues alone: a repeated marginal
        eigenvalue with a Jordan block still grows polynomially.
        """
        kinds = {md.stability for md in self.modes()}
        if "unstable" in kinds:
            return "unstable"
        return "marginal" if "marginal" in kinds else "stable"

    def describe(self) -> str:
        """A short text: the model's size, its stability, and one line per mode (pairs merged)."""
        time = "continuous-time" if self.dt is None else f"discrete-time (dt={self.dt:g})"
        lines = [
            f"{time} system with {self.n} state(s), {self.m} input(s), {self.p} output(s):"
            f" {self.stability()}"
        ]
        for md in self.modes():
            z = md.eigenvalue
            if md.oscillating and z.imag < 0:
                continue  # the conjugate of a mode already listed
            lam = f"{z.real:.4g}"
            if md.oscillating and z.imag:
                lam += f" ± {abs(z.imag):.4g}i"
            text = f"  λ = {lam}: {md.kind}, growth rate {md.growth_rate:.4g} per unit time"
            if md.doubling_time is not None:
                text += f" (doubles every {md.doubling_time:.4g})"
            elif md.half_life is not None:
                text += f" (half-life {md.half_life:.4g})"
            if md.period is not None:
                text += f", period {md.period:.4g}"
            lines.append(text)
        return "\n".join(lines)

    # ------------------------------------------------------------- simulation

    def sample_noise(
        self,
        steps: int,
        batch_shape: Sequence[int] = (),
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise ``w: (…, T, n) ~ N(0, Q)``, ``v: (…, T, p) ~ N(0, R)``; zeros for a missing Q, R.

        For a continuous model Q is a spectral density: discretise first to get
        the per-step covariance.
        """
        shape = tuple(batch_shape) + (int(steps),)
        out = []
        for cov, size in ((self.Q, self.n), (self.R, self.p)):
            if cov is None:
                out.append(torch.zeros(*shape, size, dtype=torch.float64))
            else:
                z = torch.randn(*shape, size, generator=generator, dtype=torch.float64)
                out.append(z @ psd_factor(cov).T)
        return out[0], out[1]

    def simulate(
        self,
        x: ArrayLike | None = None,
        h0: ArrayLike | None = None,
        *,
        steps: int | None = None,
        noise: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs the discrete recursion; returns ``(states (…, T, n), outputs (…, T, p))``.

        ``states[k] = h_k`` with ``h_0 = h0`` (zeros if None) and
        ``outputs[k] = C h_k + D x_k (+ v_k)``; the state after the last input,
        h_T, is not returned. ``x`` is (…, T, m) ((T,) when m = 1), or None
        with ``steps=T`` for zero input. ``h0`` is (n,) or (…, n); batch axes of
        x and h0 broadcast. ``noise=True`` adds ``w_k ~ N(0, Q)`` and
        ``v_k ~ N(0, R)`` drawn from ``generator`` (a missing Q or R adds none).

        Continuous models are not simulated here: call ``.discretize(dt)`` first
        (ZOH is exact for inputs held over each step), so that the step is explicit.
        """
        if self.dt is None:
            raise UserError(
                "simulate needs a discrete-time model; call .discretize(dt) on this continuous one"
            )
        n, m = self.n, self.m
        if x is None:
            if steps is None:
                raise ShapeError("simulate needs inputs x (T, m) or steps=T; got neither")
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
                raise UserError(f"steps must be a non-negative integer; got {steps!r}")
            xt = torch.zeros(steps, m, dtype=torch.float64)
        else:
            xt = as_tensor("x", x)
            if xt.dim() == 1 and m == 1:
                xt = xt[:, None]
            if xt.dim() < 2 or xt.shape[-1] != m:
                raise ShapeError(f"x must have shape (…, T, {m}); got {tuple(xt.shape)}")
            if steps is not None and steps != xt.shape[-2]:
                raise ShapeError(f"steps={steps} but x has {xt.shape[-2]} steps; give one or match")
        T = xt.shape[-2]
        if h0 is None:
            h = torch.zeros(n, dtype=torch.float64)
        else:
            h = as_tensor("h0", h0)
            if h.dim() < 1 or h.shape[-1] != n:
                raise ShapeError(f"h0 must have shape ({n},) or (…, {n}); got {tuple(h.shape)}")
        batch = torch.broadcast_shapes(xt.shape[:-2], h.shape[:-1])
        xt = xt.expand(*batch, T, m)
        h = h.expand(*batch, n)
        if noise:
            w, v = self.sample_noise(T, batch, generator=generator)
        states = torch.empty(*batch, T, n, dtype=torch.float64)
        At, Bt = self.A.T, self.B.T
        for k in range(T):
            states[..., k, :] = h
            h = h @ At + xt[..., k, :] @ Bt
            if noise:
                h = h + w[..., k, :]
        outputs = states @ self.C.T + xt @ self.D.T
        if noise:
            outputs = outputs + v
        return states, outputs


def _rebuild(A: Any, B: Any, C: Any, D: Any, dt: Any, Q: Any, R: Any) -> LinearSSM:
    return LinearSSM(A, B, C, D, dt=dt, Q=Q, R=R)


# -------------------------------------------------------------------------- LQR


def lqr(
    A: ArrayLike, B: ArrayLike, Q: ArrayLike, R: ArrayLike, *, discrete: bool = False
) -> LQRResult:
    """Linear-quadratic regulator: the gain K of ``u = −K h`` and the Riccati solution P.

    Continuous: ``AᵀP + PA − PBR⁻¹BᵀP + Q = 0``, ``K = R⁻¹BᵀP``, minimising
    ``∫ hᵀQh + uᵀRu dt``. Discrete: ``P = AᵀPA − AᵀPB(R + BᵀPB)⁻¹BᵀPA + Q``,
    ``K = (R + BᵀPB)⁻¹BᵀPA``. Q (n, n) must be symmetric PSD and R (m, m)
    symmetric positive definite (scalars mean multiples of I; B may be (n,)).
    (A, B) must be stabilisable and (A, Q) detectable, else :class:`UserError`.
    """
    sys = LinearSSM(A, B)
    n, m = sys.n, sys.m
    if m == 0:
        raise ShapeError("B must have at least one column (input) for LQR; got shape (n, 0)")
    q = _covariance("Q", Q, n)
    r = _covariance("R", R, m)
    low = float(torch.linalg.eigvalsh(r).min())
    if low <= 1e-12 * float(r.abs().max()):
        raise CovarianceError(
            f"R is not positive definite (smallest eigenvalue {low:.3g}); LQR needs R ≻ 0"
        )
    a, b, qn, rn = (t.numpy() for t in (sys.A, sys.B, q, r))
    try:
        if discrete:
            P = scipy.linalg.solve_discrete_are(a, b, qn, rn)
            K = np.linalg.solve(rn + b.T @ P @ b, b.T @ P @ a)
        else:
            P = scipy.linalg.solve_continuous_are(a, b, qn, rn)
            K = np.linalg.solve(rn, b.T @ P)
    except (np.linalg.LinAlgError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise UserError(
            f"no stabilising LQR solution ({reason}); (A, B) must be stabilisable and"
            " (A, Q) detectable"
        ) from None
    P = 0.5 * (P + P.T)
    eig = np.linalg.eigvals(a - b @ K)
    return LQRResult(
        K=torch.from_numpy(np.ascontiguousarray(K)),
        P=torch.from_numpy(np.ascontiguousarray(P)),
        closed_loop_eigenvalues=torch.from_numpy(eig.astype(np.complex128)),
    )
