"""What ``tertulia compress`` can prune: the trained models of any run, with their task.

A :class:`Target` bundles one trained model with what fine-tuning and judging
it needs, so the compression loop (:mod:`tertulia.compress.job`) never looks
at the kind of run:

============  ===================================  ==========================
run (task)    models                               main metric (test split)
============  ===================================  ==========================
forecast      orchestra, MLP, SSM forecasters,     one-step nRMSE (lower)
              comparison orchestras
sequence      the S4D / HiPPO / Mamba stacks, MLP  accuracy (higher)
velora        the whole system (experts, router,   mixed score (higher)
              fusion) after its last phase
============  ===================================  ==========================

Each model starts from the weights its run evaluates (EMA for forecasting and
sequence runs, the best-validating ones for VELORA) and is fine-tuned with its
run's own training task and configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..config import Recipe, SequenceRecipe, TrainConfig, VeloraRecipe
from ..errors import RunDirError
from ..train.checkpoint import has_checkpoint, load_checkpoint


@dataclass
class Target:
    """One trained model of a run and how to fine-tune and judge it."""

    name: str
    model: nn.Module
    make_task: Callable[[nn.Module], Any]  # a trainer Task around a (copied) model
    judge: Callable[[nn.Module], dict[str, Any]]  # test metrics of a model
    metric: str  # the key of judge()'s main metric
    higher_is_better: bool
    train: TrainConfig  # the run's training configuration of this model
    seed: int


def run_targets(run_dir: Path, *, device: str | None = None) -> tuple[Any, list[Target]]:
    """The recipe of ``run_dir`` and a :class:`Target` per trained model (RunDirError if none),
    on the run's ``runtime.device`` or on ``device``."""
    from ..pipeline import require_run_dir

    recipe = require_run_dir(run_dir).with_runtime(device)
    if isinstance(recipe, Recipe):
        return recipe, _forecast_targets(run_dir, device)
    if isinstance(recipe, SequenceRecipe):
        return recipe, _sequence_targets(run_dir, recipe)
    if isinstance(recipe, VeloraRecipe):
        return recipe, _velora_targets(run_dir, recipe)
    raise RunDirError(
        f"{run_dir} is a {recipe.task} run: it has no trained network to compress "
        "(runs of tasks forecast, sequence and velora have)"
    )


def _forecast_targets(run_dir: Path, device: str | None) -> list[Target]:
    from ..data import load_dataset
    from ..pipeline import load_run, make_task

    loaded = load_run(run_dir, device=device)
    recipe = loaded.recipe
    splits = load_dataset(recipe.data)

    def judge(model: nn.Module) -> dict[str, Any]:
        return make_task(recipe, model, splits).evaluate("test", recipe.eval)["metrics"]

    return [
        Target(
            name=name,
            model=model,
            make_task=lambda m: make_task(recipe, m, splits),
            judge=judge,
            metric="nrmse_1step",
            higher_is_better=False,
            train=recipe.train,
            seed=recipe.seed,
        )
        for name, model in loaded.models.items()
    ]


def _ema_weights(folder: Path, run_dir: Path, name: str, hint: str) -> dict[str, Any]:
    if not has_checkpoint(folder):
        raise RunDirError(f"{run_dir} has no checkpoint for {name}; {hint}")
    groups, _ = load_checkpoint(folder)
    return groups.get("ema", groups["model"])


def sequence_target(
    name: str, model: nn.Module, splits: dict[str, Any], recipe: SequenceRecipe, index: int
) -> Target:
    """A sequence classifier of a run (its ``index``-th model) as a :class:`Target`."""
    from ..runtime import Runtime
    from ..train.tasks import ClassifyTask

    batch, runtime = recipe.train.batch_size, Runtime.of(recipe)
    return Target(
        name=name,
        model=model,
        make_task=lambda m: ClassifyTask(m, splits, batch_size=batch, runtime=runtime),
        judge=lambda m: ClassifyTask(m, splits, batch_size=batch, runtime=runtime).scores("test"),
        metric="accuracy",
        higher_is_better=True,
        train=recipe.train,
        seed=recipe.seed + 1000 + index,
    )


def _sequence_targets(run_dir: Path, recipe: SequenceRecipe) -> list[Target]:
    from ..sequence import build_sequence_model, load_splits, model_inits

    splits = load_splits(recipe)
    train = splits["train"]
    d_in, classes = int(train.x.shape[-1]), train.classes
    targets = []
    for index, (name, init) in enumerate(model_inits(recipe).items()):
        model = build_sequence_model(recipe, d_in, classes, init, steps=int(train.x.shape[1]))
        hint = f"finish it with 'tertulia run {recipe.name} --resume {run_dir}'"
        model.load_state_dict(_ema_weights(run_dir / "checkpoint" / name, run_dir, name, hint))
        model.eval()
        targets.append(sequence_target(name, model, splits, recipe, index))
    return targets


def _velora_targets(run_dir: Path, recipe: VeloraRecipe) -> list[Target]:
    from ..runtime import Runtime, on_cpu
    from ..velora import (
        SystemTask,
        build_experts,
        build_velora,
        encode_data,
        judge_system,
        load_data,
    )

    phase = next(
        (p for p in ("finetune", "router") if has_checkpoint(run_dir / "checkpoint" / p / "best")),
        None,
    )
    if phase is None:
        raise RunDirError(
            f"{run_dir} has no trained VELORA system yet; run its phases first "
            f"('tertulia run {recipe.name} --out {run_dir}')"
        )
    runtime = Runtime.of(recipe)
    with on_cpu():
        enc = encode_data(load_data(recipe), recipe)
    enc = runtime.to(enc)
    model = build_velora(recipe, *build_experts(recipe))
    groups, _ = load_checkpoint(run_dir / "checkpoint" / phase / "best")
    model.load_state_dict(groups["model"])
    model.eval()
    cfg = recipe.finetune.train if phase == "finetune" else recipe.phase2
    return [
        Target(
            name="velora",
            model=model,
            make_task=lambda m: SystemTask(m, enc, recipe, cfg.batch_size, runtime),
            judge=lambda m: judge_system(m, enc.mixed["test"], runtime),
            metric="mixed_score",
            higher_is_better=True,
            train=cfg,
            seed=recipe.seed + 3000,
        )
    ]
