"""The jobs and their registry: the one place that decides, per recipe, what runs.

Each job is a file of this package exporting one :class:`~tertulia.jobs.base.Job`
record (``JOB``); :data:`JOBS` maps every recipe ``task`` to its job. The
commands ask the registry once:

========================  ===============================================
:func:`plan_run`          ``tertulia run``: check a request, before any work
:func:`start_run`         … and carry it out (locked run directory, workers)
:func:`run`               train and judge a recipe into a run directory
:func:`evaluate_run`      ``tertulia eval``: re-judge a run, rewrite metrics.json
:func:`load_run`          the trained models of a run (no data needed)
:func:`compress_run`      ``tertulia compress``: prune a run's networks
========================  ===============================================
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..compress.export import check_onnx, export_onnx
from ..compress.job import check_request, compress_targets
from ..compress.sparse_io import load_compressed
from ..config import load_recipe, resolve_recipe_path
from ..errors import ConfigError, DataError, RunDirError, UserError
from ..runs import (
    EventFn,
    check_new_run_dir,
    fresh_run_dir,
    locked,
    no_event,
    require_run_dir,
)
from ..runtime import Runtime
from ..train import distributed
from ..train.checkpoint import load_weights
from ..train.launch import cuda_count, init_worker, is_worker, launch, world_size_from_env
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


@dataclass(frozen=True)
class RunPlan:
    """A checked ``tertulia run`` request: what runs where, and the command line that says
    so (recorded in the run's ``command.txt``; the workers of ``--nproc`` run it too)."""

    recipe: Any  # the resolved recipe
    out: Path  # its run directory
    resume: bool
    words: tuple[str, ...]  # the arguments after ``tertulia``
    phase: str = "all"
    nproc: int = 1  # data-parallel workers

    @property
    def command(self) -> str:
        return "tertulia " + shlex.join(self.words)


def _data_dir_sets(recipe: Any, folder: Path) -> list[str]:
    """``--set`` assignments that point ``recipe`` at the data folder ``folder``."""
    if not folder.is_dir():
        raise DataError(f"--data-dir {folder} is not a directory")
    job = job_for(recipe)
    if job.data_dir is None:
        able = [t for j in JOBS.values() if j.data_dir is not None for t in j.tasks]
        raise ConfigError(
            f"--data-dir applies to {' and '.join(able)} recipes, not {recipe.task} "
            f"({recipe.name}); point a forecasting recipe at a file with --set data.path=FILE"
        )
    return job.data_dir(folder)


def plan_run(
    recipe: str | None = None,
    *,
    out: Path | None = None,
    sets: Sequence[str] = (),
    resume: Path | None = None,
    data_dir: Path | None = None,
    device: str | None = None,
    precision: str | None = None,
    phase: str = "all",
    nproc: int = 1,
) -> RunPlan:
    """Check a ``tertulia run`` request before any work: the recipe and its overrides, the
    run directory (``out``, default ``runs/<name>``, or the run to ``resume``), the device,
    the phase and the workers. Every mistake is a one-line UserError."""
    worker = is_worker()
    if resume is not None:
        if out is not None:
            raise RunDirError("--resume continues a run in place; drop --out")
        if sets or data_dir is not None:
            raise RunDirError(
                "--set and --data-dir cannot change a run on --resume; start a new run instead"
            )
        saved = require_run_dir(resume)
        if recipe is not None and resolve_recipe_path(recipe).stem != saved.name:
            raise RunDirError(f"{resume} is a run of recipe {saved.name!r}, not {recipe!r}")
        if precision is not None and precision != saved.runtime.precision:
            raise RunDirError(
                f"{resume} trains in {saved.runtime.precision} (runtime.precision in its "
                f"config.yaml); --precision {precision} would change the run: start a new "
                "run instead"
            )
        rec, target = saved.with_runtime(device), resume
        words = ["run", rec.name, "--resume", str(target)]
    else:
        name = recipe or "burgers"
        rec = load_recipe(name, list(sets))
        if data_dir is not None:
            rec = load_recipe(name, [*sets, *_data_dir_sets(rec, data_dir)])
        rec = rec.with_runtime(device, precision)
        target = fresh_run_dir(Path("runs") / rec.name) if out is None else out
        if not worker:  # the launcher checked it; rank 0 may already be writing
            check_new_run_dir(target)
        words = ["run", name, "--out", str(target)]
        for assignment in sets:
            words += ["--set", assignment]
        if data_dir is not None:
            words += ["--data-dir", str(data_dir)]
        if precision is not None:
            words += ["--precision", precision]
    if device is not None:
        words += ["--device", device]
    if phase != "all":
        words += ["--phase", phase]
    batch = getattr(getattr(rec, "train", None), "batch_size", None)
    if nproc > 1 and batch is not None and batch % nproc:
        raise ConfigError(
            f"--nproc {nproc} must divide train.batch_size={batch}: every worker takes "
            "an equal slice of the global batch"
        )
    runtime = Runtime.of(rec)  # a device this machine lacks fails here, before any work
    if nproc > 1 and not worker:
        if runtime.is_cuda and ":" in rec.runtime.device:
            raise ConfigError(
                f"--nproc {nproc} gives every worker its own GPU (cuda:LOCAL_RANK); "
                f"use --device cuda, not {rec.runtime.device}"
            )
        if runtime.is_cuda and nproc > cuda_count():
            raise ConfigError(
                f"--nproc {nproc} on --device cuda needs a GPU per worker; this machine "
                f"has {cuda_count()}"
            )
    if worker:
        words += ["--nproc", str(world_size_from_env())]
    return RunPlan(rec, target, resume is not None, tuple(words), phase, nproc)


def start_run(
    plan: RunPlan,
    *,
    on_event: EventFn = no_event,
) -> dict[str, Any] | None:
    """Carry out ``plan``: with ``nproc`` > 1, start the workers and wait for them;
    otherwise (and in each worker) train and judge under the run directory's lock.
    Returns metrics.json's content, or None where this process wrote nothing (the
    launcher, and ranks > 0 of a distributed run)."""
    if plan.nproc > 1 and not is_worker():
        launch(list(plan.words), plan.nproc)  # the workers come back here, below
        return None
    if is_worker():
        init_worker(Runtime.of(plan.recipe))
    quiet = not distributed.is_main()
    with locked(plan.out, create=not plan.resume, command=plan.command):
        if not plan.resume and not is_worker():
            check_new_run_dir(plan.out, held=True)  # a run that began while this one was planned
        metrics = run(
            plan.recipe,
            plan.out,
            resume=plan.resume,
            command=plan.command,
            on_event=no_event if quiet else on_event,
            phase=plan.phase,
        )
    return None if quiet else metrics


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
    with locked(run_dir, command=f"tertulia eval {run_dir}"):
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
    command = f"tertulia compress {run_dir} --out {out}"
    with locked(run_dir, shared=True), locked(out, create=True, command=command):
        targets = job.targets(recipe, run_dir)
        return compress_targets(recipe, targets, run_dir, out, on_event=on_event, **settings)


def export_run(run_dir: str | Path, *, out: str | Path | None = None) -> list[dict[str, Any]]:
    """Export every network of a run (or of a compressed run: its pruned weights) to ONNX
    files in ``out`` (default ``RUN_DIR/onnx``), each checked against PyTorch with
    onnxruntime; returns ``{"model", "path", "max_abs_diff"}`` per file. A difference over
    1e-5 is a UserError."""
    run_dir = Path(run_dir)
    require_run_dir(run_dir)
    with locked(run_dir, shared=True):
        metrics_path = run_dir / "metrics.json"
        source, compressed = run_dir, False
        if metrics_path.is_file():
            try:
                meta = json.loads(metrics_path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                meta = {}
            if isinstance(meta, dict) and meta.get("task") == "compress":
                source, compressed = Path(meta["source"]), True
        loaded = load_run(source, device="cpu")
        if loaded.input_shape is None:
            raise ConfigError(
                f"{run_dir} is a {loaded.recipe.task} run: its models take tokens, which ONNX "
                "export does not cover here (forecast and sequence runs export)"
            )
        if compressed:
            for name, model in loaded.models.items():
                path = run_dir / "checkpoint" / f"{name}.safetensors"
                if path.is_file():
                    load_weights(model, load_compressed(path), source=path)
        target = Path(out) if out is not None else run_dir / "onnx"
        gen = torch.Generator().manual_seed(0)
        example = torch.randn(4, *loaded.input_shape, generator=gen)
        rows = []
        for name, model in loaded.models.items():
            if sum(p.numel() for p in model.parameters()) == 0:
                continue
            try:
                wrapped, path = export_onnx(model, example, target / f"{name}.onnx")
            except RuntimeError as exc:  # torch.onnx.OnnxExporterError among them
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown"
                raise UserError(f"{name} cannot be exported to ONNX: {reason}") from None
            diff = check_onnx(path, wrapped, example)
            if diff > 1e-5:
                raise UserError(f"{name}: ONNX output differs from PyTorch by {diff:.2e} (> 1e-5)")
            rows.append({"model": name, "path": path, "max_abs_diff": diff})
        return rows
