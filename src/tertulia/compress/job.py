"""``tertulia compress RUN_DIR``: prune a finished run's models and judge them again.

For every trained model of the run (:mod:`tertulia.compress.targets`: the
orchestra, MLP, SSM forecasters and comparison orchestras of a forecasting run;
the S4D / HiPPO / Mamba / MLP classifiers of a sequence run; the whole VELORA
system), starting from its evaluated weights:

1. the dense test metrics and the dense safetensors size;
2. pruning by the chosen schedule — ``cubic`` (gradual, over the first 40 %
   of ``finetune_steps``, ``prune_until``), ``oneshot`` (all at once, then fine-tuning) or
   ``threshold`` (|w| < τ) — with the masks enforced while the model fine-tunes
   on the run's own task and data for ``finetune_steps`` steps; the result is
   the fine-tuned weights (EMA where the run uses it) with the final mask applied
   (pruned weights are exactly zero);
3. a sparse checkpoint (:mod:`tertulia.compress.sparse_io`, fp32/fp16/int8)
   written into the new run directory; the compressed metrics are measured on
   the weights *loaded back* from it.

``metrics.json`` of the new directory follows the issue's contract for the
main model (the orchestra; else the run's first model): ``{"dense": {metric,
bytes, nonzero}, "compressed": {metric, bytes, nonzero, sparsity}}`` with
``metric`` the run's main metric (one-step nRMSE, accuracy, mixed score), plus
the same per model under ``models`` and the full test metrics of both.

Fine-tuning runs at the run's own learning rate (``lr`` overrides it) with a
cosine decay and no warm-up; the cubic schedule prunes over the first
``prune_until`` of the steps so the last ones recover at full sparsity.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from .._io import atomic_write
from ..errors import ConfigError, RunDirError
from ..runs import Event, EventFn, close_run, is_empty_dir, no_event, open_run
from ..train import Trainer
from .pruning import SCHEDULES, SCOPES, Pruner, prunable, sparsity_report
from .sparse_io import DTYPES, load_compressed, save_compressed
from .targets import Target


def _nonzero(model: torch.nn.Module) -> int:
    return int(sum(int((p != 0).sum()) for p in model.parameters()))


def check_settings(
    *,
    sparsity: float,
    schedule: str,
    threshold: float | None,
    dtype: str,
    scope: str,
    finetune_steps: int,
    prune_until: float,
) -> None:
    """ConfigError (one line) for settings :func:`compress_model` cannot use."""
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"--sparsity must be in [0, 1), got {sparsity}")
    if schedule not in SCHEDULES:
        raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if schedule == "threshold" and threshold is None:
        raise ConfigError("--schedule threshold needs --threshold TAU")
    if threshold is not None and threshold < 0:
        raise ConfigError(f"--threshold must be >= 0, got {threshold}")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if scope not in SCOPES:
        raise ConfigError(f"--scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if finetune_steps < 0:
        raise ConfigError(f"--finetune-steps must be >= 0, got {finetune_steps}")
    if not 0.0 < prune_until <= 1.0:
        raise ConfigError(f"prune_until must be in (0, 1], got {prune_until}")


def _histogram(dense: torch.nn.Module, comp: torch.nn.Module) -> dict[str, list]:
    w_dense = torch.cat([p.detach().flatten() for p in prunable(dense).values()]).cpu().numpy()
    w_comp = torch.cat([p.detach().flatten() for p in prunable(comp).values()]).cpu().numpy()
    edge = float(np.abs(w_dense).max()) or 1.0
    edges = np.linspace(-edge, edge, 81)
    return {
        "edges": edges.tolist(),
        "dense": np.histogram(w_dense, edges)[0].tolist(),
        "compressed": np.histogram(w_comp[w_comp != 0], edges)[0].tolist(),
    }


def compress_model(
    target: Target,
    folder: Path,
    *,
    sparsity: float = 0.8,
    schedule: str = "cubic",
    finetune_steps: int = 500,
    threshold: float | None = None,
    dtype: str = "fp16",
    scope: str = "global",
    lr: float | None = None,
    prune_until: float = 0.4,
    tag: str = "",
    label: str | None = None,
    dense_metrics: dict[str, Any] | None = None,
    on_event: EventFn = no_event,
) -> dict[str, Any]:
    """Prune and fine-tune a copy of ``target.model``; store it in ``folder``; judge it.

    Writes ``folder/<name>.dense.safetensors`` (the dense weights) and
    ``folder/<name><tag>.safetensors`` (the sparse checkpoint); the compressed
    metrics are measured on the weights loaded back from the latter; progress
    events name the model ``label`` (default its name). Returns
    ``{"dense", "compressed", "seconds", "layers", "histogram"}``.
    """
    check_settings(
        sparsity=sparsity,
        schedule=schedule,
        threshold=threshold,
        dtype=dtype,
        scope=scope,
        finetune_steps=finetune_steps,
        prune_until=prune_until,
    )
    name, dense = target.name, target.model
    t0 = time.perf_counter()
    dense.eval()
    if dense_metrics is None:
        dense_metrics = target.judge(dense)
    folder.mkdir(parents=True, exist_ok=True)
    dense_path = folder / f"{name}.dense.safetensors"
    sd = {k: v.detach().contiguous().cpu() for k, v in dense.state_dict().items()}
    atomic_write(dense_path, lambda tmp: save_file(sd, tmp))

    model = copy.deepcopy(dense)
    steps = max(finetune_steps, 1)
    train_cfg = {
        **target.train.model_dump(),
        "steps": steps,
        "lr": lr if lr is not None else target.train.lr,
        "warmup": 0,
        "checkpoint_every": steps + 1,
    }
    if "blocks" in train_cfg:
        train_cfg["blocks"] = {"kind": "none"}
    cfg = type(target.train)(**train_cfg)
    trainer = Trainer(target.make_task(model), cfg, name=name, seed=target.seed + 7)
    end = max(int(prune_until * finetune_steps), 1)
    pruner = Pruner(
        model,
        final=sparsity,
        schedule=schedule,
        start=0,
        end=end,
        every=max(end // 20, 1),
        threshold=threshold,
        scope=scope,
    )
    pruner.attach(trainer.optimizer)
    pruner.step(0)  # cubic: its first (zero) point; one-shot / threshold: all of it, now
    if schedule != "cubic":
        pruner.every = steps + 1
    if finetune_steps > 0:

        def on_step(step: int, total: int, logs: dict) -> None:
            pruner.step(step)
            payload = {"model": label or name, "step": step, "total": total, "logs": logs}
            on_event(Event.STEP, payload)

        trainer.on_step = on_step
        trainer.fit()
        if cfg.ema > 0:
            trainer.load_ema_into_model()  # EMA weights, as the dense run evaluates …
    if schedule == "cubic" and pruner.current < sparsity:
        pruner.step(end)  # no steps (or too few) to reach the target gradually
    pruner.masks.detach()
    pruner.masks.apply(model)  # … with the final mask on them (EMA decays, never hits 0)
    model.eval()
    path = folder / f"{name}{tag}.safetensors"
    info = save_compressed(path, model.state_dict(), dtype=dtype)
    back = copy.deepcopy(dense)
    back.load_state_dict(load_compressed(path))
    back.eval()
    comp_metrics = target.judge(back)
    report = sparsity_report(back)
    return {
        "dense": {
            "metric": dense_metrics[target.metric],
            "bytes": dense_path.stat().st_size,
            "nonzero": _nonzero(dense),
            "metrics": dense_metrics,
        },
        "compressed": {
            "metric": comp_metrics[target.metric],
            "bytes": info["bytes"],
            "nonzero": _nonzero(back),
            "sparsity": report["sparsity"],
            "metrics": comp_metrics,
        },
        "metric": target.metric,
        "higher_is_better": target.higher_is_better,
        "seconds": time.perf_counter() - t0,
        "layers": report["per_tensor"],
        "histogram": _histogram(dense, back),
    }


def check_request(
    out: Path,
    *,
    sparsity: float = 0.8,
    schedule: str = "cubic",
    finetune_steps: int | None = None,
    threshold: float | None = None,
    dtype: str = "fp16",
    scope: str = "global",
    prune_until: float = 0.4,
    **_: Any,  # the other settings of compress_targets, checked when they are used
) -> None:
    """ConfigError or RunDirError (one line) for a compression request that cannot run,
    before any model is loaded: bad settings, or an ``out`` that is not empty."""
    check_settings(
        sparsity=sparsity,
        schedule=schedule,
        threshold=threshold,
        dtype=dtype,
        scope=scope,
        finetune_steps=finetune_steps or 0,
        prune_until=prune_until,
    )
    if sparsity == 0.0:
        raise ConfigError("--sparsity must be in (0, 1), got 0.0")
    out = Path(out)
    if out.exists() and (not out.is_dir() or not is_empty_dir(out)):
        raise RunDirError(f"{out} is not empty; choose another --out")


def compress_targets(
    recipe: Any,
    targets: list[Target],
    source: str | Path,
    out: str | Path,
    *,
    sparsity: float = 0.8,
    schedule: str = "cubic",
    finetune_steps: int | None = None,
    threshold: float | None = None,
    dtype: str = "fp16",
    scope: str = "global",
    lr: float | None = None,
    prune_until: float = 0.4,
    models: list[str] | None = None,
    on_event: EventFn = no_event,
) -> dict[str, Any]:
    """Prune, fine-tune and store the ``targets`` of the run ``source`` (recipe ``recipe``)
    into the new run directory ``out``; write its metrics.json and report.

    ``models`` limits the work to those model names (default: all the targets);
    ``finetune_steps`` defaults to each model's own number of training steps. The
    targets come from the run's job (:func:`tertulia.jobs.compress_run` finds them).
    """
    check_request(
        Path(out),
        sparsity=sparsity,
        schedule=schedule,
        finetune_steps=finetune_steps,
        threshold=threshold,
        dtype=dtype,
        scope=scope,
        prune_until=prune_until,
    )
    out, run_dir = Path(out), Path(source)
    known = [t.name for t in targets]
    if models is not None:
        unknown = sorted(set(models) - set(known))
        if unknown:
            raise ConfigError(
                f"--models: {', '.join(unknown)} not in this run; its models are: "
                f"{', '.join(known)}"
            )
        targets = [t for t in targets if t.name in models]
    targets = [t for t in targets if prunable(t.model)]
    if not targets:
        raise RunDirError(f"{run_dir} has no model with weights to prune")
    runtime = open_run(recipe, out, resume=False, command="")
    results: dict[str, Any] = {
        "task": "compress",
        "recipe": recipe.name,
        "source_task": recipe.task,
        "source": str(Path(run_dir)),
        "settings": {
            "sparsity": sparsity,
            "schedule": schedule,
            "finetune_steps": finetune_steps,
            "threshold": threshold,
            "dtype": dtype,
            "scope": scope,
            "lr": lr,
            "prune_until": prune_until,
        },
        "models": {},
        "layers": {},
        "histograms": {},
        "runtime": runtime.describe(),
    }
    for target in targets:
        steps = target.train.steps if finetune_steps is None else finetune_steps
        on_event(Event.TRAIN_START, {"model": target.name, "total": max(steps, 1)})
        res = compress_model(
            target,
            out / "checkpoint",
            sparsity=sparsity,
            schedule=schedule,
            finetune_steps=steps,
            threshold=threshold,
            dtype=dtype,
            scope=scope,
            lr=lr,
            prune_until=prune_until,
            on_event=on_event,
        )
        results["layers"][target.name] = res.pop("layers")
        results["histograms"][target.name] = res.pop("histogram")
        res["finetune_steps"] = steps
        results["models"][target.name] = res
        on_event(Event.COMPRESS_END, {"model": target.name})
    main = "orchestra" if "orchestra" in results["models"] else next(iter(results["models"]))
    results["main"] = main
    results["metric"] = results["models"][main]["metric"]
    for part in ("dense", "compressed"):
        results[part] = {k: v for k, v in results["models"][main][part].items() if k != "metrics"}
    return close_run(out, results, announce=False)
