"""Deep momentum gradient descent (DMGD; Behrouz et al., "Nested Learning", eqs. 48–50).

Momentum read as an associative memory m_φ that compresses the gradients it has
seen; φ is trained online, every step, and the parameter moves by what the
memory returns:

    φ ← α φ − η ∇_φ L²(m_φ; u_t)        W ← W + m_φ(u_t)        u_t = ∇L(W_t)

``memory="linear"``: m_φ(u) = φ, a tensor shaped like W (zero at start), and
L²(φ; u) = ⟨φ, u⟩, so ∇_φ L² = u and the rule is heavy-ball momentum exactly:

    φ ← α φ − η u        W ← W + φ        (= torch.optim.SGD(lr=η, momentum=α))

``memory="mlp"`` (deep momentum): m_φ is a tiny MLP shared by all coordinates of
one tensor and applied per coordinate i to the features

    f_i = (g_i, o'_i),    g = u / s,    s = RMS(u) = √(mean_i u_i²)

(the gradient normalised by its own RMS, so the memory is scale invariant, and
o' the memory's previous output for that coordinate), with output

    o_i = m_φ(f_i) = w_skip · f_i + w₂ · tanh(W₁ᵀ f_i + b₁),    φ = (w_skip, W₁, b₁, w₂).

At start w_skip = (−1, 0), w₂ = 0 (W₁ random, b₁ = 0), so step 0 is o = −u/s:
normalised gradient descent. Its inner objective is gradient compression: the
memory is asked to return (minus) the bias-corrected running mean ū of the
normalised gradients,

    ū ← β ū + (1 − β) g,   ū_c = ū / (1 − βᵗ),    L²(φ; u) = mean_i ½ (o_i + ū_c,i)².

(Regressing on −g itself would be solved exactly by the skip term at its start,
so the MLP would get a zero gradient for ever; ū holds the history that a
momentum has to remember, and o = −(1 − β) g + β o' reproduces it exactly.)
φ is trained by its own heavy-ball rule with a normalised step (that of online
least squares, stable whatever the feature scale):

    b ← α b + ∇_φ L²,    φ ← φ − η_inner b / (1 + mean_i ‖f_i‖²),

then the memory is read with the new φ, clipped to ±5 (in RMS units, so the
feedback through o' cannot run away) and the parameter moves W ← W + lr · o.
A non-finite gradient u leaves the tensor and its memory untouched; a
non-finite inner gradient ∇_φ L² skips the inner update of that tensor.

``newton_schulz`` = k > 0 replaces the update Δ of a 2-D tensor by its
orthogonalised direction with the same Frobenius norm: X ← Δ / ‖Δ‖_F, then k
quintic Newton–Schulz steps X ← (15 X − 10 (XXᵀ) X + 3 (XXᵀ)² X) / 8 (each
singular value σ ∈ (0, 1] maps to σ (15 − 10σ² + 3σ⁴) / 8, increasing and
converging to 1 with third order), and Δ ← X ‖Δ‖_F / ‖X‖_F. ``weight_decay`` λ
is decoupled, W ← W (1 − lr λ), before the update.

Legend: W a parameter tensor, u its gradient, s = RMS(u), g = u/s, o the memory's
output (o' the previous one), φ the memory's parameters, b their momentum,
α momentum, η / η_inner learning rates, β averaging rate, t the tensor's step count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["DMGD", "MEMORIES", "newton_schulz"]

MEMORIES = ("mlp", "linear")
OUT_MAX = 5.0  # bound on the deep memory's output, in units of the gradient's RMS
_PHI = ("skip", "w1", "b1", "w2")  # the memory MLP's parameters, in state[p]
_EPS = 1e-12


def newton_schulz(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximate orthogonal polar factor U Vᵀ of a 2-D ``matrix`` = U Σ Vᵀ.

    Normalises by the Frobenius norm (all singular values in (0, 1]) and runs
    ``steps`` quintic Newton–Schulz iterations X ← (15 X − 10 (XXᵀ)X + 3 (XXᵀ)²X)/8.
    A singular value σ/‖M‖_F ≥ 0.1 is within 0.005 of 1 after 5 steps.
    """
    if matrix.ndim != 2:
        raise ValueError(f"newton_schulz needs a 2-D matrix, got shape {tuple(matrix.shape)}")
    if steps < 0:
        raise ValueError(f"newton_schulz steps must be >= 0, got {steps}")
    x = matrix / (torch.linalg.matrix_norm(matrix) + _EPS)
    tall = x.shape[0] > x.shape[1]
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        x = (15.0 * x - 10.0 * gram @ x + 3.0 * gram @ (gram @ x)) / 8.0
    return x.mT if tall else x


