"""Deep momentum gradient descent (DMGD; Behrouz et al., "Nested Learning", eqs. 48–50).

Momentum read as an associative memory m that compresses the gradients it has
seen; the parameter moves by what the memory returns:

    W ← W + m(u_t)            m ← α m − η ∇L²(m; u_t)            u_t = ∇L(W_t)

``memory="linear"``: m(u) = φ, a tensor shaped like W (zero at start), and
L²(φ; u) = ⟨φ, u⟩, so ∇L² = u and the rule is heavy-ball momentum exactly:
φ ← α φ − η u, W ← W + φ — ``torch.optim.SGD(lr=η, momentum=α)``.

``memory="mlp"`` (deep momentum): m is a small MLP shared by the coordinates of
one tensor, reading per coordinate the features f_i = (u_i / s, o_{i,prev}) —
the gradient normalised by its RMS s, and the memory's previous output — and
returning o_i = w_skip · f_i + MLP_φ(f_i) (w_skip starts at (−1, 0) and the
MLP's last layer at 0, so step 0 is normalised gradient descent). The update is
W ← W + lr · o. Its inner objective is gradient compression: reproduce the
running mean ū of the normalised gradients (ū ← β ū + (1 − β) u/s) from what
it sees now,

    L²(φ; u) = mean_i ½ (o_i + ū_i)²,

and φ = (w_skip, MLP weights) is trained online, every step, by its own
momentum rule b ← α b + ∇_φ L², φ ← φ − η_inner b / (1 + mean_i ‖f_i‖²) (the
normalised step of online least squares, stable whatever the feature scale). A
non-finite inner gradient skips that inner step, and o is clipped to ±5 (RMS
units) so the feedback through o_prev cannot run away. With ``newton_schulz``
= k > 0 the update of a 2-D tensor is replaced by k Newton–Schulz iterations
towards its orthogonal polar factor (X ← 1.5 X − 0.5 X Xᵀ X after X ← O / ‖O‖_F),
rescaled to the update's own RMS.

Legend: W a parameter tensor, u its gradient, s = RMS(u), o the memory's output,
φ the memory's parameters, α momentum, η (inner) learning rate, β averaging rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

MEMORIES = ("mlp", "linear")
OUT_MAX = 5.0  # bound on the deep memory's output, in units of the gradient's RMS


def newton_schulz(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximate orthogonal polar factor of ``matrix`` (2-D) by cubic Newton–Schulz steps."""
    if matrix.ndim != 2:
        raise ValueError(f"newton_schulz needs a 2-D matrix, got shape {tuple(matrix.shape)}")
    x = matrix / (matrix.norm() + 1e-12)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        x = 1.5 * x - 0.5 * (x @ x.T) @ x
    return x.T if tall else x


