"""The main job: recipe → data → models → training → evaluation → run directory.

A run directory holds::

    config.yaml            the resolved recipe
    command.txt            every command line that touched the run
    train_log.jsonl        loss, NLL, residual … per logged step and model
    checkpoint/<model>/    safetensors + JSON, resumable (see train.checkpoint)
    metrics.json           every model's test metrics and curves
    examples.safetensors   one test forecast and one rollout per model, for plots
    report.html, *.png     the report

:func:`run` trains the orchestra and the baselines in the same loop on the same
data, then :func:`evaluate_models` judges them on the test split.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from . import build
from ._io import append_line, atomic_write, atomic_write_json, atomic_write_text, json_safe
from .config import (
    AnyRecipe,
    ContinualRecipe,
    IslandRecipe,
    LMRecipe,
    RecallRecipe,
    Recipe,
    SequenceRecipe,
    SeriesRecipe,
    TrainConfig,
    VeloraRecipe,
    load_resolved,
)
from .data import Trajectories, load_dataset, will_generate
from .data.pde import grid_points
from .errors import ConfigError, DataError, RunDirError
from .robustness import evaluate_adversarial, evaluate_ood, ood_datasets
from .runtime import Runtime, on_cpu
from .train import ForecastTask, Trainer, has_checkpoint, load_checkpoint
from .train.stages import LayerGroup

EventFn = Callable[[str, dict[str, Any]], None]
MODELS = ("orchestra", "mlp", "persistence")


def _noop(event: str, payload: dict[str, Any]) -> None:
    pass


# ------------------------------------------------------------------- run dirs


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file()


def require_run_dir(path: Path) -> AnyRecipe:
    if not path.is_dir():
        raise RunDirError(f"{path} does not exist; give a run directory made by 'tertulia run'")
    if not is_run_dir(path):
        raise RunDirError(f"{path} is not a run directory: it has no config.yaml")
    return load_resolved(path / "config.yaml")


def fresh_run_dir(base: Path) -> Path:
    """``base`` if unused, else ``base-2``, ``base-3`` … (never overwrite a run)."""
    if not base.exists() or not any(base.iterdir()):
        return base
    k = 2
    while Path(f"{base}-{k}").exists():
        k += 1
    return Path(f"{base}-{k}")


# ----------------------------------------------------------------------- data


def check_splits(splits: dict[str, Trajectories], recipe: Recipe) -> None:
    for name in ("train", "val", "test"):
        if name not in splits or len(splits[name]) == 0:
            raise DataError(f"the {name} split is empty; every split needs at least one trajectory")
        frames = splits[name].y.shape[1]
        if frames < recipe.data.window + 2:
            raise DataError(
                f"the {name} split has {frames} frames; data.window={recipe.data.window} "
                f"needs at least {recipe.data.window + 2}"
            )
        grid = splits[name].y.shape[2]
        if grid != recipe.data.grid:
            raise DataError(f"the data has {grid} grid points but data.grid={recipe.data.grid}")
        if grid % recipe.model.cells:
            raise DataError(
                f"{grid} grid points do not split into model.cells={recipe.model.cells} patches"
            )


def data_scale(splits: dict[str, Trajectories]) -> float:
    """Standard deviation of the training observations (models work in these units)."""
    y = torch.as_tensor(splits["train"].y, dtype=torch.float64, device="cpu")
    return float(y.std().clamp_min(1e-8))


def persistence_sigma(splits: dict[str, Trajectories]) -> float:
    """RMS of one-step changes of the training observations."""
    y = torch.as_tensor(splits["train"].y, dtype=torch.float64, device="cpu")
    return float((y[:, 1:] - y[:, :-1]).pow(2).mean().sqrt().clamp_min(1e-8))


def build_trainable_models(recipe: Recipe, *, scale: float = 1.0) -> dict[str, nn.Module]:
    """The orchestra and (if enabled) the same-size MLP, seeded from the recipe; built on
    the CPU (the same weights on every device: the tasks move them)."""
    with on_cpu():
        return _build_trainable_models(recipe, scale)


def _build_trainable_models(recipe: Recipe, scale: float) -> dict[str, nn.Module]:
    torch.manual_seed(recipe.seed)
    models: dict[str, nn.Module] = {"orchestra": build.build_orchestra(recipe, scale=scale)}
    if recipe.baselines.mlp:
        torch.manual_seed(recipe.seed + 1)
        params = build.count_parameters(models["orchestra"])
        models["mlp"] = build.build_mlp(recipe, params=params, scale=scale)
    b = recipe.baselines
    for i, kind in enumerate(dict.fromkeys(b.ssm)):
        torch.manual_seed(recipe.seed + 3 + i)
        models[kind] = build.build_ssm(recipe, kind, scale=scale)
    other = comparison_cell(recipe)
    if other is not None:
        torch.manual_seed(recipe.seed + 2)
        twin = recipe.model_copy(update={"model": recipe.model.model_copy(update={"cell": other})})
        models[f"orchestra_{other}"] = build.build_orchestra(twin, scale=scale)
    return models


def comparison_cell(recipe: Recipe) -> str | None:
    """The cell kind of the comparison orchestra (``baselines.cell``), or None."""
    choice = recipe.baselines.cell
    if choice == "auto":
        return "trm" if recipe.model.cell != "trm" else None
    if choice == "none" or choice == recipe.model.cell:
        return None
    return choice


def build_models(recipe: Recipe, splits: dict[str, Trajectories]) -> dict[str, nn.Module]:
    """Every model of the run, deterministically initialised from the recipe seed."""
    models = build_trainable_models(recipe, scale=data_scale(splits))
    if recipe.baselines.persistence:
        with on_cpu():
            models["persistence"] = build.build_persistence(sigma=persistence_sigma(splits))
    return models


def make_task(recipe: Recipe, model: nn.Module, splits: dict[str, Trajectories]) -> ForecastTask:
    """The forecasting task of ``model``, on the device of ``recipe.runtime``."""
    return ForecastTask(
        model,
        splits,
        window=recipe.data.window,
        train=recipe.train,
        cells=recipe.model.cells,
        runtime=Runtime.of(recipe),
    )


# ------------------------------------------------------------------------ run


def open_run(
    recipe: Any,
    out: Path,
    *,
    resume: bool,
    command: str,
    on_event: EventFn,
    data: dict[str, Any],
) -> Runtime:
    """Set ``train.threads``, announce the loaded data (``data`` event) and create the run
    directory with its ``config.yaml`` (not on resume) and ``command.txt`` line. Jobs call
    it once their data has loaded, so bad data never leaves a half-made directory.
    Returns the recipe's runtime (device and precision), resolved before anything is
    written: a device this machine lacks fails first."""
    runtime = Runtime.of(recipe)
    threads = getattr(getattr(recipe, "train", None), "threads", None)
    if threads:
        torch.set_num_threads(threads)
    on_event("data", {**data, "out": str(out)})
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        atomic_write_text(out / "config.yaml", recipe.to_yaml())
    if command:
        append_line(out / "command.txt", command)
    return runtime


def close_run(out: Path, results: dict[str, Any], on_event: EventFn) -> dict[str, Any]:
    """Write ``metrics.json`` (atomically) and the report; return ``results``."""
    on_event("evaluate", {"models": list(results.get("models", {}))})
    atomic_write_json(out / "metrics.json", json_safe(results))
    on_event("report", {})
    from .report import build_report

    build_report(out)
    return results


TRAIN_KEYS = ("steps", "skipped_steps", "seconds", "resumed_from")


def fit_model(
    task: Any,
    train: TrainConfig,
    *,
    name: str,
    seed: int,
    out: Path,
    recipe_name: str,
    on_event: EventFn,
) -> dict[str, Any]:
    """:func:`fit_in_run` plus the ``train_end`` event; the summary's usual keys."""
    summary = fit_in_run(
        task, train, name=name, seed=seed, out=out, recipe_name=recipe_name, on_event=on_event
    )
    result = {k: summary[k] for k in TRAIN_KEYS}
    on_event("train_end", {"model": name, **result})
    return result


