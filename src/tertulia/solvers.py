"""Fixed-point solvers, and how the rounds of an orchestra are run and differentiated.

An orchestra defines one round ``S ↦ F(S)``; a *solver* decides how many
rounds to run, when to stop and where gradients flow. The orchestra never
branches on the training mode: it is handed a solver object.

Residual and stopping rule (per sample b, over all nodes and features):

    r_b = ‖F(S_b) − S_b‖₂ / ‖F(S_b)‖₂ ;   sample b has converged when r_b < tol

Fixed-point solvers of ``S* = F(S*)`` (functions returning a
:class:`FixedPointResult`; batched, every sample stops on its own):

* :func:`picard` — damped iteration ``S ← (1−λ) S + λ F(S)``.
* :func:`anderson` — Anderson acceleration (type II): the next iterate mixes
  the last m images with weights α minimising ‖Σ α_i G_i‖² + λ‖α‖² subject
  to Σ α_i = 1, where G_i = F(S_i) − S_i; ``S ← β Σ α F_i + (1−β) Σ α S_i``.
* :func:`broyden` — limited-memory ("good") Broyden on g(S) = F(S) − S: the
  inverse Jacobian of g is kept as ``−I + Σ u_k v_kᵀ`` (at most m terms).

Backward modes (objects with ``solve(f, s0) -> (S, SolverTrace)``):

* :class:`Unrolled` — plain unrolling with backpropagation through every round
  (BPTT, seed §4.1). Memory grows with the rounds.
* :class:`Truncated` — the TRM regime: the first ``R − k`` rounds run without
  gradient, the last ``k`` with it. Memory is O(k).
* :class:`Equilibrium` — the DEQ regime (seed §4.2): solve to the fixed point
  without gradient, then either *implicit* differentiation, solving the
  adjoint fixed point ``g = Jᵀ g + ∂L/∂S*`` (J = ∂F/∂S at S*) with the same
  solvers through vector–Jacobian products (memory of one round, whatever the
  number of iterations), or the *phantom* gradient: k damped rounds
  ``S ← (1−λ) S + λ F(S)`` from S* with gradient.

A sample whose forward (or adjoint) solve did not reach ``tol`` is flagged in
the trace (``sample_converged``), counted by the trainer and reported; it is
never silently treated as converged.

Legend: B batch, N nodes, d state, D = N·d flattened state, m history.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

RoundFn = Callable[[torch.Tensor], torch.Tensor]


def relative_residual(new: torch.Tensor, old: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample ``‖new − old‖ / ‖new‖`` over every non-batch axis: shape (B,).

    ``new`` is the image F(old). Dividing by the image (not the argument) keeps
    the residual finite when iterating from zero, e.g. in the adjoint solve.
    """
    diff = (new - old).flatten(1).norm(dim=1)
    return diff / new.flatten(1).norm(dim=1).clamp_min(eps)


# --------------------------------------------------------------------- fixed points


@dataclass
class FixedPointResult:
    """What a fixed-point solver returns.

    ``x`` holds, per sample, the first iterate that met the tolerance, or the
    lowest-residual iterate if none did. ``residuals[k, b]`` is sample b's
    residual at evaluation k+1 of F; ``iterations[b]`` counts the evaluations
    of F that sample b needed (``max_iter`` if it never converged).
    """

    x: torch.Tensor  # (B, ...)
    residuals: torch.Tensor  # (K, B)
    iterations: torch.Tensor  # (B,) long
    converged: torch.Tensor  # (B,) bool

    @property
    def evaluations(self) -> int:
        """Evaluations of F made for the whole batch."""
        return int(self.residuals.shape[0])

    @property
    def final_residual(self) -> torch.Tensor:
        """Per-sample residual of the returned iterate: (B,)."""
        k = (self.iterations - 1).clamp_min(0)
        best = self.residuals.min(dim=0).values
        at_stop = self.residuals.gather(0, k[None]).squeeze(0)
        return torch.where(self.converged, at_stop, best)