class DMGD(torch.optim.Optimizer):
    """Deep momentum gradient descent; ``memory="linear"`` is SGD with momentum.

    Args:
        params: parameters or param groups.
        lr: η for ``linear``; the step size multiplying the memory's output for ``mlp``.
        momentum: α (outer momentum for ``linear``; the memory parameters' momentum for ``mlp``).
        memory: ``"mlp"`` (deep) or ``"linear"``.
        hidden: width of the memory MLP.
        inner_lr: η_inner, learning rate of the memory MLP's parameters.
        beta: averaging rate of the gradient mean the memory learns to reproduce.
        weight_decay: decoupled weight decay (W ← W (1 − lr·wd)).
        newton_schulz: Newton–Schulz iterations on the updates of 2-D tensors (0: none).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        *,
        momentum: float = 0.9,
        memory: str = "mlp",
        hidden: int = 16,
        inner_lr: float = 1e-2,
        beta: float = 0.9,
        weight_decay: float = 0.0,
        newton_schulz: int = 0,
    ):
        if lr <= 0 or inner_lr <= 0:
            raise ValueError(f"lr and inner_lr must be > 0, got {lr}, {inner_lr}")
        if not 0.0 <= momentum < 1.0 or not 0.0 <= beta < 1.0:
            raise ValueError(f"momentum and beta must be in [0, 1), got {momentum}, {beta}")
        if memory not in MEMORIES:
            raise ValueError(f"memory must be one of {', '.join(MEMORIES)}, got {memory!r}")
        if hidden < 1 or newton_schulz < 0 or weight_decay < 0:
            raise ValueError("hidden must be >= 1, newton_schulz and weight_decay >= 0")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            memory=memory,
            hidden=hidden,
            inner_lr=inner_lr,
            beta=beta,
            weight_decay=weight_decay,
            newton_schulz=newton_schulz,
        )
        super().__init__(params, defaults)

    @staticmethod
    def _init_memory(hidden: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(hidden)
        opts = {"dtype": like.dtype, "device": like.device}
        return {
            "skip": torch.tensor([-1.0, 0.0], **opts),
            "w1": (torch.randn(2, hidden, generator=gen) / math.sqrt(2)).to(**opts),
            "b1": torch.zeros(hidden, **opts),
            "w2": torch.zeros(hidden, **opts),
        }

    @staticmethod
    def _memory_out(phi: dict[str, torch.Tensor], f: torch.Tensor) -> torch.Tensor:
        return f @ phi["skip"] + torch.tanh(f @ phi["w1"] + phi["b1"]) @ phi["w2"]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, alpha = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                u = p.grad
                state = self.state[p]
                if group["memory"] == "linear":
                    if "phi" not in state:
                        state["phi"] = torch.zeros_like(p)
                    phi = state["phi"]
                    phi.mul_(alpha).add_(u, alpha=-lr)  # φ ← α φ − η ∇⟨φ, u⟩
                    update = phi
                else:
                    update = lr * self._deep_step(group, p, u, state)
                if group["newton_schulz"] and p.ndim == 2:
                    rows, cols = p.shape
                    rms = update.pow(2).mean().sqrt()
                    update = newton_schulz(update, group["newton_schulz"]) * (
                        rms * math.sqrt(rows * cols)
                    )
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])
                p.add_(update)
        return loss

    def _deep_step(
        self, group: dict[str, Any], p: torch.Tensor, u: torch.Tensor, state: dict[str, Any]
    ) -> torch.Tensor:
        if "w1" not in state:
            state.update(self._init_memory(group["hidden"], p))
            for k in ("skip", "w1", "b1", "w2"):
                state[f"{k}_mom"] = torch.zeros_like(state[k])
            state["out"] = torch.zeros_like(p)
            state["mean"] = torch.zeros_like(p)
            state["step"] = torch.zeros((), dtype=torch.float64)
        scale = u.pow(2).mean().sqrt() + 1e-12
        g = (u / scale).flatten()
        state["step"] += 1
        mean = state["mean"].view(-1)
        mean.mul_(group["beta"]).add_(g, alpha=1 - group["beta"])
        target = mean / (1 - group["beta"] ** float(state["step"]))  # bias-corrected ū
        f = torch.stack([g, state["out"].view(-1)], dim=1)  # (N, 2)
        names = ("skip", "w1", "b1", "w2")
        with torch.enable_grad():
            phi = {k: state[k].detach().requires_grad_(True) for k in names}
            out = self._memory_out(phi, f)
            inner = 0.5 * (out + target).pow(2).mean()
            grads = torch.autograd.grad(inner, [phi[k] for k in names])
        if all(torch.isfinite(gr).all() for gr in grads):
            # normalised step (NLMS): the inner regression's curvature grows with ‖f‖²
            step = group["inner_lr"] / (1.0 + float(f.pow(2).sum(1).mean()))
            for k, gr in zip(names, grads, strict=True):
                mom = state[f"{k}_mom"]
                mom.mul_(group["momentum"]).add_(gr)
                state[k].add_(mom, alpha=-step)
        o = out.detach().clamp(-OUT_MAX, OUT_MAX)
        state["out"].copy_(o.view_as(p))
        return o.view_as(p)
