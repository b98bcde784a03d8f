"""The Mamba block (Gu & Dao, 2023): gated, input-selective diagonal SSM.

For an input x (B, L, d_model), with d_inner = expand · d_model:

    (x', z) = in_proj(x)                               two (B, L, d_inner) halves
    x'      = silu(causal_depthwise_conv(x'))          kernel d_conv, left padding
    (δ, B, C) = x_proj(x')                             δ: (B, L, R), B, C: (B, L, N)
    Δ       = softplus(dt_proj(δ))                     (B, L, d_inner), Δ > 0
    A       = −exp(A_log)                              (d_inner, N), A < 0
    y       = selective_scan(x', Δ, A, B, C, D, z)     see :mod:`tertulia.nn.scan`
    out     = out_proj(y)                              (B, L, d_model)

Initialisation: A_log[d, n] = log(n + 1) (the S4D-real spectrum, A = −1 … −N
per channel); D = 1; dt_proj.bias = softplus⁻¹(dt) with
dt = exp(U(log dt_min, log dt_max)), so softplus(bias) ∈ [dt_min, dt_max];
softplus⁻¹(y) = y + log(−expm1(−y)).

The convolution is made causal by padding d_conv − 1 steps on both sides and
keeping the first L outputs, so output t only sees inputs ≤ t. :meth:`step`
runs the same block recurrently (one token, a (B, d_inner, d_conv) conv window
and a (B, d_inner, N) SSM state) and agrees with the full forward to rounding.

Legend: B batch, L sequence length, d_inner = expand·d_model, N = d_state,
R = dt_rank.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShapeError
from .scan import Impl, selective_scan

MambaState = tuple[torch.Tensor, torch.Tensor]  # (conv window, ssm state)


class MambaBlock(nn.Module):
    """One Mamba mixer: in_proj → causal conv + SiLU → selective SSM (gated) → out_proj."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | Literal["auto"] = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        scan_impl: Impl = "fast",
    ) -> None:
        super().__init__()
        if d_model < 1 or d_state < 1 or d_conv < 1 or expand < 1:
            raise ShapeError("d_model, d_state, d_conv and expand must all be ≥ 1")
        if not 0 < dt_min <= dt_max:
            raise ShapeError(f"need 0 < dt_min ≤ dt_max, got {dt_min}, {dt_max}")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_impl: Impl = scan_impl
        di, n, r = self.d_inner, d_state, self.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * di, bias=False)
        self.conv1d = nn.Conv1d(di, di, d_conv, groups=di, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(di, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, di, bias=True)
        self.out_proj = nn.Linear(di, d_model, bias=False)

        nn.init.uniform_(self.dt_proj.weight, -(r**-0.5), r**-0.5)
        log_dt = torch.rand(di) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(dt_min, dt_max)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(di, 1)
        )
        self.D = nn.Parameter(torch.ones(di))

    def _ssm_inputs(self, xc: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(Δ, A, B, C) from the convolved input xc (…, d_inner)."""
        dbc = self.x_proj(xc)
        dlow, Bm, Cm = dbc.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dlow))
        return delta, -torch.exp(self.A_log), Bm, Cm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, d_model) → (B, L, d_model)."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ShapeError(f"x must be (B, L, {self.d_model}), got shape {tuple(x.shape)}")
        L = x.shape[1]
        xi, z = self.in_proj(x).chunk(2, dim=-1)
        xc = F.silu(self.conv1d(xi.transpose(1, 2))[..., :L].transpose(1, 2))
        delta, A, Bm, Cm = self._ssm_inputs(xc)
        y = selective_scan(xc, delta, A.to(xc.dtype), Bm, Cm, self.D, z, impl=self.scan_impl)
        return self.out_proj(y)

    def init_state(self, batch: int) -> MambaState:
        """Zero state: conv window (B, d_inner, d_conv), SSM state (B, d_inner, N)."""
        p = self.in_proj.weight
        return (
            p.new_zeros(batch, self.d_inner, self.d_conv),
            p.new_zeros(batch, self.d_inner, self.d_state),
        )

    def step(
        self, x_t: torch.Tensor, state: MambaState | None = None
    ) -> tuple[torch.Tensor, MambaState]:
        """One recurrent step: x_t (B, d_model) → (y_t (B, d_model), new state).

        The conv window holds the last d_conv pre-conv inputs (oldest first);
        the SSM state follows h ← exp(Δ A) h + Δ B u, y = ⟨h, C⟩ + D u.
        """
        if x_t.dim() != 2 or x_t.shape[-1] != self.d_model:
            raise ShapeError(f"x_t must be (B, {self.d_model}), got shape {tuple(x_t.shape)}")
        conv, h = self.init_state(x_t.shape[0]) if state is None else state
        xi, z = self.in_proj(x_t).chunk(2, dim=-1)
        conv = torch.cat([conv[..., 1:], xi[..., None]], dim=-1)
        xc = F.silu((conv * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias)
        delta, A, Bm, Cm = self._ssm_inputs(xc)
        h = torch.exp(delta[..., None] * A) * h + (delta * xc)[..., None] * Bm[:, None]
        y = (h * Cm[:, None]).sum(-1) + self.D * xc
        return self.out_proj(y * F.silu(z)), (conv, h)
