"""``tertulia compress RUN_DIR``: prune a finished forecasting run's models and judge them again.

For every trained model of the run (orchestra, MLP, SSM forecasters, comparison
orchestras), starting from its evaluated (EMA) weights:

1. the dense test metrics and the dense safetensors size;
2. pruning by the chosen schedule — ``cubic`` (gradual, over the first 70 %
   of ``finetune_steps``), ``oneshot`` (all at once, then fine-tuning) or
   ``threshold`` (|w| < τ) — with the masks enforced while the model fine-tunes
   on the run's own task and data for ``finetune_steps`` steps; the result is
   the fine-tuned EMA weights with the final mask applied (pruned weights are
   exactly zero);
3. a sparse checkpoint (:mod:`tertulia.compress.sparse_io`, fp32/fp16/int8)
   written into the new run directory; the compressed metrics are measured on
   the weights *loaded back* from it.

``metrics.json`` of the new directory follows the issue's contract for the
main model (the orchestra): ``{"dense": {metric, bytes, nonzero}, "compressed":
{metric, bytes, nonzero, sparsity}}`` with ``metric`` = one-step nRMSE, plus
the same per model under ``models`` and the full test metrics of both.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from .._io import atomic_write, atomic_write_json, atomic_write_text, json_safe
from ..errors import ConfigError, RunDirError
from .pruning import Pruner, prunable, sparsity_report
from .sparse_io import DTYPES, load_compressed, save_compressed

EventFn = Callable[[str, dict[str, Any]], None]


def _noop(event: str, payload: dict[str, Any]) -> None:
    pass


def _nonzero(model: torch.nn.Module) -> int:
    return int(sum(int((p != 0).sum()) for p in model.parameters()))


def compress_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    sparsity: float = 0.8,
    schedule: str = "cubic",
    finetune_steps: int = 500,
    threshold: float | None = None,
    dtype: str = "fp16",
    on_event: EventFn = _noop,
) -> dict[str, Any]:
    """Prune, fine-tune and store every model of the forecasting run ``run_dir`` into ``out``."""
    from ..config import TrainConfig
    from ..data import load_dataset
    from ..pipeline import load_run, make_task
    from ..report import build_report
    from ..train import Trainer

    if not 0.0 < sparsity < 1.0:
        raise ConfigError(f"--sparsity must be in (0, 1), got {sparsity}")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if schedule == "threshold" and threshold is None:
        raise ConfigError("--schedule threshold needs --threshold TAU")
    if finetune_steps < 0:
        raise ConfigError(f"--finetune-steps must be >= 0, got {finetune_steps}")
    loaded = load_run(run_dir)  # RunDirError for runs without trained forecasters
    recipe = loaded.recipe
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise RunDirError(f"{out} is not empty; choose another --out")
    splits = load_dataset(recipe.data)
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoint").mkdir(exist_ok=True)
    atomic_write_text(out / "config.yaml", recipe.to_yaml())
    results: dict[str, Any] = {
        "task": "compress",
        "recipe": recipe.name,
        "source": str(Path(run_dir)),
        "settings": {
            "sparsity": sparsity,
            "schedule": schedule,
            "finetune_steps": finetune_steps,
            "threshold": threshold,
            "dtype": dtype,
        },
        "models": {},
        "layers": {},
        "histograms": {},
    }
    for name, dense in loaded.models.items():
        if not prunable(dense):
            continue
        on_event("train_start", {"model": name, "total": max(finetune_steps, 1)})
        t0 = time.perf_counter()
        dense_task = make_task(recipe, dense, splits)
        dense_metrics = dense_task.evaluate("test", recipe.eval)["metrics"]
        dense_path = out / "checkpoint" / f"{name}.dense.safetensors"
        sd = {k: v.detach().contiguous() for k, v in dense.state_dict().items()}
        atomic_write(dense_path, lambda tmp, sd=sd: save_file(sd, tmp))

        model = copy.deepcopy(dense)
        cfg = TrainConfig(
            **{
                **recipe.train.model_dump(),
                "steps": max(finetune_steps, 1),
                "lr": recipe.train.lr * 0.5,
                "warmup": 0,
                "checkpoint_every": max(finetune_steps, 1) + 1,
                "blocks": {"kind": "none"},
            }
        )
        task = make_task(recipe, model, splits)
        trainer = Trainer(task, cfg, name=name, seed=recipe.seed + 7)
        end = max(int(0.7 * finetune_steps), 1)
        pruner = Pruner(
            model,
            final=sparsity,
            schedule=schedule,
            start=0,
            end=end,
            every=max(end // 20, 1),
            threshold=threshold,
        )
        pruner.attach(trainer.optimizer)
        if schedule != "cubic" or finetune_steps == 0:
            pruner.step(0)  # one-shot / threshold: prune before fine-tuning
            pruner.every = max(finetune_steps, 1) + 1
        if finetune_steps > 0:
            pruner.step(0)

            def on_step(
                step: int, total: int, logs: dict, name: str = name, pruner: Pruner = pruner
            ) -> None:
                pruner.step(step)
                on_event("step", {"model": name, "step": step, "total": total, "logs": logs})

            trainer.on_step = on_step
            trainer.fit()
            trainer.load_ema_into_model()  # EMA weights, as the dense run evaluates …
        pruner.masks.detach()
        pruner.masks.apply(model)  # … with the final mask on them (EMA decays, never hits 0)
        model.eval()
        path = out / "checkpoint" / f"{name}.safetensors"
        info = save_compressed(path, model.state_dict(), dtype=dtype)
        back = copy.deepcopy(dense)
        back.load_state_dict(load_compressed(path))
        back.eval()
        comp_metrics = make_task(recipe, back, splits).evaluate("test", recipe.eval)["metrics"]
        report = sparsity_report(back)
        results["models"][name] = {
            "dense": {
                "metric": dense_metrics["nrmse_1step"],
                "bytes": dense_path.stat().st_size,
                "nonzero": _nonzero(dense),
                "metrics": dense_metrics,
            },
            "compressed": {
                "metric": comp_metrics["nrmse_1step"],
                "bytes": info["bytes"],
                "nonzero": _nonzero(back),
                "sparsity": report["sparsity"],
                "metrics": comp_metrics,
            },
            "seconds": time.perf_counter() - t0,
        }
        results["layers"][name] = report["per_tensor"]
        w_dense = torch.cat([p.detach().flatten() for p in prunable(dense).values()]).numpy()
        w_comp = torch.cat([p.detach().flatten() for p in prunable(back).values()]).numpy()
        edges = np.linspace(-np.abs(w_dense).max(), np.abs(w_dense).max(), 81)
        results["histograms"][name] = {
            "edges": edges.tolist(),
            "dense": np.histogram(w_dense, edges)[0].tolist(),
            "compressed": np.histogram(w_comp[w_comp != 0], edges)[0].tolist(),
        }
        on_event("compress_end", {"model": name})
    if not results["models"]:
        raise RunDirError(f"{run_dir} has no model with weights to prune")
    main = "orchestra" if "orchestra" in results["models"] else next(iter(results["models"]))
    results["main"] = main
    for part in ("dense", "compressed"):
        results[part] = {k: v for k, v in results["models"][main][part].items() if k != "metrics"}
    atomic_write_json(out / "metrics.json", json_safe(results))
    build_report(out)
    return results