def fit_in_run(
    task: Any,
    train: TrainConfig,
    *,
    name: str,
    seed: int,
    out: Path,
    recipe_name: str,
    on_event: EventFn = _noop,
    validate: Callable[[], float] | None = None,
    layer_groups: Sequence[LayerGroup] | None = None,
    keep_best: bool = False,
) -> dict[str, Any]:
    """Train ``task.model`` into the run directory ``out`` (resumable); load its final weights.

    The final weights are the EMA ones, or with ``keep_best`` the best-validating
    ones (``validate``, lower is better; default ``task.validation_nll``).
    ``layer_groups`` stages the parameters (:mod:`tertulia.train.stages`).
    Returns the training summary: steps, skipped steps, seconds, the step it
    resumed from, the trainer's running statistics and, with ``keep_best``, the
    best step and score.
    """
    trainer = Trainer(
        task,
        train,
        name=name,
        seed=seed,
        checkpoint_dir=out / "checkpoint" / name,
        log_path=out / "train_log.jsonl",
        validate=validate if validate is not None else task.validation_nll,
        on_step=lambda step, total, logs: on_event(
            "step", {"model": name, "step": step, "total": total, "logs": logs}
        ),
        meta={"recipe": recipe_name},
        layer_groups=layer_groups,
        keep_best=keep_best,
    )
    on_event("train_start", {"model": name, "total": train.steps})
    summary = trainer.fit()
    result: dict[str, Any] = {
        "steps": summary.steps,
        "skipped_steps": summary.skipped_steps,
        "seconds": round(summary.seconds, 3),
        "resumed_from": summary.resumed_from,
        **summary.stats,
    }
    if keep_best:
        result["best_step"] = trainer.load_best_into_model()
        result["best_validation"] = trainer.best if math.isfinite(trainer.best) else None
    else:
        trainer.load_ema_into_model()
    return result


