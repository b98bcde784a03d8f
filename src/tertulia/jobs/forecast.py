"""The forecasting job: recipe → data → orchestra + baselines → training → judging.

:func:`run_forecast` trains the orchestra and the baselines in the same loop on the
same data, then :func:`evaluate_models` judges them on the test split (point,
probabilistic and rollout metrics, robustness). The run directory's files are
described in :mod:`tertulia.runs`; this job also writes ``examples.safetensors``
(one test forecast and one rollout per model, for the plots).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import build
from ..compress.targets import Target
from ..config import Recipe
from ..data import Trajectories, load_dataset, will_generate
from ..data.pde import grid_points
from ..errors import DataError
from ..robustness import evaluate_adversarial, evaluate_ood, ood_datasets
from ..runs import Event, EventFn, close_run, fit_in_run, load_trained, no_event, open_run
from ..runtime import Runtime, on_cpu
from ..train import ForecastTask
from .base import Job, LoadedRun

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
        # data.grid itself splits into model.cells patches: the recipe checks it (tertulia.layout)
        if grid != recipe.data.grid:
            raise DataError(f"the data has {grid} grid points but data.grid={recipe.data.grid}")


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


def make_task(
    recipe: Recipe,
    model: nn.Module,
    splits: dict[str, Trajectories],
    runtime: Runtime | None = None,
) -> ForecastTask:
    """The forecasting task of ``model``, on the device of ``recipe.runtime``."""
    return ForecastTask(
        model,
        splits,
        window=recipe.data.window,
        train=recipe.train,
        cells=recipe.model.cells,
        runtime=Runtime.of(recipe) if runtime is None else runtime,
    )


# ------------------------------------------------------------------------ run


def run_forecast(
    recipe: Recipe,
    out: Path,
    *,
    resume: bool = False,
    command: str = "",
    on_event: EventFn = no_event,
    phase: str = "all",
) -> dict[str, Any]:
    """Train every model of ``recipe`` into ``out`` (resuming if asked) and evaluate."""
    # Data first: a bad data set must not leave a half-made run directory behind.
    runtime = Runtime.of(recipe)  # and neither must a device this machine lacks
    started = time.perf_counter()
    if will_generate(recipe.data):
        d = recipe.data
        count = d.n_train + d.n_val + d.n_test
        on_event(Event.DATA_GENERATE, {"equation": d.equation, "count": count})
    splits = load_dataset(recipe.data)
    check_splits(splits, recipe)
    open_run(
        recipe,
        out,
        resume=resume,
        command=command,
        on_event=on_event,
        runtime=runtime,
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
        task = make_task(recipe, model, splits, runtime)
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
        on_event(Event.TRAIN_END, {"model": name, **summaries[name]})

    return evaluate_and_write(recipe, models, splits, out, summaries, runtime, on_event=on_event)


def evaluate_and_write(
    recipe: Recipe,
    models: dict[str, nn.Module],
    splits: dict[str, Trajectories],
    out: Path,
    summaries: dict[str, dict[str, Any]],
    runtime: Runtime,
    *,
    on_event: EventFn = no_event,
) -> dict[str, Any]:
    """Judge ``models`` on the test split; write metrics.json, the examples and the report."""
    on_event(Event.EVALUATE, {"models": list(models)})
    started = time.perf_counter()
    metrics, examples = evaluate_models(recipe, models, splits, runtime)
    metrics["train"] = summaries
    metrics["runtime"] = runtime.describe()
    robustness = evaluate_robustness(recipe, models, splits, runtime, on_event=on_event)
    if robustness:
        metrics["robustness"] = robustness
    metrics["eval_seconds"] = round(time.perf_counter() - started, 3)
    return close_run(out, metrics, on_event, examples=examples, announce=False)


def evaluate_robustness(
    recipe: Recipe,
    models: dict[str, nn.Module],
    splits: dict[str, Trajectories],
    runtime: Runtime,
    *,
    on_event: EventFn = no_event,
) -> dict[str, Any]:
    """OOD sets and adversarial attacks (seed §12.4) for every model, as configured."""
    ev, out = recipe.eval, {}
    if ev.ood.enabled:
        sets = ood_datasets(recipe.data, ev.ood)
        if sets or sets.skipped:
            on_event(Event.ROBUSTNESS, {"what": "ood", "conditions": list(sets)})
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
        on_event(Event.ROBUSTNESS, {"what": "adversarial", "eps": ev.adversarial.eps})
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
    recipe: Recipe,
    models: dict[str, nn.Module],
    splits: dict[str, Trajectories],
    runtime: Runtime | None = None,
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
        task = make_task(recipe, model, splits, runtime)
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


def load_forecast(recipe: Recipe, run_dir: Path, runtime: Runtime | None = None) -> LoadedRun:
    """Rebuild the run's trained models from their checkpoints (EMA weights; no data needed),
    on ``recipe.runtime``'s device."""
    models = build_trainable_models(recipe)  # the data scale comes back with the weights
    runtime = Runtime.of(recipe) if runtime is None else runtime
    summaries = load_trained(models, run_dir, recipe.name, runtime)
    shape = (recipe.data.window, recipe.data.grid)
    return LoadedRun(run_dir, recipe, models, summaries, input_shape=shape)


