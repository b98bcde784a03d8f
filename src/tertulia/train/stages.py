"""Staged training: named layer groups that start learning at given steps, each at its own rate.

The seed's third VELORA phase ("descongelar gradualmente … tasas de
aprendizaje reducidas para los expertos") as a trainer feature any model can
use. A model's trainable parameters are split into named
:class:`LayerGroup` s; group g learns from step ``start_g`` on, at
``lr_mult_g`` times the scheduled learning rate:

    lr_g(t) = lr(t) · lr_mult_g      for t ≥ start_g
    frozen                           for t < start_g

The model's own optimiser settings (:mod:`tertulia.train.groups`: a base lr,
``lr_mult``, weight decay, betas, period) hold inside every layer group: a
parameter with its own base rate η_p learns at ``lr(t) · lr_mult_g · η_p / lr``.

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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .groups import Settings, decays


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
    groups: Sequence[LayerGroup],
    weight_decay: float,
    *,
    declared: Mapping[int, Settings] | None = None,
) -> list[dict[str, Any]]:
    """Optimiser groups: per layer group, matrices with decay, the rest without, and one
    group per distinct setting the model declares (``declared``, from
    :func:`~tertulia.train.groups.declared_settings`).

    Each carries ``lr_mult`` (the layer group's multiplier times the parameters' own
    ``lr_mult``; a declared base ``lr`` is kept beside it), ``start`` and
    ``layer_group``; :func:`~tertulia.train.groups.build_optimizer` turns them into the
    optimiser. A parameter may belong to one layer group only.
    """
    declared = declared or {}
    seen: dict[int, str] = {}
    out: list[dict[str, Any]] = []
    for g in groups:
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        special: dict[Settings, list[nn.Parameter]] = {}
        for p in g.params:
            if id(p) in seen:
                raise ValueError(
                    f"a parameter belongs to layer groups {seen[id(p)]!r} and {g.name!r}"
                )
            seen[id(p)] = g.name
            settings = declared.get(id(p))
            if settings:
                special.setdefault(settings, []).append(p)
            else:
                (decay if decays(p) else no_decay).append(p)
        parts: list[tuple[list[nn.Parameter], dict[str, Any]]] = [
            (decay, {"weight_decay": weight_decay}),
            (no_decay, {"weight_decay": 0.0}),
        ]
        parts += [(params, dict(settings)) for settings, params in special.items()]
        for params, settings in parts:
            if params:
                own = settings.pop("lr_mult", 1.0)
                out.append(
                    {
                        "params": params,
                        **settings,
                        "lr_mult": g.lr_mult * own,
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
