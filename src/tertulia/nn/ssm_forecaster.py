"""Deep-SSM forecasters of a 1-D field: S4D or Mamba layers scanning space.

The field's G points are read as a sequence whose channels are the w past
frames; a residual stack of bidirectional SSM layers mixes information along
x (an S4D layer is a learned long convolution, close in spirit to a Fourier
neural operator) and a pointwise head gives a Gaussian per point:

    z = SequenceModel(circular_pad([x_{t−w+1}, …, x_t]ᵀ))       (B, G+2p, 2)
    μ = x_t + z_0 ;  log σ² = soft_clamp(z_1)                       (B, G)

The domain is periodic: ``pad`` points wrap around on each side before the
scan and are cropped after, so the ends see their true neighbours. Mamba's
scan is causal, so each Mamba layer runs forwards and backwards and adds.

Same inputs, outputs (:class:`Prediction`) and training loop as the
orchestra and the MLP, so ``baselines.ssm`` puts them in the same report.

Legend: B batch, w window, G grid, p pad, H width.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ShapeError
from .heads import Prediction, soft_clamp_log_var
from .mamba import MambaBlock
from .s4d import S4D
from .seqmodel import SequenceModel


class Bidirectional(nn.Module):
    """``y = f(x) + flip(g(flip(x)))`` along the sequence axis: a causal layer both ways."""

    def __init__(self, forward_layer: nn.Module, backward_layer: nn.Module):
        super().__init__()
        self.fwd, self.bwd = forward_layer, backward_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, L, H) -> (B, L, H)
        return self.fwd(x) + self.bwd(x.flip(1)).flip(1)


class GaussianSSM(nn.Module):
    """Whole-field forecaster: an S4D or Mamba stack over the grid, Gaussian per point."""

    def __init__(
        self,
        *,
        grid: int,
        window: int,
        kind: str = "s4d",
        d_model: int = 32,
        layers: int = 2,
        d_state: int = 32,
        pad: int | None = None,
        scale: float = 1.0,
    ):
        super().__init__()
        if kind not in ("s4d", "mamba"):
            raise ValueError(f"kind must be 's4d' or 'mamba', got {kind!r}")
        self.grid, self.window, self.kind = grid, window, kind
        self.pad = grid // 4 if pad is None else pad
        if not 0 <= self.pad <= grid:
            raise ValueError(f"pad must be in 0..{grid}, got {self.pad}")

        def block() -> nn.Module:
            if kind == "s4d":
                return S4D(d_model, N=d_state, init="legs", bidirectional=True)

            return Bidirectional(
                MambaBlock(d_model, d_state=d_state), MambaBlock(d_model, d_state=d_state)
            )

        self.body = SequenceModel(
            window, 2, d_model=d_model, layers=layers, block=block, pool="none"
        )
        with torch.no_grad():  # start near persistence with a moderate σ
            self.body.decoder.weight.mul_(0.1)
            self.body.decoder.bias.copy_(torch.tensor([0.0, -2.0]))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> Prediction:
        # x: (B, w, G) physical units -> Gaussian over the next frame (B, G)
        if x.ndim != 3 or x.shape[1:] != (self.window, self.grid):
            raise ShapeError(
                f"expected input of shape (batch, {self.window}, {self.grid}), got {tuple(x.shape)}"
            )
        xn = x / self.scale
        seq = xn.transpose(1, 2)  # (B, G, w): space is the sequence
        p = self.pad
        if p:
            seq = torch.cat([seq[:, -p:], seq, seq[:, :p]], dim=1)
        z = self.body(seq)[:, p : p + self.grid]  # (B, G, 2)
        mean = xn[:, -1] + z[..., 0]
        return Prediction(
            mean=mean * self.scale,
            log_var=soft_clamp_log_var(z[..., 1]) + 2 * torch.log(self.scale),
        )
