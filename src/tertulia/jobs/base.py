"""What every job offers the registry: the :class:`Job` record, and :class:`LoadedRun`.

A job turns one kind of recipe (its ``task``) into a run directory. The record
holds the job's entry points, so the commands (``run``, ``eval``, ``compress``,
``report``) and :func:`tertulia.load_run` ask the registry once instead of
testing the recipe's type::

    run(recipe, out, *, resume, command, on_event, phase) -> metrics
    evaluate(recipe, run_dir, *, on_event) -> metrics       re-judge, rewrite metrics.json
    load(recipe, run_dir) -> LoadedRun                      trained models, no data needed
    targets(recipe, run_dir) -> list[Target]                what compress can prune
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..compress.targets import Target


@dataclass
class LoadedRun:
    """A finished (or interrupted) run: its recipe and its trained models."""

    path: Path
    recipe: Any
    models: dict[str, nn.Module]  # trained models with their final weights, in eval mode
    summaries: dict[str, dict[str, Any]]  # steps, skipped steps, seconds per model
    # the shape of one float input item, batch axis excluded ((window, grid) for fields,
    # (steps, channels) for sequences); None where the models take tokens
    input_shape: tuple[int, ...] | None = None


RunFn = Callable[..., dict[str, Any]]  # (recipe, out, *, resume, command, on_event, phase)
EvaluateFn = Callable[..., dict[str, Any]]  # (recipe, run_dir, *, on_event)
LoadFn = Callable[[Any, Path], LoadedRun]
TargetsFn = Callable[[Any, Path], list[Target]]


@dataclass(frozen=True)
class Job:
    """One job: the recipe tasks it runs and its entry points (None: the job has none)."""

    tasks: tuple[str, ...]  # the recipes' ``task`` values this job runs
    run: RunFn
    evaluate: EvaluateFn | None = None
    load: LoadFn | None = None
    targets: TargetsFn | None = None
    phases: tuple[str, ...] = ()  # staged jobs: the names --phase takes (besides 'all')
    # --data-dir DIR as --set assignments (None: the job reads no data folder)
    data_dir: Callable[[Path], list[str]] | None = None
    # the names of the models a recipe's run judges (metrics.json's ``models`` keys)
    model_names: Callable[[Any], list[str]] | None = None
    # the keys of each model's row in metrics.json that a sweep may rank by
    metric_keys: tuple[str, ...] = ()
    higher_is_better: frozenset[str] = frozenset()  # the others: lower is better
    # the main metric: (model, key); model None means the recipe's first model
    main_metric: tuple[str | None, str] | None = None
    # why a run of this job has nothing to load or evaluate (when load/evaluate is None)
    nothing_to_load: str = ""