def evaluate_forecast(
    recipe: Recipe, run_dir: Path, *, on_event: EventFn = no_event
) -> dict[str, Any]:
    """Re-judge a run's checkpoints (EMA weights); rewrite metrics.json and the report."""
    runtime = Runtime.of(recipe)
    run = load_forecast(recipe, run_dir, runtime)
    splits = load_dataset(recipe.data)
    check_splits(splits, recipe)
    models = dict(run.models)
    if recipe.baselines.persistence:
        with on_cpu():
            models["persistence"] = build.build_persistence(sigma=persistence_sigma(splits))
    return evaluate_and_write(
        recipe, models, splits, run_dir, run.summaries, runtime, on_event=on_event
    )


def forecast_targets(recipe: Recipe, run_dir: Path) -> list[Target]:
    """Every trained model of the run, fine-tuned on its forecasting task, judged by the
    one-step nRMSE of the test split."""
    runtime = Runtime.of(recipe)
    loaded = load_forecast(recipe, run_dir, runtime)
    splits = load_dataset(recipe.data)

    def judge(model: nn.Module) -> dict[str, Any]:
        return make_task(recipe, model, splits, runtime).evaluate("test", recipe.eval)["metrics"]

    return [
        Target(
            name=name,
            model=model,
            make_task=lambda m: make_task(recipe, m, splits, runtime),
            judge=judge,
            metric="nrmse_1step",
            higher_is_better=False,
            train=recipe.train,
            seed=recipe.seed,
        )
        for name, model in loaded.models.items()
    ]


FORECAST_METRICS = (
    "nrmse_1step", "nrmse_rollout", "rmse", "nll", "crps", "coverage_50", "coverage_90",
    "coverage_95", "miscalibration_area", "sigma_rel_error", "converged_fraction",
    "iterations_mean", "rounds_mean", "residual_final", "rho_max", "rho_mean", "rho_below_1",
    "messages_per_prediction",
)  # fmt: skip


def forecast_model_names(recipe: Recipe) -> list[str]:
    """The models a run of ``recipe`` judges, in metrics.json's order (no model is built)."""
    b = recipe.baselines
    names = ["orchestra"] + (["mlp"] if b.mlp else []) + list(dict.fromkeys(b.ssm))
    other = comparison_cell(recipe)
    if other is not None:
        names.append(f"orchestra_{other}")
    return names + (["persistence"] if b.persistence else [])


JOB = Job(
    tasks=("forecast",),
    run=run_forecast,
    evaluate=evaluate_forecast,
    load=load_forecast,
    targets=forecast_targets,
    model_names=forecast_model_names,
    metric_keys=FORECAST_METRICS,
    higher_is_better=frozenset({"converged_fraction", "rho_below_1"}),
    main_metric=("orchestra", "nrmse_1step"),
)