class _Tracker:
    """Per-sample bookkeeping shared by the solvers: best iterate, stop step, history."""

    def __init__(self, x0: torch.Tensor, tol: float):
        b = x0.shape[0]
        self.tol = tol
        self.best = x0.clone()
        self.best_r = torch.full((b,), float("inf"), device=x0.device, dtype=torch.float64)
        self.done = torch.zeros(b, dtype=torch.bool, device=x0.device)
        self.iterations = torch.zeros(b, dtype=torch.long, device=x0.device)
        self.history: list[torch.Tensor] = []

    def record(self, fx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # fx, x: (B, ...) -> residual (B,); keeps fx where it improves on a live sample
        r = relative_residual(fx, x).double()
        self.history.append(r)
        live = ~self.done
        better = live & (r < self.best_r)
        shape = (-1,) + (1,) * (fx.ndim - 1)
        self.best = torch.where(better.view(shape), fx, self.best)
        self.best_r = torch.where(better, r, self.best_r)
        self.iterations = torch.where(live, len(self.history), self.iterations)
        self.done = self.done | (live & (r < self.tol))
        return r

    @property
    def all_done(self) -> bool:
        return bool(self.done.all())

    def result(self) -> FixedPointResult:
        return FixedPointResult(
            x=self.best,
            residuals=torch.stack(self.history),
            iterations=self.iterations,
            converged=self.done.clone(),
        )


def _check(tol: float, max_iter: int) -> None:
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")


def picard(
    f: RoundFn, x0: torch.Tensor, *, tol: float = 1e-4, max_iter: int = 50, damping: float = 1.0
) -> FixedPointResult:
    """Damped Picard iteration ``x ← (1−λ)x + λ f(x)`` until every sample's residual < tol."""
    _check(tol, max_iter)
    if not 0 < damping <= 1:
        raise ValueError(f"damping must be in (0, 1], got {damping}")
    track = _Tracker(x0, tol)
    x = x0
    for _ in range(max_iter):
        fx = f(x)
        track.record(fx, x)
        if track.all_done:
            break
        x = fx if damping == 1.0 else torch.lerp(x, fx, damping)
    return track.result()


def anderson(
    f: RoundFn,
    x0: torch.Tensor,
    *,
    tol: float = 1e-4,
    max_iter: int = 50,
    memory: int = 5,
    mixing: float = 1.0,
    lam: float = 1e-4,
) -> FixedPointResult:
    """Anderson acceleration with history ``memory``, mixing β and ridge ``lam``.

    The constrained least squares ``min ‖Σ α_i G_i‖² + λ‖α‖², Σα = 1`` has the
    closed form ``α = w / Σw`` with ``(GGᵀ + λI) w = 1``. The Gram matrix is
    updated one row per iteration (only the newest residual is new) and the
    small m×m systems are solved in float64, scaled by their diagonal.
    """
    _check(tol, max_iter)
    if memory < 1:
        raise ValueError(f"memory must be >= 1, got {memory}")
    b = x0.shape[0]
    shape = x0.shape
    m = memory
    track = _Tracker(x0, tol)
    xs = x0.new_zeros(b, m, x0[0].numel())  # (B, m, D) past arguments
    fs = torch.zeros_like(xs)  # (B, m, D) their images
    gram = torch.zeros(b, m, m, dtype=torch.float64, device=x0.device)  # G Gᵀ
    x = x0.reshape(b, -1)
    for k in range(max_iter):
        fx = f(x.view(shape)).reshape(b, -1)
        track.record(fx.view(shape), x.view(shape))
        if track.all_done or k == max_iter - 1:
            break
        slot = k % m
        xs[:, slot], fs[:, slot] = x, fx
        g = fs - xs  # (B, m, D); only `slot` changed
        row = torch.einsum("bmd,bd->bm", g, g[:, slot]).double()
        gram[:, slot, :] = row
        gram[:, :, slot] = row
        n = min(k + 1, m)
        h = gram[:, :n, :n]
        scale = h.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-30)[:, None, None]
        eye = torch.eye(n, dtype=torch.float64, device=x0.device)
        ones = torch.ones(b, n, 1, dtype=torch.float64, device=x0.device)
        w = torch.linalg.solve(h / scale + lam * eye, ones)
        alpha = (w / w.sum(dim=1, keepdim=True)).to(x.dtype)  # (B, n, 1)
        mixed_f = (alpha * fs[:, :n]).sum(dim=1)
        if mixing == 1.0:
            x = mixed_f
        else:
            x = mixing * mixed_f + (1 - mixing) * (alpha * xs[:, :n]).sum(dim=1)
    return track.result()


