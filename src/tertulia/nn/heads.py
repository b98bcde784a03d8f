"""Gaussian heads ``g_φ(s) → (μ, log σ²)`` per output point.

The mean is predicted as an increment over the last observed frame
(``μ = x_last + Δ``): one-step changes of a PDE field are small against the
field, so the head learns the dynamics instead of re-learning the identity.
The log-variance is softly clamped into ``[lo, hi]`` (smooth, so gradients
never vanish at a hard wall):

    lv = lo + softplus(raw − lo);   lv = hi − softplus(hi − lv)

Legend: B batch, n cells, d state, P points a cell predicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .stacked import StackedLayerNorm, StackedLinear

LOG_VAR_MIN = -14.0
LOG_VAR_MAX = 6.0


def soft_clamp_log_var(
    raw: torch.Tensor, lo: float = LOG_VAR_MIN, hi: float = LOG_VAR_MAX
) -> torch.Tensor:
    lv = lo + F.softplus(raw - lo)
    return hi - F.softplus(hi - lv)


class StackedGaussianHead(nn.Module):
    """Per-cell head: state ``(B, n, d)`` → increment and log-variance ``(B, n, P)`` each."""

    def __init__(self, n: int, *, d: int, points: int, init_log_var: float = -2.0):
        super().__init__()
        self.points = points
        self.norm = StackedLayerNorm(n, d)
        self.out = StackedLinear(n, d, 2 * points, init_scale=0.1)
        with torch.no_grad():
            self.out.bias[:, points:] = init_log_var

    def forward(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # s: (B, n, d) -> delta (B, n, P), log_var (B, n, P)
        delta, raw = self.out(self.norm(s)).split(self.points, dim=-1)
        return delta, soft_clamp_log_var(raw)


@dataclass
class Prediction:
    """A Gaussian forecast ``N(mean, exp(log_var))`` per output point.

    ``trace`` carries how the orchestra got there (``None`` for models without
    rounds); ``aux`` holds unweighted regulariser terms the task may weigh.
    """

    mean: torch.Tensor  # (B, G)
    log_var: torch.Tensor  # (B, G)
    trace: Any = None
    aux: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.log_var)
