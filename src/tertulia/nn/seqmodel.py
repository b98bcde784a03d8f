"""Residual stacks of sequence layers for classification and regression.

    h_0 = W_in x                         (B, L, C) → (B, L, H)
    h_ℓ = h_{ℓ−1} + Dropout(layer_ℓ(Norm(h_{ℓ−1})))      ℓ = 1 … layers
    out = W_out Pool(Norm(h_layers))     pool: last step or mean over L

Pre-norm residual blocks (as in S4 and Mamba's reference models) keep the
stack trainable at depth. Any module mapping (B, L, H) → (B, L, H) can be a
layer, so S4D, Mamba and future blocks share this stack.

Legend: B batch, L steps, C input channels, H model width, K outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ShapeError


class SequenceModel(nn.Module):
    """``layers`` residual pre-norm blocks between an input and an output projection."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        *,
        d_model: int,
        layers: int,
        block: Callable[[], nn.Module],
        pool: str = "last",
        dropout: float = 0.0,
    ):
        super().__init__()
        if pool not in ("last", "mean", "none"):
            raise ValueError(f"pool must be 'last', 'mean' or 'none', got {pool!r}")
        self.d_in, self.pool = d_in, pool
        self.encoder = nn.Linear(d_in, d_model)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(layers))
        self.layers = nn.ModuleList(block() for _ in range(layers))
        self.dropout = nn.Dropout(dropout)
        self.final_norm = nn.LayerNorm(d_model)
        self.decoder = nn.Linear(d_model, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, L, C) -> (B, K), or (B, L, K) with pool='none'
        if x.dim() != 3 or x.shape[-1] != self.d_in:
            raise ShapeError(
                f"input must be (batch, steps, {self.d_in}); got shape {tuple(x.shape)}"
            )
        h = self.encoder(x)
        for norm, layer in zip(self.norms, self.layers, strict=True):
            h = h + self.dropout(layer(norm(h)))
        h = self.final_norm(h)
        if self.pool == "last":
            h = h[:, -1]
        elif self.pool == "mean":
            h = h.mean(1)
        return self.decoder(h)