def broyden(
    f: RoundFn, x0: torch.Tensor, *, tol: float = 1e-4, max_iter: int = 50, memory: int = 8
) -> FixedPointResult:
    """Limited-memory good Broyden on ``g(x) = f(x) − x``.

    The inverse Jacobian estimate is ``H = −I + Σ_k u_k v_kᵀ`` and the step is
    ``x ← x − H g(x)`` (the first step is a Picard step). After each step,
    with Δx and Δg the changes, the rank-one update making ``H Δg = Δx`` is
    ``u = (Δx − H Δg) / (vᵀ Δg)``, ``v = Hᵀ Δx``. When the memory is full the
    oldest term is dropped.
    """
    _check(tol, max_iter)
    if memory < 1:
        raise ValueError(f"memory must be >= 1, got {memory}")
    b, shape = x0.shape[0], x0.shape
    track = _Tracker(x0, tol)
    us: list[torch.Tensor] = []  # each (B, D)
    vs: list[torch.Tensor] = []

    def h_mul(z: torch.Tensor) -> torch.Tensor:  # H z
        out = -z
        for u, v in zip(us, vs, strict=True):
            out = out + u * (v * z).sum(dim=1, keepdim=True)
        return out

    def ht_mul(z: torch.Tensor) -> torch.Tensor:  # Hᵀ z
        out = -z
        for u, v in zip(us, vs, strict=True):
            out = out + v * (u * z).sum(dim=1, keepdim=True)
        return out

    x = x0.reshape(b, -1)
    fx = f(x.view(shape)).reshape(b, -1)
    track.record(fx.view(shape), x.view(shape))
    gx = fx - x
    for _ in range(max_iter - 1):
        if track.all_done:
            break
        dx = -h_mul(gx)
        x_new = x + dx
        fx_new = f(x_new.view(shape)).reshape(b, -1)
        track.record(fx_new.view(shape), x_new.view(shape))
        g_new = fx_new - x_new
        dg = g_new - gx
        v = ht_mul(dx)
        denom = (v * dg).sum(dim=1, keepdim=True)
        ok = denom.abs() > 1e-30
        u = torch.where(ok, (dx - h_mul(dg)) / torch.where(ok, denom, 1.0), 0.0)
        if len(us) == memory:
            us.pop(0)
            vs.pop(0)
        us.append(u)
        vs.append(torch.where(ok, v, 0.0))
        x, gx = x_new, g_new
    return track.result()


FIXED_POINT_SOLVERS: dict[str, Callable[..., FixedPointResult]] = {
    "picard": picard,
    "anderson": anderson,
    "broyden": broyden,
}


@dataclass(frozen=True)
class SolverSpec:
    """A fixed-point solver with its settings: ``spec(f, x0) -> FixedPointResult``."""

    kind: str = "anderson"
    tol: float = 1e-4
    max_iter: int = 50
    damping: float = 1.0  # picard
    memory: int = 5  # anderson / broyden
    mixing: float = 1.0  # anderson β
    lam: float = 1e-4  # anderson ridge

    def __post_init__(self) -> None:
        if self.kind not in FIXED_POINT_SOLVERS:
            raise ValueError(
                f"solver {self.kind!r} is not one of: {', '.join(FIXED_POINT_SOLVERS)}"
            )
        _check(self.tol, self.max_iter)

    def __call__(self, f: RoundFn, x0: torch.Tensor) -> FixedPointResult:
        kw: dict[str, Any] = {"tol": self.tol, "max_iter": self.max_iter}
        if self.kind == "picard":
            kw["damping"] = self.damping
        elif self.kind == "anderson":
            kw.update(memory=self.memory, mixing=self.mixing, lam=self.lam)
        else:
            kw["memory"] = self.memory
        return FIXED_POINT_SOLVERS[self.kind](f, x0, **kw)


# ------------------------------------------------------------------------- traces


