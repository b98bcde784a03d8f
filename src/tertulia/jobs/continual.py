"""The ``continual`` job: a stream of PDE regimes, and how much each model forgets.

``tertulia run continual`` (``task: continual``): the regimes are Burgers (or
heat / advection) trajectories with the viscosity ν changed at every phase
(``nus``). Each model sees the regimes one after another, ``train.steps``
Adam steps each, never returning to an earlier one; every ``eval_every`` steps
it is judged on the test split of *every* regime. Models, at equal parameters
and steps (:class:`tertulia.nn.memory.ContinuumMLP`):

* ``mlp`` — every parameter updated every step at ``train.lr``;
* ``cms`` — the same network under the continuum-memory rule
  (:class:`tertulia.optim.MultiFrequency`): level ℓ updated every C^(ℓ) steps
  with the mean gradient of its chunk, the input/output maps every
  ``model.io_period`` steps;
* ``mlp_slow`` (``slow_control``) — the plain MLP at ``train.lr / io_period``:
  the control that asks whether CMS is more than a smaller step.

With R[i, j] the test nRMSE on regime j after training on regime i (P regimes):

    forgetting = mean_{j < P} ( R[P−1, j] − R[j, j] )      final = mean_j R[P−1, j]

A forecaster maps the window of noisy frames to the next frame as
``x_t + Δ(window)`` trained by squared error on the noisy target; nRMSE is
measured against the clean field. ``metrics.json``: ``{"models": {name:
{"forgetting", "final", "R", …}}, "curves": …}``.

Legend: P regimes, R the regime-by-regime error matrix, C^(ℓ) a level's period.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..build import count_parameters
from ..config import ContinualRecipe
from ..data import load_dataset
from ..errors import RunDirError
from ..nn.memory import ContinuumMLP
from ..optim import MultiFrequency
from ..runs import Event, EventFn, close_run, load_trained, no_event, open_run
from ..runtime import CPU, Runtime, on_cpu
from ..train.checkpoint import save_checkpoint
from ..train.tasks import Split
from .base import Job, LoadedRun


def load_regimes(
    recipe: ContinualRecipe, device: torch.device | str = "cpu"
) -> list[dict[str, Split]]:
    """train / test :class:`Split` of every regime (one ν each, its own data seed), on
    ``device``."""
    regimes = []
    for index, nu in enumerate(recipe.nus):
        cfg = recipe.data.model_copy(update={"nu": nu, "seed": recipe.data.seed + index})
        with on_cpu():
            splits = load_dataset(cfg)
        regimes.append({k: Split(splits[k], cfg.window, device) for k in ("train", "test")})
    return regimes


@torch.no_grad()
def nrmse(model: torch.nn.Module, split: Split, runtime: Runtime = CPU) -> float:
    """One-step nRMSE of ``model`` on a whole split, against the clean field."""
    model.eval()
    batch = split.batch(torch.arange(len(split), device=split.y.device))
    with runtime.autocast():
        pred = batch.x[:, -1] + model(batch.x).float()
    model.train()
    return float((pred - batch.u).pow(2).mean().sqrt() / batch.u.pow(2).mean().sqrt())


def build_models(
    recipe: ContinualRecipe, runtime: Runtime = CPU
) -> dict[str, tuple[ContinuumMLP, Any]]:
    """Name → (network on ``runtime``'s device, optimiser); every network starts from the
    same weights."""
    m, d = recipe.model, recipe.data
    inputs, outputs = d.window * d.grid, d.grid
    lr, wd = recipe.train.lr, recipe.train.weight_decay

    def net(periods: list[int]) -> ContinuumMLP:
        torch.manual_seed(recipe.seed)
        with on_cpu():  # the same initial weights on every device
            model = ContinuumMLP(inputs, outputs, d=m.d, hidden=m.hidden, periods=periods)
        return runtime.place(model)

    plain = net([1] * len(m.periods))
    cms = net(m.periods)
    groups = cms.period_groups()
    groups[0]["period"] = m.io_period
    models: dict[str, tuple[ContinuumMLP, Any]] = {
        "mlp": (plain, torch.optim.AdamW(plain.parameters(), lr=lr, weight_decay=wd)),
        "cms": (cms, MultiFrequency(torch.optim.AdamW(groups, lr=lr, weight_decay=wd))),
    }
    if recipe.slow_control:
        slow = net([1] * len(m.periods))
        models["mlp_slow"] = (
            slow,
            torch.optim.AdamW(slow.parameters(), lr=lr / m.io_period, weight_decay=wd),
        )
    return models


def train_stream(
    recipe: ContinualRecipe,
    name: str,
    model: ContinuumMLP,
    optimizer: Any,
    regimes: list[dict[str, Split]],
    on_event: EventFn = no_event,
    runtime: Runtime = CPU,
) -> dict[str, Any]:
    """Train ``model`` on the regimes in order (forwards under ``runtime``'s autocast); the
    error matrix, curves and forgetting."""
    steps, batch = recipe.train.steps, recipe.train.batch_size
    gen = torch.Generator().manual_seed(recipe.seed + 1)  # same batches for every model
    total = steps * len(regimes)
    on_event(Event.TRAIN_START, {"model": name, "total": total})
    t0 = time.perf_counter()
    R: list[list[float]] = []
    curve_steps: list[int] = []
    curves: list[list[float]] = []
    k = 0
    model.train()
    for regime in regimes:
        split = regime["train"]
        for _ in range(steps):
            k += 1
            b = split.batch(torch.randint(len(split), (batch,), generator=gen, device="cpu"))
            with runtime.autocast():
                loss = (b.x[:, -1] + model(b.x).float() - b.y).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            if recipe.train.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.train.clip)
            optimizer.step()
            if k % recipe.eval_every == 0:
                curve_steps.append(k)
                curves.append([nrmse(model, r["test"], runtime) for r in regimes])
            on_event(
                Event.STEP,
                {"model": name, "step": k, "total": total, "logs": {"loss": float(loss.detach())}},
            )
        R.append([nrmse(model, r["test"], runtime) for r in regimes])
    P = len(regimes)
    forgetting = sum(R[P - 1][j] - R[j][j] for j in range(P - 1)) / (P - 1)
    result = {
        "forgetting": forgetting,
        "final": sum(R[P - 1]) / P,
        "learned": sum(R[j][j] for j in range(P)) / P,
        "R": R,
        "seconds": time.perf_counter() - t0,
    }
    on_event(Event.TRAIN_END, {"model": name, "steps": total, "seconds": result["seconds"]})
    return {**result, "curve": {"steps": curve_steps, "nrmse": curves}}


def run_continual(
    recipe: ContinualRecipe,
    out: Path,
    *,
    resume: bool = False,
    command: str = "",
    on_event: EventFn = no_event,
) -> dict[str, Any]:
    """Train every model along the regime stream into ``out``; returns metrics.json's content.

    The stream cannot stop half-way: ``--resume`` runs it again. Each network's final
    weights are kept in ``checkpoint/<name>/`` (for :func:`load_continual` and ``eval``).
    """
    started = time.perf_counter()
    runtime = Runtime.of(recipe)  # a device this machine lacks fails first
    regimes = load_regimes(recipe, runtime.device)  # bad data fails before anything is written
    open_run(
        recipe,
        out,
        resume=resume,
        command=command,
        on_event=on_event,
        data={
            "source": f"{recipe.data.equation}, ν = {', '.join(map(str, recipe.nus))}",
            "sizes": {
                "train": sum(len(r["train"]) for r in regimes),
                "val": 0,
                "test": sum(len(r["test"]) for r in regimes),
            },
            "unit": "windows",
            "seconds": time.perf_counter() - started,
        },
    )
    results: dict[str, Any] = {
        "task": "continual",
        "recipe": recipe.name,
        "description": recipe.description,
        "data": {
            "equation": recipe.data.equation,
            "nus": recipe.nus,
            "grid": recipe.data.grid,
            "window": recipe.data.window,
            "steps_per_regime": recipe.train.steps,
        },
        "periods": {"levels": recipe.model.periods, "io": recipe.model.io_period},
        "params": {},
        "models": {},
        "curves": {},
        "runtime": runtime.describe(),
    }
    for name, (model, optimizer) in build_models(recipe, runtime).items():
        res = train_stream(recipe, name, model, optimizer, regimes, on_event, runtime)
        steps = recipe.train.steps * len(regimes)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        meta = {"step": steps, "seconds": res["seconds"], "recipe": recipe.name}
        save_checkpoint(out / "checkpoint" / name, step=steps, groups={"model": state}, meta=meta)
        results["curves"][name] = res.pop("curve")
        results["models"][name] = res
        results["params"][name] = count_parameters(model)
    return close_run(out, results, on_event)


def load_continual(recipe: ContinualRecipe, run_dir: Path) -> LoadedRun:
    """The run's networks with their weights at the end of the stream, on
    ``recipe.runtime``'s device; each maps a window (B, w, G) to the next increment (B, G)."""
    models = {name: model for name, (model, _) in build_models(recipe, Runtime.of(recipe)).items()}
    summaries = load_trained(models, run_dir, recipe.name)
    shape = (recipe.data.window, recipe.data.grid)
    return LoadedRun(run_dir, recipe, models, summaries, input_shape=shape)


def evaluate_continual(
    recipe: ContinualRecipe, run_dir: Path, *, on_event: EventFn = no_event
) -> dict[str, Any]:
    """Re-judge the final networks on every regime's test split: the last row of each
    error matrix R, and the final error and forgetting that follow from it (the earlier rows
    were measured along the stream and stay as recorded); rewrite metrics.json."""
    path = run_dir / "metrics.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        rows = {name: results["models"][name]["R"] for name in results["models"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunDirError(f"{path} holds no continual results to re-judge ({exc})") from None
    runtime = Runtime.of(recipe)
    loaded = load_continual(recipe, run_dir)
    regimes = load_regimes(recipe, runtime.device)
    on_event(Event.EVALUATE, {"models": list(loaded.models)})
    P = len(regimes)
    for name, model in loaded.models.items():
        if name not in rows or len(rows[name]) != P:
            raise RunDirError(f"{path} has no {P}-regime error matrix for {name}")
        R = rows[name]
        R[P - 1] = [nrmse(model, r["test"], runtime) for r in regimes]
        row = results["models"][name]
        row["R"] = R
        row["final"] = sum(R[P - 1]) / P
        row["forgetting"] = sum(R[P - 1][j] - R[j][j] for j in range(P - 1)) / (P - 1)
    return close_run(run_dir, results, on_event, announce=False)


JOB = Job(
    tasks=("continual",),
    run=run_continual,
    evaluate=evaluate_continual,
    load=load_continual,
    model_names=lambda recipe: ["mlp", "cms"] + (["mlp_slow"] if recipe.slow_control else []),
    metric_keys=("forgetting", "final", "learned"),
    main_metric=("cms", "forgetting"),
)
