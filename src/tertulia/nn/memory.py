"""Continuum memory (CMS, Behrouz et al., "Nested Learning", eqs. 70–71): MLP levels that
learn at different frequencies.

A chain of residual MLP levels

    y = MLP^(f_k)( … MLP^(f_1)(x) ) ,   MLP^(f_ℓ)(h) = h + W₂ σ(W₁ LN(h))

where level ℓ's parameters θ^(ℓ) change only every C^(ℓ) steps, by the error
signals accumulated over its chunk:

    θ^(ℓ)_{i+1} = θ^(ℓ)_i − η^(ℓ) Σ_{t = i−C^(ℓ)+1}^{i} ∇_θ L(θ_t; x_t)   if i ≡ 0 (mod C^(ℓ))
    θ^(ℓ)_{i+1} = θ^(ℓ)_i                                                otherwise

(with any optimiser in place of the plain step: :class:`tertulia.optim.MultiFrequency`
applies the rule to the parameter groups :meth:`ContinuumMLP.period_groups` returns).
Fast levels (C = 1) follow the current data; slow levels integrate many chunks
and drift little when the data changes, which is what the ``continual`` recipe
measures as forgetting. A plain MLP is the same network with every C = 1.

Legend: k levels, C^(ℓ) period of level ℓ (steps between its updates), η learning
rate, LN layer normalisation, σ the activation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .titans import NeuralMemory


class Level(nn.Module):
    """One residual MLP level ``h + W₂ σ(W₁ LN(h))`` of width ``d`` and hidden width ``hidden``,
    updated every ``period`` steps by the trainer (:meth:`optim_groups`)."""

    def __init__(self, d: int, hidden: int, *, period: int = 1):
        super().__init__()
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(f"period must be an integer >= 1, got {period!r}")
        self.period = period
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, hidden)
        self.down = nn.Linear(hidden, d)
        self.act = nn.GELU()

    def optim_groups(self) -> list[dict[str, Any]]:
        """The level's update period C (:mod:`tertulia.train.groups`); none when C = 1."""
        if self.period == 1:
            return []
        return [{"params": list(self.parameters()), "period": self.period}]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.down(self.act(self.up(self.norm(h))))


class ContinuumMLP(nn.Module):
    """``inputs → d → levels (periods C^(1…k)) → outputs``: a CMS chain between two linear maps.

    ``periods[ℓ]`` is level ℓ's update period; the input and output maps update
    every step (period 1). ``periods=(1, 1, 1)`` is the plain residual MLP of equal
    size, so a comparison at equal parameters changes only the update rule.
    """

    def __init__(
        self,
        inputs: int,
        outputs: int,
        *,
        d: int = 128,
        hidden: int = 256,
        periods: Sequence[int] = (1, 4, 16),
    ):
        super().__init__()
        if not periods or min(periods) < 1:
            raise ValueError(f"periods must be one or more integers >= 1, got {list(periods)}")
        self.periods = [int(c) for c in periods]
        self.inp = nn.Linear(inputs, d)
        self.levels = nn.ModuleList(Level(d, hidden, period=c) for c in self.periods)
        self.out = nn.Linear(d, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.reshape(x.shape[0], -1))
        for level in self.levels:
            h = level(h)
        return self.out(h)

    def period_groups(self, **options: Any) -> list[dict[str, Any]]:
        """Optimiser parameter groups, each with its ``period`` (and ``options``)."""
        groups = [{"params": [*self.inp.parameters(), *self.out.parameters()], "period": 1}]
        for level, c in zip(self.levels, self.periods, strict=True):
            groups.append({"params": list(level.parameters()), "period": c})
        return [{**g, **options} for g in groups]


class OnlineContinuumMemory(nn.Module):
    """CMS as a memory that keeps learning at test time: a chain of Titans memories
    (:class:`tertulia.nn.titans.NeuralMemory`) whose level ℓ is written once every C^(ℓ)
    tokens with the (clipped, gated) gradients accumulated over its chunk — the chunked
    form of the Titans update with ``chunk = C^(ℓ)`` — and read with the memory as its
    chunk began:

        h ← h + M^(ℓ)(LN h)     for ℓ = 1 … k,   M^(ℓ) updated at tokens C^(ℓ), 2C^(ℓ), …

    ``forward(x, state)`` carries every level's fast weights across calls.
    """

    def __init__(self, d: int, *, periods: Sequence[int] = (1, 4, 16), **memory: Any):
        super().__init__()

        if not periods or min(periods) < 1:
            raise ValueError(f"periods must be one or more integers >= 1, got {list(periods)}")
        self.periods = [int(c) for c in periods]
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in self.periods)
        self.levels = nn.ModuleList(NeuralMemory(d, chunk=c, **memory) for c in self.periods)

    def forward(
        self, x: torch.Tensor, state: list[Any] | None = None, *, return_state: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[Any]]:
        h, states = x, []
        for i, (norm, level) in enumerate(zip(self.norms, self.levels, strict=True)):
            y, st = level(norm(h), None if state is None else state[i], return_state=True)
            h = h + y
            states.append(st)
        return (h, states) if return_state else h
