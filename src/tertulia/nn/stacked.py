"""Stacked per-cell layers: ``n`` independent layers whose weights share one tensor.

Each cell i owns parameters θ_i; stacking them on a leading axis lets all
cells run in one batched kernel:

    y[b, i] = x[b, i] @ W[i] + c[i]        (einsum "bni,nio->bno")

``forward_one(i, x_i)`` applies cell i alone (the reference path and the
asynchronous schedule use it).

Legend: B batch, n cells, I input features, O output features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class StackedLinear(nn.Module):
    """``n`` affine maps ``I → O`` with weights ``(n, I, O)`` and biases ``(n, O)``."""

    def __init__(self, n: int, in_features: int, out_features: int, *, init_scale: float = 1.0):
        super().__init__()
        self.n, self.in_features, self.out_features = n, in_features, out_features
        self.weight = nn.Parameter(torch.empty(n, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n, out_features))
        bound = init_scale / math.sqrt(max(in_features, 1))
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, n, I) -> (B, n, O)
        return torch.einsum("bni,nio->bno", x, self.weight) + self.bias

    def forward_one(self, i: int, x: torch.Tensor) -> torch.Tensor:
        # x: (B, I) -> (B, O), cell i only
        return x @ self.weight[i] + self.bias[i]

    def extra_repr(self) -> str:
        return f"n={self.n}, in={self.in_features}, out={self.out_features}"


class StackedLayerNorm(nn.Module):
    """Per-cell LayerNorm over the feature axis with per-cell affine ``(n, D)``."""

    def __init__(self, n: int, features: int, *, eps: float = 1e-5):
        super().__init__()
        self.eps, self.features = eps, features
        self.weight = nn.Parameter(torch.ones(n, features))
        self.bias = nn.Parameter(torch.zeros(n, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, n, D)
        # a static normalised shape (not x.shape[-1:]) keeps the module ONNX-exportable
        return F.layer_norm(x, (self.features,), eps=self.eps) * self.weight + self.bias

    def forward_one(self, i: int, x: torch.Tensor) -> torch.Tensor:
        # x: (B, D)
        return F.layer_norm(
            x, (self.features,), weight=self.weight[i], bias=self.bias[i], eps=self.eps
        )