@dataclass
class SolverTrace:
    """What happened while iterating.

    ``residuals``/``max_residuals``: batch mean and max residual per round;
    ``rounds``: evaluations of F for the batch; ``iterations``: per sample, the
    evaluations it needed; ``sample_converged``: per sample, whether it reached
    the tolerance; ``backward``: filled during ``backward()`` by implicit
    differentiation (adjoint iterations, residual, converged fraction).
    """

    residuals: list[float] = field(default_factory=list)
    max_residuals: list[float] = field(default_factory=list)
    rounds: int = 0
    converged: bool = False
    iterations: torch.Tensor | None = None  # (B,)
    sample_converged: torch.Tensor | None = None  # (B,) bool
    state: torch.Tensor | None = None  # (B, N, d) detached final state
    backward: dict[str, float] = field(default_factory=dict)

    @property
    def iterations_mean(self) -> float:
        if self.iterations is None:
            return float(self.rounds)
        return float(self.iterations.double().mean())

    @property
    def unconverged(self) -> int:
        """Samples that did not reach the tolerance (0 when no tolerance was asked)."""
        if self.sample_converged is None:
            return 0
        return int((~self.sample_converged).sum())

    @classmethod
    def from_result(cls, res: FixedPointResult) -> SolverTrace:
        return cls(
            residuals=res.residuals.mean(dim=1).tolist(),
            max_residuals=res.residuals.max(dim=1).values.tolist(),
            rounds=res.evaluations,
            converged=bool(res.converged.all()),
            iterations=res.iterations,
            sample_converged=res.converged,
        )


# ---------------------------------------------------------------- backward modes


class Unrolled:
    """Run up to ``max_rounds`` damped Picard rounds with gradient through all of them (BPTT).

    With ``tol > 0`` the rounds stop once every sample's residual is below it.
    """

    def __init__(self, max_rounds: int, *, tol: float = 0.0, damping: float = 1.0):
        if max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
        if not 0 < damping <= 1:
            raise ValueError(f"damping must be in (0, 1], got {damping}")
        self.max_rounds, self.tol, self.damping = max_rounds, tol, damping

    def _iterate(
        self, f: RoundFn, s: torch.Tensor, rounds: int, trace: SolverTrace, *, tol: float
    ) -> torch.Tensor:
        b = s.shape[0]
        if trace.iterations is None:
            trace.iterations = torch.zeros(b, dtype=torch.long, device=s.device)
            trace.sample_converged = torch.zeros(b, dtype=torch.bool, device=s.device)
        for _ in range(rounds):
            new = f(s)
            r = relative_residual(new.detach(), s.detach())
            trace.residuals.append(float(r.mean()))
            trace.max_residuals.append(float(r.max()))
            trace.rounds += 1
            live = ~trace.sample_converged
            trace.iterations = torch.where(live, trace.rounds, trace.iterations)
            if tol > 0:
                trace.sample_converged = trace.sample_converged | (r < tol)
            s = new if self.damping == 1.0 else torch.lerp(s, new, self.damping)
            if tol > 0 and trace.max_residuals[-1] < tol:
                trace.converged = True
                break
        return s

    def solve(self, f: RoundFn, s0: torch.Tensor) -> tuple[torch.Tensor, SolverTrace]:
        # s0: (B, N, d) -> (B, N, d)
        trace = SolverTrace()
        s = self._iterate(f, s0, self.max_rounds, trace, tol=self.tol)
        trace.state = s.detach()
        return s, trace

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_rounds={self.max_rounds}, tol={self.tol})"


class Truncated(Unrolled):
    """Rounds ``1..R−k`` without gradient, then ``k`` rounds with gradient (TRM regime).

    If the gradient-free phase converges early it stops, but the ``k``
    differentiable rounds always run, so every step receives a gradient.
    In evaluation (no grad anywhere) it behaves like :class:`Unrolled`.
    """

    def __init__(
        self, max_rounds: int, *, grad_rounds: int, tol: float = 0.0, damping: float = 1.0
    ):
        super().__init__(max_rounds, tol=tol, damping=damping)
        if not 1 <= grad_rounds <= max_rounds:
            raise ValueError(f"grad_rounds must be in 1..{max_rounds}, got {grad_rounds}")
        self.grad_rounds = grad_rounds

    def solve(self, f: RoundFn, s0: torch.Tensor) -> tuple[torch.Tensor, SolverTrace]:
        if not torch.is_grad_enabled():
            return super().solve(f, s0)
        trace = SolverTrace()
        with torch.no_grad():
            s = self._iterate(f, s0, self.max_rounds - self.grad_rounds, trace, tol=self.tol)
        # The last k rounds always run with gradient, even after convergence.
        s = self._iterate(f, s, self.grad_rounds, trace, tol=0.0)
        if self.tol > 0:
            trace.converged = trace.max_residuals[-1] < self.tol
        trace.state = s.detach()
        return s, trace

    def __repr__(self) -> str:
        return (
            f"Truncated(max_rounds={self.max_rounds}, grad_rounds={self.grad_rounds}, "
            f"tol={self.tol})"
        )


