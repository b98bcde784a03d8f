"""The run directory: create it, open and close it, train into it, and the events of a run.

A run directory holds::

    config.yaml            the resolved recipe
    command.txt            every command line that touched the run
    train_log.jsonl        loss, NLL, residual … per logged step and model
    checkpoint/<model>/    safetensors + JSON, resumable (see train.checkpoint)
    metrics.json           every model's test metrics and curves
    examples.safetensors   arrays for the report's plots (jobs that have them)
    report.html, *.png     the report

Every job goes through the same life cycle: load its data (bad data fails before
anything is written), :func:`open_run`, train with :func:`fit_in_run` /
:func:`fit_model`, judge, :func:`close_run`. What a job tells the caller while it
works are :class:`Event` values, handed to an :data:`EventFn` (the CLI turns them
into progress bars; library callers may pass :func:`no_event`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ._io import (
    append_line,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    json_safe,
    secondary_rank,
)
from .config import AnyRecipe, TrainConfig, load_resolved
from .errors import RunDirError, RunDirWarning
from .events import Event as Event
from .events import EventFn as EventFn
from .events import no_event as no_event
from .runtime import Runtime
from .train import Trainer, has_checkpoint, load_checkpoint, load_weights
from .train.checkpoint import checkpoint_folder
from .train.stages import LayerGroup

# ------------------------------------------------------------------- run dirs


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds a run (its ``config.yaml``)."""
    return (path / "config.yaml").is_file()


def require_run_dir(path: Path) -> AnyRecipe:
    """The resolved recipe of the run directory ``path`` (RunDirError if it is none)."""
    if path.is_file():
        raise RunDirError(f"{path} is a file, not a run directory made by 'tertulia run'")
    if not path.is_dir():
        raise RunDirError(f"{path} does not exist; give a run directory made by 'tertulia run'")
    if not is_run_dir(path):
        raise RunDirError(f"{path} is not a run directory: it has no config.yaml")
    return load_resolved(path / "config.yaml")


def is_empty_dir(path: Path) -> bool:
    """Whether the folder ``path`` holds nothing (its lock file aside)."""
    return not any(p.name != LOCK_FILE for p in path.iterdir())


def fresh_run_dir(base: Path) -> Path:
    """``base`` if unused, else ``base-2``, ``base-3`` … (never overwrite a run)."""
    if not base.exists() or (base.is_dir() and is_empty_dir(base)):
        return base
    k = 2
    while Path(f"{base}-{k}").exists():
        k += 1
    return Path(f"{base}-{k}")


def check_new_run_dir(path: Path, *, held: bool = False) -> None:
    """RunDirError unless ``path`` can hold a new run: missing, or an empty folder (a folder
    another command is writing is named as such, unless this process ``held`` its lock)."""
    if not path.exists():
        return
    if not path.is_dir():
        raise RunDirError(f"--out {path} is a file, not a folder; choose a folder for the run")
    if not held and (path / LOCK_FILE).is_file():  # a run being written: name its writer
        acquire(path, shared=True).release()
    if is_empty_dir(path):
        return
    if is_run_dir(path):
        raise RunDirError(
            f"{path} holds a run; continue it with --resume {path} or choose another --out"
        )
    raise RunDirError(
        f"{path} is not empty and holds no run; choose a new or empty folder for --out"
    )


# ----------------------------------------------------------------------- lock

LOCK_FILE = ".lock"


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a run directory's lock."""

    pid: int
    command: str
    since: float  # time.time() when the lock was taken

    def describe(self) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(self.since))
        return f"process {self.pid} ({self.command}, since {when})"


def _read_holder(path: Path) -> Holder | None:
    try:
        words = path.read_text(encoding="utf-8").split("\n", 2)
        return Holder(int(words[0]), words[2].strip() or "tertulia", float(words[1]))
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RunLock:
    """A kernel lock (``fcntl.flock``) on ``<run dir>/.lock``, held while a command writes
    (exclusive) or reads (shared) the run; the kernel frees it when the process ends.

    An exclusive holder writes its pid, start time and command line into the file and
    empties it on release, so a file that still names a process which is gone marks an
    interrupted holder (``stale``: taken over, with a warning for the user).
    """

    path: Path
    stale: Holder | None = None
    _fd: int | None = None

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the descriptor frees the flock
        self._fd = None


