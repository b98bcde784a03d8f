"""The jobs and their registry: the one place that decides, per recipe, what runs.

Each job is a file of this package exporting one :class:`~tertulia.jobs.base.Job`
record (``JOB``); :data:`JOBS` maps every recipe ``task`` to its job. The
commands ask the registry once:

========================  ===============================================
:func:`run`               ``tertulia run``: train and judge into a run directory
:func:`evaluate_run`      ``tertulia eval``: re-judge a run, rewrite metrics.json
:func:`load_run`          the trained models of a run (no data needed)
:func:`compress_run`      ``tertulia compress``: prune a run's networks
========================  ===============================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..compress.job import check_request, compress_targets
from ..errors import ConfigError, RunDirError
from ..runs import EventFn, no_event, require_run_dir
from . import classical, continual, forecast, lm, recall, sequence, velora
from .base import Job as Job
from .base import LoadedRun as LoadedRun

JOBS: dict[str, Job] = {
    task: module.JOB
    for module in (forecast, classical, sequence, velora, continual, lm, recall)
    for task in module.JOB.tasks
}


def job_for(recipe: Any) -> Job:
    """The job that runs ``recipe`` (by its ``task``)."""
    try:
        return JOBS[recipe.task]
    except KeyError:
        raise ConfigError(
            f"task {recipe.task!r} has no job; tasks are: {', '.join(JOBS)}"
        ) from None


def run(
    recipe: Any,
    out: Path,
    *,
    resume: bool = False,
    command: str = "",
    on_event: EventFn = no_event,
    phase: str = "all",
) -> dict[str, Any]:
    """Train every model of ``recipe`` into ``out`` (resuming if asked) and judge them;
    returns metrics.json's content. ``phase`` (one of the job's phases, or ``all``)
    applies to staged recipes (``task: velora``) only."""
    job = job_for(recipe)
    if job.phases:
        return job.run(
            recipe, out, resume=resume, command=command, on_event=on_event, phase=phase
        )
    if phase != "all":
        staged = ", ".join(f"task: {t}" for j in JOBS.values() if j.phases for t in j.tasks)
        raise ConfigError(
            f"--phase {phase} applies to staged recipes ({staged}); "
            f"recipe {recipe.name!r} has a single phase"
        )
    return job.run(recipe, out, resume=resume, command=command, on_event=on_event)


def _nothing(job: Job, recipe: Any, run_dir: Path) -> RunDirError:
    why = job.nothing_to_load.format(task=recipe.task, name=recipe.name)
    return RunDirError(f"{run_dir} {why}")


def load_run(run_dir: str | Path, *, device: str | None = None) -> LoadedRun:
    """Rebuild a run's trained models from its checkpoints (no data needed), on the run's
    ``runtime.device`` or on ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``).

    >>> run = load_run("runs/burgers")                       # doctest: +SKIP
    >>> pred = run.models["orchestra"](past_frames)          # (B, w, G) -> Prediction
    """
    run_dir = Path(run_dir)
    recipe = require_run_dir(run_dir).with_runtime(device)
    job = job_for(recipe)
    if job.load is None:
        raise _nothing(job, recipe, run_dir)
    return job.load(recipe, run_dir)


def evaluate_run(
    run_dir: str | Path, *, device: str | None = None, on_event: EventFn = no_event
) -> dict[str, Any]:
    """Re-judge a run's trained models and rewrite metrics.json and the report, on the
    run's ``runtime.device`` or on ``device``. A classical run is simply fitted again."""
    run_dir = Path(run_dir)
    recipe = require_run_dir(run_dir).with_runtime(device)
    job = job_for(recipe)
    if job.evaluate is None:
        raise _nothing(job, recipe, run_dir)
    return job.evaluate(recipe, run_dir, on_event=on_event)


def compress_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    device: str | None = None,
    on_event: EventFn = no_event,
    **settings: Any,
) -> dict[str, Any]:
    """Prune, fine-tune and store every network of the run ``run_dir`` into the new run
    directory ``out`` (settings: those of :func:`tertulia.compress.job.compress_targets`),
    on the run's ``runtime.device`` or on ``device``."""
    run_dir, out = Path(run_dir), Path(out)
    check_request(out, **settings)
    recipe = require_run_dir(run_dir).with_runtime(device)
    job = job_for(recipe)
    if job.targets is None:
        able = [t for j in JOBS.values() if j.targets is not None for t in j.tasks]
        raise RunDirError(
            f"{run_dir} is a {recipe.task} run: it has no trained network to compress "
            f"(runs of tasks {', '.join(able[:-1])} and {able[-1]} have)"
        )
    targets = job.targets(recipe, run_dir)
    return compress_targets(recipe, targets, run_dir, out, on_event=on_event, **settings)
