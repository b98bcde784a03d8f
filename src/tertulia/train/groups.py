"""The optimiser of a model, from the parameter groups its modules declare.

A module whose parameters need other optimiser settings than the default says so
itself, nanoGPT's ``configure_optimizers`` style, with a method

    def optim_groups(self) -> list[dict]:      # [{"params": [...], "weight_decay": 0.0}, …]

returning groups of *its own* parameters (those of its subtree) with any of

    lr            a base learning rate that follows the schedule like ``train.lr``
                  (the group learns at lr(t) · lr / train.lr)
    lr_mult       a multiplier of the scheduled rate (lr(t) · lr_mult); not with ``lr``
    weight_decay  the group's decay (unset: the optimiser's default)
    betas         Adam's (β₁, β₂) (ignored by DMGD)
    period        C ≥ 1: the group steps every C steps on its chunk's mean gradient
                  (:class:`tertulia.optim.MultiFrequency`)

:func:`declared_settings` walks every submodule, so a composite model (an SSM cell
bank inside an orchestra, the math expert inside VELORA, HOPE levels inside an LM)
needs no code of its own: each part declares what it knows. A parameter declared by
two modules with different settings is an error. Undeclared parameters follow the
default rule: weight decay on matrices only; biases, norms and 1-D parameters exempt.

Parameters with equal settings share one optimiser group; groups are ordered
decay, no-decay, then declared settings by their first parameter in
``model.parameters()`` order, and parameters keep that order inside each group
(the layout of the optimiser's state, so checkpoints resume).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..config import TrainConfig
from ..optim import DMGD, MultiFrequency

Settings = tuple[tuple[str, Any], ...]  # sorted (key, value) pairs: hashable, comparable
OPTIM_SETTINGS = ("lr", "lr_mult", "weight_decay", "betas", "period")


@runtime_checkable
class DeclaresOptimGroups(Protocol):
    """A module that declares optimiser settings for some of its parameters."""

    def optim_groups(self) -> list[dict[str, Any]]:
        """Groups ``{"params": [...], <setting>: value, …}`` of this module's parameters."""
        ...


def _settings(group: Mapping[str, Any], where: str) -> Settings:
    """The group's settings as sorted pairs; ValueError for an unknown or invalid one."""
    if "params" not in group:
        raise ValueError(f"{where}.optim_groups(): every group needs 'params'")
    unknown = sorted(set(group) - {"params", *OPTIM_SETTINGS})
    if unknown:
        raise ValueError(
            f"{where}.optim_groups(): unknown setting {unknown[0]!r}; "
            f"allowed: {', '.join(OPTIM_SETTINGS)}"
        )
    if "lr" in group and "lr_mult" in group:
        raise ValueError(f"{where}.optim_groups(): give lr or lr_mult, not both")
    period = group.get("period", 1)
    if isinstance(period, bool) or not isinstance(period, int) or period < 1:
        raise ValueError(f"{where}.optim_groups(): period must be an integer >= 1, got {period!r}")
    pairs = []
    for key in sorted(set(group) - {"params"}):
        value = group[key]
        pairs.append((key, tuple(value) if key == "betas" else value))
    return tuple(pairs)


def declared_settings(model: nn.Module) -> dict[int, Settings]:
    """``id(parameter)`` → the settings some submodule of ``model`` declares for it.

    Raises:
        ValueError: a group with an unknown setting, or a parameter declared twice with
            different settings.
    """
    found: dict[int, tuple[Settings, str]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, DeclaresOptimGroups):
            continue
        where = f"{type(module).__name__} {name!r}" if name else type(module).__name__
        for group in module.optim_groups():
            settings = _settings(group, where)
            if not settings:
                continue  # no setting: the default rule applies
            for p in group["params"]:
                previous = found.get(id(p))
                if previous is not None and previous[0] != settings:
                    raise ValueError(
                        f"a parameter of shape {tuple(p.shape)} has optimiser settings "
                        f"{dict(previous[0])} from {previous[1]} and {dict(settings)} from {where}"
                    )
                found[id(p)] = (settings, where)
    return {key: settings for key, (settings, _) in found.items()}


def decays(p: torch.Tensor) -> bool:
    """The default rule: matrices (ndim ≥ 2, last axis > 1) decay; the rest does not."""
    return p.ndim >= 2 and p.shape[-1] > 1


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimiser groups of ``model``'s trainable parameters (see the module docstring).

    The first two groups (decay, no decay) are always present, possibly empty; then one
    group per distinct declared settings.
    """
    declared = declared_settings(model)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    special: dict[Settings, list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        settings = declared.get(id(p))
        if settings:
            special.setdefault(settings, []).append(p)
        else:
            (decay if decays(p) else no_decay).append(p)
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    for settings, params in special.items():
        groups.append({"params": params, **dict(settings)})
    return groups


def build_optimizer(groups: Sequence[Mapping[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser of ``train.optimizer`` (AdamW or DMGD) over ``groups``.

    Every group gets ``lr_scale``, its rate over ``train.lr`` (the trainer sets
    ``lr = lr(t) · lr_scale`` each step): ``lr / train.lr`` for a group with its own
    base ``lr``, its ``lr_mult``, or 1. Settings a group leaves out take the
    optimiser's defaults. When some group has ``period`` > 1 the optimiser is wrapped
    in :class:`~tertulia.optim.MultiFrequency`.
    """
    prepared = []
    for group in groups:
        group = dict(group)
        mult = group.pop("lr_mult", None)
        if mult is not None:
            group["lr"] = group.get("lr", cfg.lr) * mult
        prepared.append(group)
    o = cfg.optimizer
    optimizer: torch.optim.Optimizer
    if o.kind == "dmgd":
        optimizer = DMGD(
            prepared,
            lr=cfg.lr,
            momentum=o.momentum,
            memory=o.memory,
            hidden=o.hidden,
            inner_lr=o.inner_lr,
            newton_schulz=o.newton_schulz,
        )
    else:
        optimizer = torch.optim.AdamW(prepared, lr=cfg.lr)
    for group in optimizer.param_groups:  # a group's own base rate keeps its ratio to train.lr
        group["lr_scale"] = group["lr"] / cfg.lr
    if any(g.get("period", 1) > 1 for g in optimizer.param_groups):
        optimizer = MultiFrequency(optimizer)  # continuum memory: period-C groups step every C
    return optimizer