def run(
    recipe: AnyRecipe,
    out: Path,
    *,
    resume: bool = False,
    command: str = "",
    on_event: EventFn = _noop,
    phase: str = "all",
) -> dict[str, Any]:
    """Train every model of ``recipe`` into ``out`` (resuming if asked) and evaluate.

    ``phase`` (``experts``, ``router``, ``finetune`` or ``all``) applies to staged
    recipes (``task: velora``) only.

    Classical recipes (``task: island`` or ``task: series``) have nothing to
    train or resume: they are fitted in seconds by :mod:`tertulia.classical`.
    """
    if isinstance(recipe, VeloraRecipe):
        from .velora import run_velora

        return run_velora(
            recipe, out, phase=phase, resume=resume, command=command, on_event=on_event
        )
    if phase != "all":
        raise ConfigError(
            f"--phase {phase} applies to staged recipes (task: velora); "
            f"recipe {recipe.name!r} has a single phase"
        )
    if isinstance(recipe, (IslandRecipe, SeriesRecipe)):
        from .classical import run_classical

        return run_classical(recipe, out, command=command, on_event=on_event)
    if isinstance(recipe, SequenceRecipe):
        from .sequence import run_sequence

        return run_sequence(recipe, out, resume=resume, command=command, on_event=on_event)
    if isinstance(recipe, ContinualRecipe):
        from .continual import run_continual

        return run_continual(recipe, out, resume=resume, command=command, on_event=on_event)
    if isinstance(recipe, LMRecipe):
        from .lm import run_lm

        return run_lm(recipe, out, resume=resume, command=command, on_event=on_event)
    if isinstance(recipe, RecallRecipe):
        from .recall import run_recall

        return run_recall(recipe, out, resume=resume, command=command, on_event=on_event)
    # Data first: a bad data set must not leave a half-made run directory behind.
    Runtime.of(recipe)  # and neither must a device this machine lacks
    started = time.perf_counter()
    if will_generate(recipe.data):
        d = recipe.data
        on_event("data_generate", {"equation": d.equation, "count": d.n_train + d.n_val + d.n_test})
    splits = load_dataset(recipe.data)
    check_splits(splits, recipe)
    open_run(
        recipe,
        out,
        resume=resume,
        command=command,
        on_event=on_event,
        data={
            "source": recipe.data.path or recipe.data.equation,
            "sizes": {k: len(v) for k, v in splits.items()},
            "seconds": time.perf_counter() - started,
        },
    )
    models = build_models(recipe, splits)

    summaries: dict[str, dict[str, Any]] = {}
    for index, (name, model) in enumerate(models.items()):
        if build.count_parameters(model) == 0:
            continue
        task = make_task(recipe, model, splits)
        torch.manual_seed(recipe.seed + 100 + index)
        summaries[name] = fit_in_run(
            task,
            recipe.train,
            name=name,
            seed=recipe.seed + 1000 + index,
            out=out,
            recipe_name=recipe.name,
            on_event=on_event,
        )
        if name == "orchestra":
            summaries[name]["mode"] = recipe.train.mode
            if recipe.train.mode == "deq":
                summaries[name]["backward"] = recipe.train.deq.backward
        on_event("train_end", {"model": name, **summaries[name]})

    return evaluate_and_write(recipe, models, splits, out, summaries, on_event=on_event)


