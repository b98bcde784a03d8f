"""How the rounds of an orchestra are run and differentiated.

An orchestra defines one round ``S ↦ F(S)``; a *solver* decides how many
rounds to run, when to stop and where gradients flow. The orchestra never
branches on the training mode: it is handed a solver object.

Stopping rule (per sample b, over all nodes and features):

    r_b = ‖S_b^{r+1} − S_b^r‖₂ / ‖S_b^r‖₂ ;   stop when max_b r_b < tol

Solvers here:

* :class:`Unrolled` — plain unrolling with backpropagation through every round
  (BPTT, seed §4.1).
* :class:`Truncated` — the TRM regime: the first ``R − k`` rounds run without
  gradient, the last ``k`` with it. Memory is O(k) instead of O(R).

Legend: B batch, N nodes, d state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

RoundFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SolverTrace:
    """What happened while iterating: residual per round (batch mean and max)."""

    residuals: list[float] = field(default_factory=list)
    max_residuals: list[float] = field(default_factory=list)
    rounds: int = 0
    converged: bool = False


def relative_residual(new: torch.Tensor, old: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample ``‖new − old‖ / ‖old‖`` over every non-batch axis: shape (B,)."""
    diff = (new - old).flatten(1).norm(dim=1)
    return diff / old.flatten(1).norm(dim=1).clamp_min(eps)


class Unrolled:
    """Run up to ``max_rounds`` rounds with gradient through all of them (BPTT)."""

    def __init__(self, max_rounds: int, *, tol: float = 0.0):
        if max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
        self.max_rounds, self.tol = max_rounds, tol

    def _iterate(
        self, f: RoundFn, s: torch.Tensor, rounds: int, trace: SolverTrace, *, tol: float
    ) -> torch.Tensor:
        for _ in range(rounds):
            new = f(s)
            r = relative_residual(new.detach(), s.detach())
            trace.residuals.append(float(r.mean()))
            trace.max_residuals.append(float(r.max()))
            trace.rounds += 1
            s = new
            if tol > 0 and trace.max_residuals[-1] < tol:
                trace.converged = True
                break
        return s

    def solve(self, f: RoundFn, s0: torch.Tensor) -> tuple[torch.Tensor, SolverTrace]:
        # s0: (B, N, d) -> (B, N, d)
        trace = SolverTrace()
        return self._iterate(f, s0, self.max_rounds, trace, tol=self.tol), trace

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_rounds={self.max_rounds}, tol={self.tol})"


class Truncated(Unrolled):
    """Rounds ``1..R−k`` without gradient, then ``k`` rounds with gradient (TRM regime).

    If the gradient-free phase converges early it stops, but the ``k``
    differentiable rounds always run, so every step receives a gradient.
    In evaluation (no grad anywhere) it behaves like :class:`Unrolled`.
    """

    def __init__(self, max_rounds: int, *, grad_rounds: int, tol: float = 0.0):
        super().__init__(max_rounds, tol=tol)
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
        return s, trace

    def __repr__(self) -> str:
        return (
            f"Truncated(max_rounds={self.max_rounds}, grad_rounds={self.grad_rounds}, "
            f"tol={self.tol})"
        )
