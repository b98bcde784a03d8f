"""Staged training: named layer groups that start learning at given steps, each at its own rate.

The seed's third VELORA phase ("descongelar gradualmente … tasas de
aprendizaje reducidas para los expertos") as a trainer feature any model can
use. A model's trainable parameters are split into named
:class:`LayerGroup` s; group g learns from step ``start_g`` on, at
``lr_mult_g`` times the scheduled learning rate:

    lr_g(t) = lr(t) · lr_mult_g      for t ≥ start_g
    frozen                           for t < start_g

Frozen means the group's gradients are dropped before the optimiser step
(``grad = None``), so AdamW neither moves the weights nor decays them nor
touches their moments: a group is bit-identical until it starts, and its Adam
moments start from zero when it does. The schedule is a pure function of the
step, hence resumable.

:func:`freeze` / :func:`unfreeze` set ``requires_grad`` for whole modules (the
second phase trains the router with the experts frozen: no gradient is even
computed through them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class LayerGroup:
    """Parameters that unfreeze together, at ``start``, learning at ``lr_mult`` × lr."""

    name: str
    params: list[nn.Parameter] = field(repr=False)
    lr_mult: float = 1.0
    start: int = 0

    def __post_init__(self) -> None:
        if self.lr_mult < 0:
            raise ValueError(f"layer group {self.name!r}: lr_mult must be >= 0, got {self.lr_mult}")
        if self.start < 0:
            raise ValueError(f"layer group {self.name!r}: start must be >= 0, got {self.start}")


def staged_parameter_groups(
    groups: Sequence[LayerGroup], weight_decay: float
) -> list[dict[str, Any]]:
    """Optimiser groups: per layer group, matrices with decay and the rest without.

    Each carries ``lr_scale`` (its multiplier), ``start`` and ``layer_group``.
    A parameter may belong to one layer group only.
    """
    seen: dict[int, str] = {}
    out: list[dict[str, Any]] = []
    for g in groups:
        decay, no_decay = [], []
        for p in g.params:
            if id(p) in seen:
                raise ValueError(
                    f"a parameter belongs to layer groups {seen[id(p)]!r} and {g.name!r}"
                )
            seen[id(p)] = g.name
            (decay if p.ndim >= 2 and p.shape[-1] > 1 else no_decay).append(p)
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if params:
                out.append(
                    {
                        "params": params,
                        "weight_decay": wd,
                        "lr_scale": g.lr_mult,
                        "start": g.start,
                        "layer_group": g.name,
                    }
                )
    return out


def drop_frozen_grads(optimizer: torch.optim.Optimizer, step: int) -> list[str]:
    """Clear the gradients of groups whose ``start`` is after ``step``; return the live names."""
    live = []
    for group in optimizer.param_groups:
        if group.get("start", 0) > step:
            for p in group["params"]:
                p.grad = None
        elif "layer_group" in group and group["layer_group"] not in live:
            live.append(group["layer_group"])
    return live


def freeze(modules: Iterable[nn.Module]) -> None:
    """``requires_grad = False`` on every parameter of ``modules``."""
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)


def unfreeze(modules: Iterable[nn.Module]) -> None:
    """``requires_grad = True`` on every parameter of ``modules``."""
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(True)