class Equilibrium:
    """DEQ: find S* = F(S*) without gradient, then differentiate implicitly or by phantom rounds.

    Args:
        forward: the forward solver (its ``max_iter`` bounds the rounds).
        backward: ``"implicit"`` or ``"phantom"``.
        adjoint: the solver of the adjoint fixed point (implicit mode).
        phantom_steps, phantom_damping: k and λ of the phantom gradient.

    Implicit mode returns ``Z = F(S*)`` computed with gradient (one round, so
    parameters and inputs get their direct terms) and hooks Z's gradient:
    the incoming ``∂L/∂Z`` is replaced by the solution g of
    ``g = Jᵀ g + ∂L/∂Z``, i.e. ``(I − Jᵀ)⁻¹ ∂L/∂Z``, each ``Jᵀ g`` being one
    vector–Jacobian product through one round re-evaluated at S* in the hook.
    """

    def __init__(
        self,
        forward: SolverSpec,
        *,
        backward: str = "implicit",
        adjoint: SolverSpec | None = None,
        phantom_steps: int = 5,
        phantom_damping: float = 0.5,
    ):
        if backward not in ("implicit", "phantom"):
            raise ValueError(f"backward must be 'implicit' or 'phantom', got {backward!r}")
        if phantom_steps < 1 or not 0 < phantom_damping <= 1:
            raise ValueError("phantom_steps must be >= 1 and phantom_damping in (0, 1]")
        self.forward, self.backward = forward, backward
        self.adjoint = adjoint or SolverSpec("anderson", tol=forward.tol, max_iter=30)
        self.phantom_steps, self.phantom_damping = phantom_steps, phantom_damping
        self.max_rounds, self.tol = forward.max_iter, forward.tol

    def solve(self, f: RoundFn, s0: torch.Tensor) -> tuple[torch.Tensor, SolverTrace]:
        # s0: (B, N, d) -> (B, N, d)
        with torch.no_grad():
            res = self.forward(f, s0.detach())
        trace = SolverTrace.from_result(res)
        s_star = res.x
        trace.state = s_star
        if not torch.is_grad_enabled():
            return s_star, trace
        if self.backward == "phantom":
            s = s_star
            for _ in range(self.phantom_steps):
                s = torch.lerp(s, f(s), self.phantom_damping)
            return s, trace
        z_star = s_star.detach().requires_grad_()
        z = f(z_star)
        if z.requires_grad:
            z.register_hook(self._adjoint_hook(f, z_star, trace))
        return z, trace

    def _adjoint_hook(
        self, f: RoundFn, z_star: torch.Tensor, trace: SolverTrace
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        # The hook must not hold z itself: z → its hook → z would be a reference cycle
        # through autograd's C++ objects that Python cannot collect, leaking one round's
        # graph per forward pass. It re-evaluates F(z*) instead (one extra round).

        def hook(grad: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                z_in = z_star.detach().requires_grad_()
                z_out = f(z_in)

                def adjoint_map(g: torch.Tensor) -> torch.Tensor:
                    (jtg,) = torch.autograd.grad(z_out, z_in, g, retain_graph=True)
                    return jtg + grad

                res = self.adjoint(adjoint_map, grad)
            trace.backward = {
                "iterations": float(res.iterations.double().mean()),
                "residual": float(res.final_residual.max()),
                "converged": float(res.converged.double().mean()),
            }
            return res.x.detach()

        return hook

    def __repr__(self) -> str:
        return f"Equilibrium(forward={self.forward}, backward={self.backward!r})"
