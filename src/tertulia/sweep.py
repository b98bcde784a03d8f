"""``tertulia sweep``: a grid of recipe overrides run as parallel trials on Ray Tune.

Every point of the grid (the cross product of the ``--grid key=v1,v2`` lists),
repeated ``trials`` times with seeds ``seed, seed+1, …``, is one trial: a whole
``tertulia run`` of the recipe with those ``--set`` overrides, in its own run
directory ``OUT/trial-NNN``. Ray Tune schedules the trials (one CPU each; with
``--device cuda`` also ``--gpus-per-trial`` GPUs, default 1, which Ray assigns) on
this machine (local mode) or on a Ray cluster (``address``); a trial that fails
is reported with its error and the sweep goes on. The summary (``sweep.json``,
a table and a plot of the metric across trials, ``report.html``) is written
when all trials are done.

The metric is the recipe's main one (its job's record names it) unless ``metric``
(``models.MODEL.KEY`` in the trial's metrics.json, e.g. ``models.mlp.nrmse_1step``,
checked against the job's models and keys before any trial starts) says otherwise:

============  =====================================  ======
task          metric                                 better
============  =====================================  ======
forecast      models.orchestra.nrmse_1step           lower
sequence      models.<first>.accuracy                higher
velora        models.velora.mixed_score              higher
continual     models.cms.forgetting                  lower
recall        models.<first>.accuracy_4x             higher
lm            models.<first>.bpc                     lower
============  =====================================  ======
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import config as cfg
from . import jobs
from ._io import atomic_write_json, json_safe
from .errors import ConfigError, UserError
from .runtime import check_device_spec, resolve_device


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["model.d=32,64", …]`` → ``{"model.d": ["32", "64"], …}`` (ConfigError if malformed)."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,…, e.g. model.d=32,64")
        if key in grid:
            raise ConfigError(f"--grid names {key} twice; give all its values in one --grid")
        grid[key] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def trial_sets(grid: dict[str, list[str]], trials: int, seed: int) -> list[list[str]]:
    """The ``--set`` assignments of every trial: grid points × repeats (seeds)."""
    keys = list(grid)
    points = list(itertools.product(*(grid[k] for k in keys))) if keys else [()]
    out = []
    for point in points:
        for rep in range(trials):
            sets = [f"{k}={v}" for k, v in zip(keys, point, strict=True)]
            if trials > 1:
                sets.append(f"seed={seed + rep}")
            out.append(sets)
    return out


def sweep_metric(recipe: Any, metric: str | None) -> tuple[str, bool]:
    """The metrics.json path a sweep of ``recipe`` ranks its trials by (``metric``, or the
    job's main metric) and whether lower is better; a ConfigError, before any trial
    starts, for a path the recipe's runs do not write."""
    job = jobs.job_for(recipe)
    if job.main_metric is None or job.model_names is None:
        raise ConfigError(f"a {recipe.task} recipe has no training metric to sweep over")
    names = job.model_names(recipe)
    if metric is None:
        model, key = job.main_metric
        model = names[0] if model is None else model
    else:
        parts = metric.split(".")
        if len(parts) != 3 or parts[0] != "models":
            raise ConfigError(
                f"--metric {metric}: expected models.MODEL.KEY, e.g. "
                f"models.{names[0]}.{job.main_metric[1]}"
            )
        model, key = parts[1], parts[2]
        if model not in names:
            raise ConfigError(
                f"--metric {metric}: this recipe's runs judge no model {model!r}; "
                f"its models are: {', '.join(names)}"
            )
        if key not in job.metric_keys:
            raise ConfigError(
                f"--metric {metric}: {recipe.task} runs write no {key!r} per model; "
                f"the keys are: {', '.join(job.metric_keys)}"
            )
    return f"models.{model}.{key}", key not in job.higher_is_better


def lookup(metrics: dict[str, Any], path: str) -> float:
    node: Any = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"{path} is not in the trial's metrics.json")
        node = node[part]
    return float(node)


def trial_resources(
    spec: str, *, local: bool, gpus_per_trial: float | None = None
) -> dict[str, float]:
    """What Ray reserves for each trial of a sweep on device ``spec``: one CPU, and on CUDA
    ``gpus_per_trial`` GPUs (default 1). On this machine (``local``) the device is resolved,
    so a GPU it lacks fails before any trial; on a cluster the workers have the GPUs, and
    ``auto`` asks for them only when ``gpus_per_trial`` is given."""
    spec = check_device_spec(spec)
    if spec.startswith("cuda:"):
        raise ConfigError(
            f"device {spec}: Ray hands every trial its own GPU; use --device cuda "
            "(and --gpus-per-trial to share one)"
        )
    if local:
        on_gpu = resolve_device(spec).type == "cuda"
    else:
        on_gpu = spec == "cuda" or (spec == "auto" and bool(gpus_per_trial))
    resources: dict[str, float] = {"cpu": 1}
    if on_gpu and gpus_per_trial != 0:
        resources["gpu"] = 1.0 if gpus_per_trial is None else float(gpus_per_trial)
    return resources