def evaluate_and_write(
    recipe: Recipe,
    models: dict[str, nn.Module],
    splits: dict[str, Trajectories],
    out: Path,
    summaries: dict[str, dict[str, Any]],
    *,
    on_event: EventFn = _noop,
) -> dict[str, Any]:
    on_event("evaluate", {"models": list(models)})
    started = time.perf_counter()
    metrics, examples = evaluate_models(recipe, models, splits)
    metrics["train"] = summaries
    metrics["runtime"] = Runtime.of(recipe).describe()
    robustness = evaluate_robustness(recipe, models, splits, on_event=on_event)
    if robustness:
        metrics["robustness"] = robustness
    metrics["eval_seconds"] = round(time.perf_counter() - started, 3)
    atomic_write(out / "examples.safetensors", lambda tmp: save_file(examples, tmp))
    atomic_write_json(out / "metrics.json", json_safe(metrics))
    on_event("report", {})
    from .report import build_report  # matplotlib is imported only when a report is made

    build_report(out)
    return metrics


def evaluate_robustness(
    recipe: Recipe,
    models: dict[str, nn.Module],
    splits: dict[str, Trajectories],
    *,
    on_event: EventFn = _noop,
) -> dict[str, Any]:
    """OOD sets and adversarial attacks (seed §12.4) for every model, as configured."""
    ev, out = recipe.eval, {}
    runtime = Runtime.of(recipe)
    if ev.ood.enabled:
        sets = ood_datasets(recipe.data, ev.ood)
        if sets or sets.skipped:
            on_event("robustness", {"what": "ood", "conditions": list(sets)})
            out["ood"] = {
                name: evaluate_ood(
                    model,
                    splits["test"],
                    sets,
                    window=recipe.data.window,
                    batch_size=ev.batch_size,
                    runtime=runtime,
                )
                for name, model in models.items()
            }
    if ev.adversarial.enabled:
        on_event("robustness", {"what": "adversarial", "eps": ev.adversarial.eps})
        out["adversarial"] = {
            name: evaluate_adversarial(
                model,
                splits["test"],
                ev.adversarial,
                window=recipe.data.window,
                batch_size=ev.batch_size,
                seed=recipe.seed,
                runtime=runtime,
            )
            for name, model in models.items()
        }
    return out