def acquire(run_dir: Path, *, shared: bool = False, command: str = "") -> RunLock:
    """Take the lock of ``run_dir`` (which must exist) without waiting: RunDirError naming
    the holder when another process holds it. ``shared`` locks admit other readers but
    no writer."""
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise RunDirError(f"cannot lock {run_dir}: {exc.strerror} ({path})") from None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunDirError(f"cannot lock {run_dir}: {exc.strerror} ({path})") from None
        holder = _read_holder(path)
        who = holder.describe() if holder else "another tertulia process"
        raise RunDirError(
            f"{run_dir} is in use by {who}; wait for it to finish or use another folder"
        ) from None
    lock = RunLock(path, _fd=fd)
    if not shared:
        previous = _read_holder(path)
        if previous is not None and previous.pid != os.getpid() and not _alive(previous.pid):
            lock.stale = previous
        text = f"{os.getpid()}\n{time.time()}\n{command or shlex.join(sys.argv)}\n"
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode("utf-8"), 0)
        except OSError:  # a full disk: the lock holds all the same, unnamed
            pass
    return lock


@contextlib.contextmanager
def locked(
    run_dir: Path,
    *,
    shared: bool = False,
    create: bool = False,
    command: str = "",
) -> Iterator[RunLock | None]:
    """Hold ``run_dir``'s lock for the ``with`` block (ranks > 0 of a distributed run take
    none: rank 0 holds it for them).

    ``create`` makes the folder first (its parents too); if the block fails and leaves
    the folder it made holding nothing but the lock, the folder goes again, so a run
    that fails on bad data leaves nothing behind. A lock whose last holder was
    interrupted (its process is gone) is taken over with a :class:`RunDirWarning`.
    """
    if secondary_rank():
        yield None
        return
    made = False
    if create and not run_dir.exists():
        try:
            run_dir.mkdir(parents=True)
        except FileExistsError:
            pass  # made by a racing process: the lock decides
        except OSError as exc:
            raise RunDirError(f"cannot create {run_dir}: {exc.strerror}") from None
        else:
            made = True
    elif not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a folder")
    lock = acquire(run_dir, shared=shared, command=command)
    if lock.stale is not None:
        warnings.warn(
            f"{run_dir} was left by an interrupted command ({lock.stale.describe()} is gone); "
            "its lock is taken over",
            RunDirWarning,
            stacklevel=3,
        )
    try:
        yield lock
    except BaseException:
        if made and not any(p.name != LOCK_FILE for p in run_dir.iterdir()):
            with contextlib.suppress(OSError):
                (run_dir / LOCK_FILE).unlink()
                run_dir.rmdir()
        raise
    finally:
        lock.release()


def open_run(
    recipe: Any,
    out: Path,
    *,
    resume: bool,
    command: str,
    on_event: EventFn = no_event,
    data: dict[str, Any] | None = None,
    threads: int | None = None,
    runtime: Runtime | None = None,
) -> Runtime:
    """Set the CPU threads (``threads``, default the recipe's ``train.threads``), announce the
    loaded data (a ``data`` event, when ``data`` is given) and create the run directory with
    its ``config.yaml`` (not on resume) and ``command.txt`` line. Jobs call it once their
    data has loaded, so bad data never leaves a half-made directory. Returns the recipe's
    runtime (device and precision), resolved before anything is written: a device this
    machine lacks fails first (``runtime``: the job resolved it already)."""
    runtime = Runtime.of(recipe) if runtime is None else runtime
    if threads is None:
        threads = getattr(getattr(recipe, "train", None), "threads", None)
    if threads:
        torch.set_num_threads(threads)
    if data is not None:
        on_event(Event.DATA, {**data, "out": str(out)})
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        atomic_write_text(out / "config.yaml", recipe.to_yaml())
    if command:
        append_line(out / "command.txt", command)
    return runtime


