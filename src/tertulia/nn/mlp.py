"""The monolithic baseline: one MLP over the whole field with a Gaussian head.

    h = MLP([x_{t−w+1}, …, x_t]) ;  μ = x_t + Δ(h) ;  log σ² = clamp(lv(h))

Same inputs, same Gaussian output and same training loop as the orchestra;
:func:`hidden_for_params` picks the width that matches a parameter budget so
the comparison is at equal size.

Legend: B batch, w window, G grid, H hidden.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .heads import Prediction, soft_clamp_log_var


def mlp_params(inputs: int, outputs: int, hidden: int, layers: int) -> int:
    """Parameter count of ``inputs → hidden (×layers, GELU) → outputs``."""
    return (
        inputs * hidden
        + hidden
        + (layers - 1) * (hidden * hidden + hidden)
        + hidden * outputs
        + outputs
    )


def hidden_for_params(inputs: int, outputs: int, layers: int, target: int) -> int:
    """Width H whose :func:`mlp_params` is closest to ``target``."""
    a = layers - 1
    b = inputs + outputs + layers
    c = outputs - target
    if a == 0:
        guess = -c / b
    else:
        guess = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    candidates = {max(1, math.floor(guess)), max(1, math.ceil(guess))}
    return min(candidates, key=lambda h: abs(mlp_params(inputs, outputs, h, layers) - target))


class GaussianMLP(nn.Module):
    """Whole-field MLP forecaster with a heteroscedastic Gaussian output."""

    def __init__(self, *, grid: int, window: int, hidden: int, layers: int = 2, scale: float = 1.0):
        super().__init__()
        self.grid, self.window = grid, window
        dims = [window * grid] + [hidden] * layers
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [nn.Linear(dims[i], dims[i + 1]), nn.GELU()]
        self.body = nn.Sequential(*blocks)
        self.out = nn.Linear(hidden, 2 * grid)
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()
            self.out.bias[grid:] = -2.0
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> Prediction:
        # x: (B, w, G) physical units -> Gaussian over the next frame (B, G)
        if x.ndim != 3 or x.shape[1:] != (self.window, self.grid):
            raise ValueError(
                f"expected input of shape (batch, {self.window}, {self.grid}), got {tuple(x.shape)}"
            )
        xn = x / self.scale
        delta, raw = self.out(self.body(xn.flatten(1))).split(self.grid, dim=-1)
        mean = xn[:, -1] + delta
        return Prediction(
            mean=mean * self.scale, log_var=soft_clamp_log_var(raw) + 2 * torch.log(self.scale)
        )


class Persistence(nn.Module):
    """``u_{t+1} = u_t`` with a constant σ fitted on training one-step changes.

    σ² = mean over the training set of (y_{t+1} − y_t)², so the baseline's
    probabilistic scores are honest rather than undefined.
    """

    def __init__(self, *, sigma: float = 1.0):
        super().__init__()
        self.register_buffer("sigma", torch.tensor(float(sigma)))

    def forward(self, x: torch.Tensor) -> Prediction:
        # x: (B, w, G) -> (B, G)
        mean = x[:, -1]
        return Prediction(mean=mean, log_var=(2 * torch.log(self.sigma)).expand_as(mean))


class MLPClassifier(nn.Module):
    """``inputs → hidden[0] → … → classes`` with ReLU, the seed-002 classifier.

    Dropout follows every hidden layer but the last, so ``hidden=(128, 64)``
    with ``dropout=0.3`` on 784 inputs is the seed's 784-128-Dropout(0.3)-64-10
    (109,386 parameters). Inputs of any shape (B, …) are flattened to (B, inputs).
    """

    def __init__(
        self, inputs: int, classes: int, hidden: tuple[int, ...] = (128, 64), dropout: float = 0.0
    ):
        super().__init__()
        if not hidden:
            raise ValueError("MLPClassifier needs at least one hidden layer")
        layers: list[nn.Module] = []
        width = inputs
        for i, h in enumerate(hidden):
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0 and i < len(hidden) - 1:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)
        self.inputs = inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) of inputs (B, …) holding ``inputs`` values each."""
        return self.net(x.reshape(x.shape[0], -1))