# ------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate_models(
    recipe: Recipe, models: dict[str, nn.Module], splits: dict[str, Trajectories]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Test metrics (the metrics.json contract) and example arrays for the plots."""
    results: dict[str, Any] = {
        "recipe": recipe.name,
        "description": recipe.description,
        "params": {n: build.count_parameters(m) for n, m in models.items()},
        "models": {},
        "curves": {"rollout_nrmse": {}, "calibration": {}, "cells": recipe.model.cells},
        "data": {
            "equation": recipe.data.equation,
            "grid": recipe.data.grid,
            "nu": recipe.data.nu,
            "dt": recipe.data.dt,
            "window": recipe.data.window,
            "n_train": len(splits["train"]),
            "n_test": len(splits["test"]),
            "noise": recipe.data.noise.model_dump(),
        },
    }
    test = splits["test"]
    t_ex = recipe.data.window - 1 + (test.y.shape[1] - recipe.data.window) // 2
    window = torch.as_tensor(
        test.y[:1, t_ex - recipe.data.window + 1 : t_ex + 1], dtype=torch.float32, device="cpu"
    )
    examples: dict[str, torch.Tensor] = {
        "x": torch.as_tensor(grid_points(recipe.data.grid), dtype=torch.float32, device="cpu"),
        "input_last": window[0, -1].clone(),
        "truth": torch.as_tensor(test.u[0, t_ex + 1], dtype=torch.float32, device="cpu"),
        "obs": torch.as_tensor(test.y[0, t_ex + 1], dtype=torch.float32, device="cpu"),
    }
    for name, model in models.items():
        model.eval()
        task = make_task(recipe, model, splits)
        ev = task.evaluate("test", recipe.eval)
        results["models"][name] = ev["metrics"]
        curves = ev["curves"]
        results["curves"]["rollout_nrmse"][name] = curves["rollout_nrmse"]
        results["curves"]["calibration"]["levels"] = curves["calibration_levels"]
        results["curves"]["calibration"][name] = curves["calibration"]
        if name == "orchestra":  # the comparison orchestra's solver curves are not plotted
            if "residual_per_round" in curves:
                results["curves"]["residual_per_round"] = curves["residual_per_round"]
                results["curves"]["attention"] = curves["attention"]
            for key in ("rho", "iterations"):
                if key in curves:
                    results["curves"][key] = curves[key]
        pred = task.forward(window)
        examples[f"{name}.mean"] = pred.mean[0].cpu().contiguous()
        examples[f"{name}.std"] = pred.std[0].cpu().contiguous()
        examples[f"{name}.rollout_mean"] = ev["rollout"]["mean"][0].float().contiguous()
        examples["rollout.truth"] = ev["rollout"]["truth"][0].float().contiguous()
    return results, examples


@dataclass
class LoadedRun:
    """A finished (or interrupted) run: its recipe and its trained models."""

    path: Path
    recipe: Recipe
    models: dict[str, nn.Module]  # trained models with their EMA weights, in eval mode
    summaries: dict[str, dict[str, Any]]  # steps, skipped steps, seconds per model


def load_run(run_dir: str | Path, *, device: str | None = None) -> LoadedRun:
    """Rebuild a run's trained models from its checkpoints (no data needed), on the run's
    ``runtime.device`` or on ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``).

    >>> run = load_run("runs/burgers")                       # doctest: +SKIP
    >>> pred = run.models["orchestra"](past_frames)          # (B, w, G) -> Prediction
    """
    run_dir = Path(run_dir)
    recipe = require_run_dir(run_dir).with_runtime(device)
    if isinstance(recipe, SequenceRecipe):
        raise RunDirError(
            f"{run_dir} is a sequence run: load its models with "
            "tertulia.sequence.build_sequence_model and its checkpoint/ folders"
        )
    if isinstance(recipe, ContinualRecipe):
        raise RunDirError(
            f"{run_dir} is a continual run: it keeps no checkpoints (its results are in "
            f"metrics.json); rerun it with 'tertulia run {recipe.name}'"
        )
    if not isinstance(recipe, Recipe):
        raise RunDirError(
            f"{run_dir} is a {recipe.task} run of recipe {recipe.name!r}: it has no trained "
            "models to load (its fitted parameters are in metrics.json)"
        )
    models = build_trainable_models(recipe)  # the data scale comes back with the weights
    runtime = Runtime.of(recipe)
    summaries: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        folder = run_dir / "checkpoint" / name
        if not has_checkpoint(folder):
            raise RunDirError(
                f"{run_dir} has no checkpoint for {name}; finish it with "
                f"'tertulia run {recipe.name} --resume {run_dir}'"
            )
        groups, meta = load_checkpoint(folder)
        model.load_state_dict(groups.get("ema", groups["model"]))
        runtime.place(model).eval()
        summaries[name] = {
            "steps": meta["step"],
            "skipped_steps": meta.get("skipped_steps", 0),
            "seconds": meta.get("seconds", 0.0),
        }
    return LoadedRun(path=run_dir, recipe=recipe, models=models, summaries=summaries)


def evaluate_run(
    run_dir: Path, *, device: str | None = None, on_event: EventFn = _noop
) -> dict[str, Any]:
    """Re-evaluate a run's checkpoints (EMA weights) and rewrite metrics.json and the report,
    on the run's ``runtime.device`` or on ``device``.

    A classical run (island, series) is simply fitted again in place.
    """
    recipe = require_run_dir(Path(run_dir)).with_runtime(device)
    if isinstance(recipe, VeloraRecipe):  # finished phases only re-judge
        from .velora import run_velora

        return run_velora(recipe, Path(run_dir), resume=True, on_event=on_event)
    if isinstance(recipe, (IslandRecipe, SeriesRecipe)):
        from .classical import run_classical

        return run_classical(recipe, Path(run_dir), on_event=on_event)
    if isinstance(recipe, SequenceRecipe):  # resuming a finished run only re-scores it
        from .sequence import run_sequence

        return run_sequence(recipe, Path(run_dir), resume=True, on_event=on_event)
    run = load_run(run_dir, device=device)
    splits = load_dataset(run.recipe.data)
    check_splits(splits, run.recipe)
    models = dict(run.models)
    if run.recipe.baselines.persistence:
        with on_cpu():
            models["persistence"] = build.build_persistence(sigma=persistence_sigma(splits))
    return evaluate_and_write(
        run.recipe, models, splits, run.path, run.summaries, on_event=on_event
    )
