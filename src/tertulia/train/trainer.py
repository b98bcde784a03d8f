"""The training loop: optimiser, schedule, clipping, EMA, NaN guard, checkpoints.

The trainer knows only a :class:`~tertulia.train.tasks.Task`: it calls the
members of that protocol and nothing else, on no model. The optimiser comes from
the model's own parameter groups (:mod:`tertulia.train.groups`). Everything
that decides the next step is either checkpointed or a pure function of the
step, so a run killed at any moment and resumed from its last checkpoint
continues exactly as if it had never stopped:

* learning rate: linear warm-up then cosine decay to ``min_lr_ratio·lr``,
  ``lr(t)`` computed from t;
* EMA decay: ``min(ema, (1+t)/(10+t))``, from t;
* batches: drawn from a ``torch.Generator`` whose state is saved;
* torch's global RNG (random asynchronous orders) is saved too.

With ``layer_groups`` (:mod:`tertulia.train.stages`) named parameter groups
start learning at their own steps and rates (gradual unfreezing); with
``keep_best`` the best-validating weights are kept beside the latest ones.
When the task has a block plan (``train.blocks`` of an orchestra), only the cells
of the current block learn (:mod:`tertulia.train.blocks`); frozen cells keep their
weights and optimiser state bit-identical. Solver statistics (forward and adjoint iterations,
samples whose solve did not converge) and the autograd memory of a step are
accumulated, checkpointed and reported in the summary: the trainer keeps the mean
over training of every numeric log value, and the task's ``training_summary``
says which of them the summary reports, under which names.

The log (``train_log.jsonl``) holds at most one line per model and step: the
step's logs at a ``log_every`` step, with ``val_nll`` at a checkpoint step. A
resumed trainer first drops its model's lines past the checkpoint it resumes
from, so the log of a run killed and resumed reads as one uninterrupted run.

A step whose loss or gradient norm is not finite is skipped and counted;
``nan_patience`` consecutive skips stop training with
:class:`~tertulia.errors.TrainingDiverged`, leaving the last good checkpoint.

Progress is reported through an ``on_step(step, total, logs)`` callback: the
library never prints.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_text
from ..config import TrainConfig
from ..errors import RunDirError, TrainingDiverged
from . import distributed
from .blocks import BlockFreezer
from .checkpoint import (
    checkpoint_folder,
    has_checkpoint,
    latest_step,
    load_checkpoint,
    load_weights,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
)
from .groups import build_optimizer, declared_settings, parameter_groups
from .stages import LayerGroup, drop_frozen_grads, staged_parameter_groups
from .tasks import Task

StepCallback = Callable[[int, int, dict[str, float]], None]


@dataclass
class TrainSummary:
    steps: int
    skipped_steps: int
    seconds: float
    resumed_from: int
    last_logs: dict[str, float]
    stats: dict[str, float] = field(default_factory=dict)


class SavedTensorMeter:
    """Bytes of distinct tensors autograd saves for backward during a step (activations).

    Parameters are excluded (they exist anyway); a storage saved by several
    operations is counted once. This is the memory that grows with the number
    of unrolled rounds in BPTT and stays flat for implicit differentiation.
    """

    def __init__(self, exclude: list[torch.Tensor]):
        self.exclude = {p.untyped_storage().data_ptr() for p in exclude}
        self.seen: dict[int, int] = {}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.exclude:
            self.seen[ptr] = storage.nbytes()
        return t

    @property
    def megabytes(self) -> float:
        return sum(self.seen.values()) / 2**20

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Warm-up then cosine: ``lr·t/warmup`` for t < warmup, then cosine to ``min_lr_ratio·lr``."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(cfg.steps - cfg.warmup, 1)
    progress = min((step - cfg.warmup) / span, 1.0)
    floor = cfg.min_lr_ratio
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class Trainer:
    """Fit a task's model for ``cfg.steps`` steps, resumable from its checkpoint folder."""

    def __init__(
        self,
        task: Task,
        cfg: TrainConfig,
        *,
        name: str = "model",
        seed: int = 0,
        checkpoint_dir: Path | None = None,
        log_path: Path | None = None,
        on_step: StepCallback | None = None,
        validate: Callable[[], float] | None = None,
        meta: dict[str, Any] | None = None,
        layer_groups: Sequence[LayerGroup] | None = None,
        keep_best: bool = False,
    ):
        """Args beyond the task and config:

        task: a :class:`~tertulia.train.tasks.Task` (derive from
            :class:`~tertulia.train.tasks.TaskBase` for the defaults).
        name, seed: the model's name in logs and checkpoints; the batch-sampling seed.
        checkpoint_dir, log_path: where checkpoints and JSON-lines logs go (None: nowhere).
        on_step: progress callback ``(step, total, logs)``.
        validate: a lower-is-better validation score, computed at every checkpoint.
        meta: extra JSON saved with each checkpoint.
        layer_groups: train only these parameters, each group from its ``start`` step at
            ``lr_mult`` × lr (:mod:`tertulia.train.stages`); default: every parameter
            with ``requires_grad``, all from step 0.
        keep_best: also keep the weights (EMA when on) with the best ``validate`` score in
            ``checkpoint_dir/best`` (:meth:`load_best_into_model`).
        """
        if not isinstance(task, Task):
            raise TypeError(
                f"{type(task).__name__} does not implement the Task protocol; derive it from "
                "tertulia.train.tasks.TaskBase"
            )
        self.task: Task = task
        self.cfg, self.name, self.seed = cfg, name, seed
        self.checkpoint_dir = checkpoint_dir
        self.log_path = log_path
        self.on_step = on_step
        self.validate = validate
        self.meta = meta or {}
        self.runtime = self.task.runtime  # device and precision
        self.model = self.runtime.place(self.task.model)
        self.keep_best = keep_best and validate is not None and checkpoint_dir is not None
        self.best: float = math.inf
        # the optimiser (AdamW or DMGD, MultiFrequency for periods) over the model's groups
        if layer_groups is not None:
            declared = declared_settings(self.model)
            groups = staged_parameter_groups(layer_groups, cfg.weight_decay, declared=declared)
            self.optimizer = build_optimizer(groups, cfg)
            self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        else:
            self.optimizer = build_optimizer(parameter_groups(self.model, cfg.weight_decay), cfg)
            self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.ddp = distributed.wrap(self.model)  # the model itself unless torch.distributed runs
        self.ema: dict[str, torch.Tensor] | None = None
        if cfg.ema > 0:
            self.ema = {k: p.detach().clone() for k, p in self.model.named_parameters()}
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0
        self.skipped = 0
        self.seconds = 0.0
        self.freezer: BlockFreezer | None = None
        plan = self.task.block_plan()  # None: every parameter learns at every step
        if plan is not None:
            self.freezer = BlockFreezer.from_plan(plan, self.optimizer)
        # running sums over training (checkpointed): "sum.<key>" and "steps.<key>" of every
        # finite numeric log value, and the peak activation memory
        self.stats: dict[str, float] = {"peak_activation_mb": 0.0}

    # ------------------------------------------------------------------- state

    def ema_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state_dict with parameters replaced by their EMA."""
        sd = self.model.state_dict()
        if self.ema is not None:
            sd.update(self.ema)
        return sd

    def save(self) -> None:
        """Checkpoint weights, EMA, optimiser and RNG states and counters (rank 0 writes)."""
        if self.checkpoint_dir is None:
            return
        if not distributed.is_main():  # rank 0 writes; the others wait until it is whole
            distributed.barrier()
            return
        opt_tensors, opt_meta = optimizer_to_tensors(self.optimizer)
        train_state = {f"optim.{k}": v for k, v in opt_tensors.items()}
        train_state["rng.torch"] = torch.get_rng_state()
        train_state["rng.batches"] = self.generator.get_state()
        if self.runtime.is_cuda:  # dropout and other draws on the GPU
            train_state["rng.cuda"] = torch.cuda.get_rng_state(self.runtime.device)
        groups = {"model": self.model.state_dict(), "train_state": train_state}
        if self.ema is not None:
            groups["ema"] = self.ema_state_dict()
        meta = {
            **self.meta,
            "model": self.name,
            "total_steps": self.cfg.steps,
            "skipped_steps": self.skipped,
            "seconds": self.seconds,
            "stats": self.stats,
            "optimizer": opt_meta,
            "best": self.best if math.isfinite(self.best) else None,
        }
        save_checkpoint(self.checkpoint_dir, step=self.step, groups=groups, meta=meta)
        distributed.barrier()

    def _save_best(self, score: float) -> None:
        self.best = score
        assert self.checkpoint_dir is not None
        if not distributed.is_main():
            return
        save_checkpoint(
            self.checkpoint_dir / "best",
            step=self.step,
            groups={"model": self.ema_state_dict()},
            meta={**self.meta, "model": self.name, "score": score},
        )

    def load_best_into_model(self) -> int | None:
        """Load the best-scoring weights kept by ``keep_best``; returns their step."""
        if self.checkpoint_dir is None or not has_checkpoint(self.checkpoint_dir / "best"):
            return None
        best = self.checkpoint_dir / "best"
        groups, meta = load_checkpoint(best, require=("model",))
        load_weights(
            self.model, groups["model"], source=checkpoint_folder(best) / "model.safetensors"
        )
        return int(meta["step"])

    def resume(self) -> int:
        """Restore everything from the latest checkpoint; returns the step resumed from.

        Without a checkpoint the model starts at step 0. Either way the model's log lines
        past that step (written by a run killed before its next checkpoint) are dropped.

        Raises:
            RunDirError: one line naming the file, for a checkpoint that is unreadable or
                does not fit the model (see :func:`~tertulia.train.checkpoint.load_weights`).
        """
        if self.checkpoint_dir is None:
            return 0
        if not has_checkpoint(self.checkpoint_dir):
            self._truncate_log(0)
            return 0
        folder = checkpoint_folder(self.checkpoint_dir)
        groups, meta = load_checkpoint(self.checkpoint_dir, require=("model", "train_state"))
        load_weights(self.model, groups["model"], source=folder / "model.safetensors")
        if self.ema is not None and "ema" in groups:
            self.ema = self._ema_from(groups["ema"], folder / "ema.safetensors")
        state = groups["train_state"]
        state_file = folder / "train_state.safetensors"
        if "optimizer" not in meta:
            raise RunDirError(f'{folder / "meta.json"}: no "optimizer" state')
        opt = {k.removeprefix("optim."): v for k, v in state.items() if k.startswith("optim.")}
        optimizer_from_tensors(self.optimizer, opt, meta["optimizer"], source=state_file)
        try:
            torch.set_rng_state(state["rng.torch"])
            self.generator.set_state(state["rng.batches"])
            if self.runtime.is_cuda and "rng.cuda" in state:
                torch.cuda.set_rng_state(state["rng.cuda"], self.runtime.device)
        except (KeyError, RuntimeError, TypeError) as exc:
            raise RunDirError(f"{state_file}: no valid random-number state ({exc})") from None
        self.step = int(meta["step"])
        self.skipped = int(meta.get("skipped_steps", 0))
        self.seconds = float(meta.get("seconds", 0.0))
        self.stats.update(meta.get("stats", {}))
        if meta.get("best") is not None:
            self.best = float(meta["best"])
        self._truncate_log(self.step)
        return self.step

    def _ema_from(self, saved: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
        """The EMA of every parameter from ``saved``; RunDirError when one is missing or
        has another shape."""
        assert self.ema is not None
        ema = {}
        for k, v in self.ema.items():
            if k not in saved or saved[k].shape != v.shape:
                found = "missing" if k not in saved else f"shape {tuple(saved[k].shape)}"
                raise RunDirError(
                    f"{source}: the weights do not fit the model of config.yaml ({k}: {found}, "
                    f"the model has {tuple(v.shape)}); was config.yaml edited?"
                )
            ema[k] = saved[k].to(v.device).clone()
        return ema

    def _truncate_log(self, step: int) -> None:
        """Drop this model's log lines past ``step`` (and torn lines), atomically."""
        if self.log_path is None or not distributed.is_main() or not self.log_path.exists():
            return
        kept = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a torn last line from a killed process
            if not isinstance(rec, dict):
                continue
            step_of = rec.get("step", 0)
            if rec.get("model") == self.name and isinstance(step_of, int | float):
                if step_of > step:
                    continue
            kept.append(line)
        atomic_write_text(self.log_path, "".join(k + "\n" for k in kept))

    def _log(self, record: dict[str, Any]) -> None:
        if self.log_path is None or not distributed.is_main():
            return
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def _update_ema(self) -> None:
        if self.ema is None:
            return
        decay = min(self.cfg.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for k, p in self.model.named_parameters():
                self.ema[k].lerp_(p.detach(), 1 - decay)

    def load_ema_into_model(self) -> None:
        """Replace the model's parameters by their EMA (what evaluation uses)."""
        if self.ema is not None:
            self.model.load_state_dict(self.ema_state_dict())

    # -------------------------------------------------------------------- loop

    def fit(self) -> TrainSummary:
        """Train from the latest checkpoint (or step 0) to ``cfg.steps``; the summary."""
        distributed_forward = self.ddp is not self.model
        if distributed_forward:  # the forward goes through DDP's gradient hooks
            self.task.set_forward_module(self.ddp)
        try:
            return self._fit()
        finally:
            if distributed_forward:
                self.task.set_forward_module(None)

    def _fit(self) -> TrainSummary:
        cfg = self.cfg
        resumed_from = self.resume()
        self.model.train()
        streak = 0
        logs: dict[str, float] = {}
        t_last = time.perf_counter()
        while self.step < cfg.steps:
            lr = learning_rate(self.step, cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            batch = self.task.sample_batch(self.generator)  # the same global batch on every rank
            if self.ddp is not self.model:
                batch = distributed.shard(batch, distributed.rank(), distributed.world_size())
            batch = self.runtime.to(batch)
            measure = (self.step + 1) % cfg.log_every == 0 or self.step == 0
            meter = SavedTensorMeter(self.params) if measure else None
            with meter.hooks() if meter else nullcontext(), self.runtime.autocast():
                loss, logs = self.task.loss(batch, step=self.step + 1)
            if meter is not None:
                logs["activation_mb"] = meter.megabytes
                self.stats["peak_activation_mb"] = max(
                    self.stats["peak_activation_mb"], meter.megabytes
                )
            ok = distributed.all_true(bool(torch.isfinite(loss)))  # every rank skips together
            if ok:
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                logs.update(self.task.after_backward())
                live = drop_frozen_grads(self.optimizer, self.step)
                if live:
                    logs["layer_groups_live"] = float(len(live))
                if self.freezer is not None:
                    self.freezer.mask_grads(self.step)
                    logs["block"] = float(self.freezer.schedule.block_index(self.step))
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.clip)
                ok = bool(torch.isfinite(grad_norm))
                logs["grad_norm"] = float(grad_norm)
            self._count(logs)
            if ok:
                if self.freezer is not None:
                    self.freezer.step(self.step)
                else:
                    self.optimizer.step()
                self._update_ema()
                streak = 0
            else:
                self.optimizer.zero_grad(set_to_none=True)
                self.skipped += 1
                streak += 1
            self.step += 1
            now = time.perf_counter()
            self.seconds += now - t_last
            t_last = now
            logs["lr"] = lr
            if streak >= cfg.nan_patience:
                raise TrainingDiverged(self._diverged_message(streak))
            last = self.step == cfg.steps
            record: dict[str, Any] = {}
            if self.step % cfg.log_every == 0 or last:
                record.update(logs)
            if self.step % cfg.checkpoint_every == 0 or last:
                if self.validate is not None:
                    self.model.eval()
                    val = self.validate()
                    self.model.train()
                    logs["val_nll"] = record["val_nll"] = val
                    if self.keep_best and val < self.best:
                        self._save_best(val)
                if record:  # one line per step, written before the checkpoint that keeps it
                    self._log({"model": self.name, "step": self.step, **record})
                    record = {}
                self.save()
                t_last = time.perf_counter()
            if record:
                self._log({"model": self.name, "step": self.step, **record})
            if self.on_step is not None:
                self.on_step(self.step, cfg.steps, logs)
        return TrainSummary(
            steps=self.step,
            skipped_steps=self.skipped,
            seconds=self.seconds,
            resumed_from=resumed_from,
            last_logs=logs,
            stats=self.summary_stats(),
        )

    def _count(self, logs: dict[str, float]) -> None:
        """Add this step's finite numeric log values to the running sums."""
        st = self.stats
        for key, value in logs.items():
            if isinstance(value, int | float) and math.isfinite(value):
                st[f"sum.{key}"] = st.get(f"sum.{key}", 0.0) + float(value)
                st[f"steps.{key}"] = st.get(f"steps.{key}", 0.0) + 1.0

    def log_means(self) -> dict[str, float]:
        """Mean over the training steps so far of every numeric log value (each over the
        steps that logged a finite value of it)."""
        st = self.stats
        return {
            key.removeprefix("sum."): value / st[f"steps.{key.removeprefix('sum.')}"]
            for key, value in st.items()
            if key.startswith("sum.")
        }

    def summary_stats(self) -> dict[str, float]:
        """The peak activation memory and the task's summary of the log means (for an
        orchestra: solver iterations and the unconverged fraction)."""
        out = {"peak_activation_mb": round(self.stats["peak_activation_mb"], 3)}
        out.update(self.task.training_summary(self.log_means()))
        return out

    def _diverged_message(self, streak: int) -> str:
        where = "no checkpoint was written yet"
        step = latest_step(self.checkpoint_dir) if self.checkpoint_dir is not None else None
        if step is not None:
            where = f"last good checkpoint kept in {self.checkpoint_dir} (step {step})"
        return (
            f"training of {self.name} diverged: loss or gradient non-finite for {streak} "
            f"consecutive steps (at step {self.step}, {self.skipped} skipped in all); {where}; "
            "lower train.lr, raise train.clip or check the data"
        )