def close_run(
    out: Path,
    results: dict[str, Any],
    on_event: EventFn = no_event,
    *,
    examples: Mapping[str, torch.Tensor] | None = None,
    announce: bool = True,
) -> dict[str, Any]:
    """Write ``examples.safetensors`` (when given), ``metrics.json`` (atomically) and the
    report; return ``results``. ``announce``: emit the ``evaluate`` event first (jobs that
    announced it when their judging began pass False)."""
    if announce:
        on_event(Event.EVALUATE, {"models": list(results.get("models", {}))})
    if examples is not None:
        arrays = dict(examples)
        atomic_write(out / "examples.safetensors", lambda tmp: save_file(arrays, tmp))
    atomic_write_json(out / "metrics.json", json_safe(results))
    on_event(Event.REPORT, {})
    from .report import build_report  # lazy: matplotlib only when a report is made

    build_report(out)
    return results


def rebuild_report(run_dir: Path) -> Path:
    """Rebuild ``report.html`` and its figures from the run directory ``run_dir``, under the
    run's lock (a run being written is refused); returns the page's path."""
    from .report import build_report  # lazy: matplotlib only when a report is made

    if run_dir.is_file():
        raise RunDirError(f"{run_dir} is a file, not a run directory")
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} does not exist; give a run directory")
    with locked(run_dir, command=f"tertulia report {run_dir}"):
        return build_report(run_dir)


# ------------------------------------------------------------------- training

TRAIN_KEYS = ("steps", "skipped_steps", "seconds", "resumed_from")


def fit_model(
    task: Any,
    train: TrainConfig,
    *,
    name: str,
    seed: int,
    out: Path,
    recipe_name: str,
    on_event: EventFn = no_event,
) -> dict[str, Any]:
    """:func:`fit_in_run` plus the ``train_end`` event; the summary's usual keys."""
    summary = fit_in_run(
        task, train, name=name, seed=seed, out=out, recipe_name=recipe_name, on_event=on_event
    )
    result = {k: summary[k] for k in TRAIN_KEYS}
    on_event(Event.TRAIN_END, {"model": name, **result})
    return result


def fit_in_run(
    task: Any,
    train: Any,
    *,
    name: str,
    seed: int,
    out: Path,
    recipe_name: str,
    on_event: EventFn = no_event,
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
            Event.STEP, {"model": name, "step": step, "total": total, "logs": logs}
        ),
        meta={"recipe": recipe_name},
        layer_groups=layer_groups,
        keep_best=keep_best,
    )
    on_event(Event.TRAIN_START, {"model": name, "total": train.steps})
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


def load_trained(
    models: Mapping[str, torch.nn.Module],
    run_dir: Path,
    recipe_name: str,
    runtime: Runtime | None = None,
) -> dict[str, dict[str, Any]]:
    """Load into each of ``models`` the weights its run judges it by (its EMA weights, else
    the plain ones) from ``run_dir/checkpoint/<name>``, in eval mode (and on ``runtime``'s
    device when given); returns each model's training summary as its checkpoint records
    it (steps, skipped steps, seconds)."""
    summaries = {}
    for name, model in models.items():
        folder = run_dir / "checkpoint" / name
        if not has_checkpoint(folder):
            raise RunDirError(
                f"{run_dir} has no checkpoint for {name}; finish it with "
                f"'tertulia run {recipe_name} --resume {run_dir}'"
            )
        groups, meta = load_checkpoint(folder, require=("model",))
        group = "ema" if "ema" in groups else "model"
        source = checkpoint_folder(folder) / f"{group}.safetensors"
        load_weights(model, groups[group], source=source)
        if runtime is not None:
            runtime.place(model)
        model.eval()
        summaries[name] = {
            "steps": meta["step"],
            "skipped_steps": meta.get("skipped_steps", 0),
            "seconds": meta.get("seconds", 0.0),
        }
    return summaries
