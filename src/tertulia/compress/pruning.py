"""Pruning during training: masks that stay enforced, adaptive thresholds, the cubic schedule.

The seed (``002``) prunes by magnitude with a fixed or a percentile threshold
inside a train → prune → consolidate cycle. Two flaws of its code are fixed
here: a pruned weight is *kept* at zero (its gradient is masked before the
step, and after every optimiser step the weight and its optimiser state —
Adam's moments, SGD's momentum — are re-zeroed, so neither momentum nor weight
decay revives it), and storage that really shrinks lives in
:mod:`tertulia.compress.sparse_io`.

Masks (``True`` = kept) come from a score per weight:

    fixed threshold    keep |w| ≥ τ                          (the seed's compress_weights)
    magnitude          keep the top (1 − s)·N of |w|         (percentile-adaptive)
    signal-to-noise    keep the top (1 − s)·N of |w| / σ     (uncertainty-aware)

with ``scope="global"`` (one ranking over all pruned tensors, so layers get
different sparsities) or ``"layer"`` (each tensor pruned to s). Exactly
round(s·N) weights are pruned (ties broken by position). σ is a diagonal
Laplace estimate, σ²_i = 1 / (F_ii + λ), with F the empirical Fisher (mean
squared gradient, summed over samples) and λ the prior precision: a weight the data
pins down has a small σ and survives even when small; this is the seed's
"regularización basada en incertidumbre" made concrete.

Schedules give the target sparsity at a step. Cubic (Zhu & Gupta 2017):

    s_t = s_f + (s_i − s_f) (1 − (t − t_0)/(t_1 − t_0))³     for t_0 ≤ t ≤ t_1

held at s_i before t_0 and s_f after t_1, updated every ``every`` steps;
``oneshot`` jumps to s_f at t_0. A :class:`Pruner` applies its schedule from
any training loop (``pruner.step(t)`` before each optimiser step); masks only
grow — a pruned weight never returns.

Legend: N prunable weights, s sparsity (fraction pruned), τ threshold,
F empirical Fisher diagonal, λ prior precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

SCOPES = ("global", "layer")
SCHEDULES = ("cubic", "oneshot", "threshold")


def prunable(model: nn.Module, *, include_bias: bool = False) -> dict[str, nn.Parameter]:
    """The parameters to prune: weights with ≥ 2 dimensions (matrices, stacked per-cell
    weights (n, I, O), conv kernels, embedding tables). Biases — including stacked
    per-cell ones, (n, O) — and every parameter of a normalisation layer stay dense
    (``include_bias`` adds the biases)."""
    out = {}
    for mod_name, module in model.named_modules():
        is_norm = "Norm" in type(module).__name__
        for p_name, p in module.named_parameters(recurse=False):
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            if not p.requires_grad or is_norm:
                continue
            if p_name.endswith("bias"):
                if include_bias:
                    out[name] = p
                continue
            if p.ndim >= 2:
                out[name] = p
    return out


def _keep_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    # bool mask of the `keep` largest scores (ties: earlier position wins)
    flat = scores.flatten()
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if keep > 0:
        # stable sort on −score gives a deterministic tie order
        order = torch.sort(-flat.double(), stable=True).indices
        mask[order[:keep]] = True
    return mask.view_as(scores)


def threshold_masks(
    params: Mapping[str, torch.Tensor], threshold: float
) -> dict[str, torch.Tensor]:
    """Keep ``|w| ≥ threshold`` (the seed's fixed rule)."""
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    return {k: p.detach().abs() >= threshold for k, p in params.items()}


def magnitude_masks(
    params: Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    scope: str = "global",
    importance: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Prune exactly round(sparsity·N) weights with the lowest score (|w| by default)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    scores = {
        k: (importance[k] if importance is not None else p).detach().abs().cpu()
        for k, p in params.items()
    }
    if scope == "layer":
        return {k: _keep_top(s, s.numel() - round(sparsity * s.numel())) for k, s in scores.items()}
    names = list(scores)
    flat = torch.cat([scores[k].flatten() for k in names])
    keep = _keep_top(flat, flat.numel() - round(sparsity * flat.numel()))
    out, start = {}, 0
    for k in names:
        n = scores[k].numel()
        out[k] = keep[start : start + n].view_as(scores[k])
        start += n
    return out


def snr_importance(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    loss_fn: Callable[[Any], torch.Tensor],
    batches: Iterable[Any],
    *,
    prior_precision: float = 1.0,
) -> dict[str, torch.Tensor]:
    """|w| / σ, σ² = 1 / (Σ_s g_s² + λ): a diagonal Laplace posterior of each weight.

    ``loss_fn(batch)`` returns the per-sample losses (B,); g_s is the gradient of
    sample s's loss, so Σ_s g_s² is the empirical Fisher of the whole data (the
    Laplace precision of a loss summed over samples). One backward pass per sample:
    meant for a few hundred to a few thousand samples, not a training loop.
    """
    if prior_precision <= 0:
        raise ValueError(f"prior_precision must be > 0, got {prior_precision}")
    names = list(params)
    tensors = [params[k] for k in names]
    fisher = [torch.zeros_like(p) for p in tensors]
    count = 0
    for batch in batches:
        losses = loss_fn(batch).reshape(-1)
        for i in range(losses.numel()):
            grads = torch.autograd.grad(
                losses[i], tensors, retain_graph=i + 1 < losses.numel(), allow_unused=True
            )
            for f, g in zip(fisher, grads, strict=True):
                if g is not None:
                    f += g.detach().pow(2)
            count += 1
    if count == 0:
        raise ValueError("snr_importance needs at least one sample")
    return {
        k: p.detach().abs() * torch.sqrt(f + prior_precision)
        for k, p, f in zip(names, tensors, fisher, strict=True)
    }


class Masks:
    """One bool mask (True = kept) per parameter name; enforced on a model and optimiser."""

    def __init__(self, masks: Mapping[str, torch.Tensor]):
        self.masks = {k: m.bool() for k, m in masks.items()}
        self._handles: list[Any] = []

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.masks[name]

    def nonzero(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def total(self) -> int:
        return int(sum(m.numel() for m in self.masks.values()))

    def sparsity(self) -> float:
        """Fraction of the masked tensors' entries pruned."""
        return 1.0 - self.nonzero() / max(self.total(), 1)

    def per_tensor(self) -> dict[str, float]:
        return {k: 1.0 - float(m.float().mean()) for k, m in self.masks.items()}

    def union(self, other: Masks) -> Masks:
        """Prune what either prunes (masks only grow)."""
        keys = set(self.masks) | set(other.masks)
        return Masks(
            {
                k: self.masks.get(k, torch.ones_like(other.masks.get(k)))
                & other.masks.get(k, torch.ones_like(self.masks.get(k)))
                for k in keys
            }
        )

    @torch.no_grad()
    def apply(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero the pruned weights (and their optimiser state) in place."""
        params = dict(model.named_parameters())
        for k, m in self.masks.items():
            p = params[k]
            p.mul_(m.to(p.device, p.dtype))
            if optimizer is not None and p in optimizer.state:
                for v in optimizer.state[p].values():
                    if torch.is_tensor(v) and v.shape == p.shape:
                        v.mul_(m.to(v.device, v.dtype))

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Enforce the masks through training: masked gradients, re-zeroed after each step."""
        self.detach()
        params = dict(model.named_parameters())
        for k, m in self.masks.items():
            p = params[k]
            keep = m.to(p.device, p.dtype)
            self._handles.append(p.register_hook(lambda g, keep=keep: g * keep))
        self.apply(model, optimizer)
        if optimizer is not None:
            self._handles.append(
                optimizer.register_step_post_hook(lambda opt, a, kw: self.apply(model, opt))
            )

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def tensors(self) -> dict[str, torch.Tensor]:
        """For saving: ``{"mask.<name>": uint8}``."""
        return {f"mask.{k}": m.to(torch.uint8) for k, m in self.masks.items()}


def cubic_schedule(
    step: int, *, start: int, end: int, final: float, initial: float = 0.0, every: int = 1
) -> float:
    """Zhu & Gupta's cubic sparsity at ``step`` (see the module docstring)."""
    if end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if step < start:
        return initial
    if step >= end:
        return final
    t = start + ((step - start) // every) * every
    frac = (t - start) / (end - start)
    return final + (initial - final) * (1.0 - frac) ** 3


def oneshot_schedule(step: int, *, start: int, final: float) -> float:
    return final if step >= start else 0.0


class Pruner:
    """Prune ``model`` along a schedule from any training loop: call ``step(t)`` each step.

    ``schedule="threshold"`` applies the fixed |w| < ``threshold`` rule at
    ``start`` and every ``every`` steps after (the seed's cycle). ``importance``
    (name → score, e.g. :func:`snr_importance`) replaces |w| in the ranking; a
    callable returning such a dict is re-evaluated at each pruning step.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        final: float = 0.9,
        schedule: str = "cubic",
        start: int = 0,
        end: int = 1000,
        every: int = 50,
        scope: str = "global",
        threshold: float | None = None,
        importance: Any = None,
        optimizer: torch.optim.Optimizer | None = None,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if schedule == "threshold" and threshold is None:
            raise ValueError("schedule='threshold' needs a threshold")
        if not 0.0 <= final < 1.0:
            raise ValueError(f"final sparsity must be in [0, 1), got {final}")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        self.model, self.final, self.schedule = model, final, schedule
        self.start, self.end, self.every, self.scope = start, end, max(every, 1), scope
        self.threshold, self.importance = threshold, importance
        self.params = prunable(model)
        self.masks = Masks(
            {k: torch.ones_like(p, dtype=torch.bool) for k, p in self.params.items()}
        )
        self.optimizer = optimizer
        self.current = 0.0

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.masks.attach(self.model, optimizer)

    def target(self, step: int) -> float:
        if self.schedule == "cubic":
            return cubic_schedule(
                step, start=self.start, end=self.end, final=self.final, every=self.every
            )
        return oneshot_schedule(step, start=self.start, final=self.final)

    def _due(self, step: int) -> bool:
        return step >= self.start and (step - self.start) % self.every == 0

    def step(self, step: int) -> bool:
        """Re-prune if ``step`` is a pruning point; returns whether the masks changed."""
        if not self._due(step):
            return False
        if self.schedule == "threshold":
            new = Masks(threshold_masks(self.params, float(self.threshold)))  # type: ignore[arg-type]
        else:
            s = self.target(step)
            if s <= self.current and self.current > 0:
                return False
            scores = self.importance() if callable(self.importance) else self.importance
            new = Masks(magnitude_masks(self.params, s, scope=self.scope, importance=scores))
            self.current = s
        masks = self.masks.union(new)
        changed = masks.nonzero() != self.masks.nonzero()
        self.masks = masks
        self.masks.attach(self.model, self.optimizer)
        return changed


def sparsity_report(model: nn.Module) -> dict[str, Any]:
    """Non-zeros of every prunable tensor of ``model`` (the seed's memory-reduction ratio)."""
    params = prunable(model)
    per = {k: 1.0 - float((p != 0).float().mean()) for k, p in params.items()}
    total = sum(p.numel() for p in params.values())
    nz = sum(int((p != 0).sum()) for p in params.values())
    return {
        "per_tensor": per,
        "nonzero": nz,
        "total": total,
        "sparsity": 1.0 - nz / max(total, 1),
        "reduction": math.inf if nz == 0 else total / nz,
    }