def _trial(space: dict[str, Any]) -> None:
    """One Ray trial: ``tertulia run`` of the recipe with the trial's overrides."""
    config = space["trial"]
    torch.set_num_threads(1)
    recipe = cfg.load_recipe(config["recipe"], config["sets"]).with_runtime(config.get("device"))
    out = Path(config["out"])
    t0 = time.perf_counter()
    metrics = jobs.run(recipe, out, command="tertulia sweep trial " + " ".join(config["sets"]))
    name = config["metric"]
    value = lookup(metrics, name)
    from ray import tune  # lazy: the optional [sweep] extra

    tune.report({"metric": value, "metric_name": name, "seconds": time.perf_counter() - t0})


def run_sweep(
    recipe_name: str,
    grid: dict[str, list[str]],
    out: Path,
    *,
    trials: int = 1,
    metric: str | None = None,
    mode: str = "auto",
    address: str | None = None,
    cpus: int | None = None,
    device: str | None = None,
    gpus_per_trial: float | None = None,
) -> dict[str, Any]:
    """Run every trial with Ray Tune; write and return the summary.

    ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``) replaces the recipe's
    ``runtime.device`` in every trial; on CUDA Ray reserves ``gpus_per_trial`` GPUs
    (default 1; a fraction lets trials share a GPU) for each trial and hands it its own.
    """
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    if mode not in ("auto", "min", "max"):
        raise ConfigError(f"--mode must be auto, min or max, got {mode!r}")
    base = cfg.load_recipe(recipe_name, []).with_runtime(device)
    spec = base.runtime.device
    resources = trial_resources(spec, local=address is None, gpus_per_trial=gpus_per_trial)
    path, lower_is_better = sweep_metric(base, metric)
    all_sets = trial_sets(grid, trials, base.seed)
    for sets in all_sets:  # bad keys, values or metrics fail now, before any trial starts
        sweep_metric(cfg.load_recipe(recipe_name, sets), metric)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; choose another --out")
    try:  # lazy: the optional [sweep] extra
        import ray
        from ray import tune
    except ImportError:
        raise UserError("sweeps need Ray Tune: pip install 'tertulia[sweep]'") from None
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    started = ray.is_initialized()
    if not started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        elif cpus:
            kwargs["num_cpus"] = cpus
        ray.init(**kwargs)
    try:
        configs = [
            {
                "recipe": recipe_name,
                "sets": sets,
                "out": str(out / f"trial-{i:03d}"),
                "metric": path,
                "device": device,
            }
            for i, sets in enumerate(all_sets)
        ]
        tuner = tune.Tuner(
            tune.with_resources(_trial, resources),
            param_space={"trial": tune.grid_search(configs)},
            tune_config=tune.TuneConfig(num_samples=1),
            run_config=tune.RunConfig(
                storage_path=str(out / "ray"),
                name="sweep",
                failure_config=tune.FailureConfig(fail_fast=False),
                verbose=0,
            ),
        )
        results = tuner.fit()
    finally:
        if not started:
            ray.shutdown()
    rows = []
    for result in results:
        conf = result.config["trial"] if result.config else {}
        row: dict[str, Any] = {
            "trial": Path(conf.get("out", "?")).name,
            "sets": conf.get("sets", []),
            "out": conf.get("out"),
        }
        if result.error is not None:
            row["error"] = str(result.error).strip().splitlines()[-1][:300]
        else:
            m = result.metrics or {}
            row.update(
                metric=m.get("metric"), metric_name=m.get("metric_name"), seconds=m.get("seconds")
            )
        rows.append(row)
    rows.sort(key=lambda r: r["trial"])
    name = path
    lower = lower_is_better if mode == "auto" else mode == "min"
    done = [r for r in rows if "error" not in r and r.get("metric") is not None]
    best = (min if lower else max)(done, key=lambda r: r["metric"]) if done else None
    summary = {
        "task": "sweep",
        "recipe": recipe_name,
        "grid": grid,
        "trials_per_point": trials,
        "metric": name,
        "lower_is_better": lower,
        "device": spec,
        "resources_per_trial": resources,
        "rows": rows,
        "failed": sum("error" in r for r in rows),
        "best": best,
    }
    atomic_write_json(out / "sweep.json", json_safe(summary))
    _report(out, summary)
    return summary


def _report(out: Path, summary: dict[str, Any]) -> None:
    from .report.sweep import build_sweep_report  # lazy: matplotlib only for a report

    build_sweep_report(out, summary)