class DMGD(torch.optim.Optimizer):
    """Deep momentum gradient descent; ``memory="linear"`` is SGD with heavy-ball momentum.

    Args:
        params: parameters or param groups (each group may override any keyword below).
        lr: η of the linear memory; for ``mlp`` the step size multiplying the memory's output.
        momentum: α, the outer momentum (``linear``) or that of the memory MLP's parameters.
        memory: ``"mlp"`` (deep, default) or ``"linear"``.
        hidden: width of the memory MLP.
        inner_lr: η_inner, learning rate of the memory MLP's parameters.
        beta: averaging rate of the gradient mean the deep memory learns to reproduce.
        weight_decay: decoupled weight decay λ (W ← W (1 − lr λ)).
        newton_schulz: Newton–Schulz steps on the updates of 2-D tensors (0: none).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        *,
        momentum: float = 0.9,
        memory: str = "mlp",
        hidden: int = 16,
        inner_lr: float = 1e-2,
        beta: float = 0.9,
        weight_decay: float = 0.0,
        newton_schulz: int = 0,
    ) -> None:
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
        _check(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group after checking its settings (ValueError when one is out of range)."""
        _check({k: v for k, v in param_group.items() if k != "params"})
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One step on every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                u = p.grad
                if u.is_sparse:
                    raise ValueError("DMGD does not support sparse gradients; use dense ones")
                state = self.state[p]
                if group["memory"] == "linear":
                    if "phi" not in state:
                        state["phi"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    phi = state["phi"]
                    phi.mul_(group["momentum"]).add_(u, alpha=-lr)  # φ ← α φ − η ∇⟨φ, u⟩
                    update = phi
                else:
                    if not bool(torch.isfinite(u).all()):
                        continue  # a broken gradient must not poison the memory
                    update = self._deep_step(group, p, u, state).mul_(lr)
                k = group["newton_schulz"]
                if k and p.ndim == 2:
                    ortho = newton_schulz(update, k)
                    norm = torch.linalg.matrix_norm(update)
                    update = ortho * (norm / (torch.linalg.matrix_norm(ortho) + _EPS))
                if group["weight_decay"]:
                    p.mul_(1.0 - lr * group["weight_decay"])
                p.add_(update)
        return loss

    @staticmethod
    def _init_memory(hidden: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(hidden)  # deterministic, independent of torch's RNG
        opts: dict[str, Any] = {"dtype": like.dtype, "device": like.device}
        return {
            "skip": torch.tensor([-1.0, 0.0], **opts),
            "w1": (torch.randn(2, hidden, generator=gen, device=gen.device) / math.sqrt(2.0)).to(
                **opts
            ),
            "b1": torch.zeros(hidden, **opts),
            "w2": torch.zeros(hidden, **opts),
        }

    @staticmethod
    def _memory_out(phi: dict[str, torch.Tensor], f: torch.Tensor) -> torch.Tensor:
        """m_φ(f) per row of ``f`` (N, 2): w_skip · f + w₂ · tanh(W₁ᵀ f + b₁)."""
        return f @ phi["skip"] + torch.tanh(f @ phi["w1"] + phi["b1"]) @ phi["w2"]

    def _deep_step(
        self, group: dict[str, Any], p: torch.Tensor, u: torch.Tensor, state: dict[str, Any]
    ) -> torch.Tensor:
        """Train the memory on u (one inner step) and return its clipped output o, shaped like p."""
        if "w1" not in state:
            state.update(self._init_memory(group["hidden"], p))
            for k in _PHI:
                state[f"{k}_mom"] = torch.zeros_like(state[k])
            state["out"] = torch.zeros_like(p)
            state["mean"] = torch.zeros_like(p)
            state["step"] = torch.zeros(
                (), dtype=torch.float64, device="cpu"
            )  # as torch's optimisers
        beta = group["beta"]
        scale = u.pow(2).mean().sqrt() + _EPS
        g = (u / scale).reshape(-1)
        state["step"] += 1
        mean = state["mean"].view(-1)
        mean.mul_(beta).add_(g, alpha=1.0 - beta)
        target = mean / (1.0 - beta ** float(state["step"]))  # bias-corrected ū
        f = torch.stack([g, state["out"].reshape(-1)], dim=1)  # (N, 2) features
        with torch.enable_grad():
            phi = {k: state[k].detach().requires_grad_(True) for k in _PHI}
            inner = 0.5 * (self._memory_out(phi, f) + target).pow(2).mean()
            grads = torch.autograd.grad(inner, [phi[k] for k in _PHI])
        if all(bool(torch.isfinite(gr).all()) for gr in grads):
            # normalised step (NLMS): the inner regression's curvature grows with ‖f‖²
            lr_inner = group["inner_lr"] / (1.0 + float(f.pow(2).sum(1).mean()))
            for k, gr in zip(_PHI, grads, strict=True):
                mom = state[f"{k}_mom"]
                mom.mul_(group["momentum"]).add_(gr)
                state[k].add_(mom, alpha=-lr_inner)
        o = self._memory_out({k: state[k] for k in _PHI}, f)  # read with the new φ
        o = torch.nan_to_num(o, nan=0.0).clamp_(-OUT_MAX, OUT_MAX).view_as(p)
        state["out"].copy_(o)
        return o.clone()


def _check(settings: dict[str, Any]) -> None:
    """Raise ValueError for the first DMGD setting out of range (keys absent are not checked)."""
    rules: dict[str, tuple[Callable[[Any], bool], str]] = {
        "lr": (lambda v: v > 0, "must be > 0"),
        "inner_lr": (lambda v: v > 0, "must be > 0"),
        "momentum": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
        "beta": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
        "memory": (lambda v: v in MEMORIES, f"must be one of {', '.join(MEMORIES)}"),
        "hidden": (lambda v: isinstance(v, int) and v >= 1, "must be an integer >= 1"),
        "weight_decay": (lambda v: v >= 0, "must be >= 0"),
        "newton_schulz": (lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0"),
    }
    for key, (ok, allowed) in rules.items():
        if key in settings and not ok(settings[key]):
            raise ValueError(f"DMGD {key} {allowed}, got {settings[key]!r}")
