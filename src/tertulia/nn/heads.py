"""Gaussian heads ``g_φ(s) → (μ, log σ²)`` per output point.

The mean is predicted as an increment over the last observed frame
(``μ = x_last + Δ``): one-step changes of a PDE field are small against the
field, so the head learns the dynamics instead of re-learning the identity.
The log-variance is softly clamped into ``[lo, hi]`` (smooth, so gradients
never vanish at a hard wall):

    lv = lo + softplus(raw − lo);   lv = hi − softplus(hi − lv)

:class:`KalmanHead` reads a Kalman cell's state ``[μ, ℓ]`` instead: a linear
measurement of the latent Gaussian whose variance is the propagated state
variance plus a noise floor (the measurement's innovation variance).

Legend: B batch, n cells, d state (d = 2·d_h for Kalman states), P points a
cell predicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .kalman_cell import LOG_P_MAX, LOG_P_MIN, check_kalman_state_size
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


class KalmanHead(nn.Module):
    """Linear-Gaussian read-out of a Kalman state: ``(B, n, d)`` → increment, log-variance.

    Cell i's forecast of its P points (patch plus halo) is a linear measurement
    of its latent state, ``y = W_i μ + c_i + v``, ``v ~ N(0, diag ρ_i)``, so under
    the state's Gaussian ``N(μ, diag p)`` its marginal is Gaussian with

        mean  W_i μ + c_i
        var   diag(W_i diag(p) W_iᵀ) + ρ_i = (W_i ∘ W_i) p + ρ_i

    i.e. the variance is the diagonal of the innovation covariance of the
    measurement y: the filter's (input-dependent) state uncertainty propagated
    through the read-out, plus a learned per-point noise floor
    ``ρ_i = softplus(·) + ρ_min``. ``log var`` is then softly clamped into
    ``[LOG_VAR_MIN, LOG_VAR_MAX]`` as in :class:`StackedGaussianHead`. No
    normalisation layer: the read-out stays linear so the Gaussian algebra holds.

    ``init_log_var`` initialises the floor ρ only. It starts low (e⁻⁶ in
    normalised units, below the one-step error of the tasks) because ρ is a
    *floor*: started at e⁻² like the TRM head's log-variance, it dominates the
    filter term and is slow to shrink (on ``burgers``, 300 steps: NLL −1.38
    against −1.75 with e⁻⁶, where the filter term carries ~80% of the variance).
    """

    def __init__(
        self, n: int, *, d: int, points: int, init_log_var: float = -6.0, rho_min: float = 1e-6
    ):
        super().__init__()
        self.d_h = check_kalman_state_size(d)
        self.points, self.rho_min = points, float(rho_min)
        self.out = StackedLinear(n, self.d_h, points, init_scale=0.1)
        init = math.log(math.expm1(math.exp(init_log_var) - rho_min))
        self.noise_raw = nn.Parameter(torch.full((n, points), init))

    def forward(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # s: (B, n, d) -> delta (B, n, P), log_var (B, n, P)
        mu, ell = s.split(self.d_h, dim=-1)
        p = ell.clamp(LOG_P_MIN, LOG_P_MAX).exp()
        var = torch.einsum("bnh,nhp->bnp", p, self.out.weight.pow(2))
        var = var + F.softplus(self.noise_raw) + self.rho_min
        return self.out(mu), soft_clamp_log_var(var.log())


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
