"""The sequence-classification job: deep SSM stacks on delayed recall and digits.

``tertulia run delay-recall`` / ``seq-digits`` (``task: sequence``): data
(``tertulia.data.sequences``) → the recipe's model (an S4D, Mamba or
HiPPO-memory stack) and, for S4D and HiPPO, a twin with ``model.compare_init``
(HiPPO-LegS vs a random A at equal parameters and steps) → the shared trainer (progress,
checkpoints, resume) → accuracy and cross-entropy on the test split →
``metrics.json`` and the report (metrics table, training curves).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..build import count_parameters
from ..compress.job import compress_model
from ..compress.targets import Target
from ..config import SequenceRecipe
from ..data.sequences import SequenceSplit, delay_recall, digit_sequences, read_mnist_dir
from ..nn.hippo_memory import HippoMemory
from ..nn.mamba import MambaBlock
from ..nn.mlp import MLPClassifier
from ..nn.s4d import S4D
from ..nn.seqmodel import SequenceModel
from ..runs import Event, EventFn, close_run, fit_model, load_trained, no_event, open_run
from ..runtime import Runtime, on_cpu
from ..train.tasks import ClassifyTask
from .base import Job, LoadedRun


def load_splits(recipe: SequenceRecipe) -> dict[str, SequenceSplit]:
    """train / val / test splits of the recipe's data (val carved from train), on the CPU."""
    with on_cpu():
        return _load_splits(recipe)


def _load_splits(recipe: SequenceRecipe) -> dict[str, SequenceSplit]:
    d = recipe.data
    if d.kind == "delay_recall":
        splits = {
            "train": delay_recall(
                d.n_train,
                delay=d.delay,
                tokens=d.tokens,
                distractors=d.distractors,
                seed=recipe.seed,
            ),
            "test": delay_recall(
                d.n_test,
                delay=d.delay,
                tokens=d.tokens,
                distractors=d.distractors,
                seed=recipe.seed + 1,
            ),
        }
    elif d.kind == "digits":
        splits = digit_sequences(test_fraction=d.test_fraction, seed=recipe.seed)
    else:
        assert d.path is not None  # the config requires it
        splits = read_mnist_dir(d.path, as_rows=not d.pixels)
    train = splits["train"]
    n_val = max(1, int(round(d.val_fraction * len(train))))
    splits["val"] = SequenceSplit(train.x[:n_val], train.y[:n_val], train.classes)
    splits["train"] = SequenceSplit(train.x[n_val:], train.y[n_val:], train.classes)
    return splits


def build_sequence_model(
    recipe: SequenceRecipe, d_in: int, classes: int, init: str, *, steps: int = 1
) -> nn.Module:
    """The recipe's stack: S4D layers or fixed HiPPO memories (``kind: hippo``, init legs
    or random) of initialisation ``init``, or Mamba blocks; or (``kind: mlp``) an MLP on
    the flattened ``steps × d_in`` inputs.

    HiPPO memories have no ``ssm_parameters`` (A and B are fixed buffers), so the
    SSM learning-rate tagging below skips them. Built on the CPU (the task moves it).
    """
    with on_cpu():
        return _build_sequence_model(recipe, d_in, classes, init, steps)


def _build_sequence_model(
    recipe: SequenceRecipe, d_in: int, classes: int, init: str, steps: int
) -> nn.Module:
    m = recipe.model
    if m.kind == "mlp":
        return MLPClassifier(steps * d_in, classes, tuple(m.hidden), dropout=m.dropout)
    if m.kind == "s4d":
        def block() -> nn.Module:
            return S4D(m.d_model, N=m.d_state, init=init, dt_min=m.dt_min, dt_max=m.dt_max)

    elif m.kind == "hippo":
        def block() -> nn.Module:
            return HippoMemory(m.d_model, N=m.d_state, init=init)

    else:
        def block() -> nn.Module:
            return MambaBlock(m.d_model, d_state=m.d_state, dt_min=m.dt_min, dt_max=m.dt_max)

    model = SequenceModel(
        d_in,
        classes,
        d_model=m.d_model,
        layers=m.layers,
        block=block,
        pool=m.pool,
        dropout=m.dropout,
    )
    for module in model.modules():  # SSM parameters: own learning rate, no weight decay
        if hasattr(module, "ssm_parameters"):
            module.ssm_lr = m.ssm_lr  # S4DKernel.optim_groups: this base lr, no decay
    return model


def model_inits(recipe: SequenceRecipe) -> dict[str, str]:
    """Name → initialisation of each model the recipe trains (the main one, then its twin)."""
    m = recipe.model
    if m.kind in ("mamba", "mlp"):
        return {m.kind: m.init}
    inits = {f"{m.kind}_{m.init}": m.init}
    if m.compare_init not in ("none", m.init):
        inits[f"{m.kind}_{m.compare_init}"] = m.compare_init
    return inits


def sequence_target(
    name: str, model: nn.Module, splits: dict[str, Any], recipe: SequenceRecipe, index: int
) -> Target:
    """A sequence classifier of a run (its ``index``-th model) as a compression target."""
    batch, runtime = recipe.train.batch_size, Runtime.of(recipe)
    return Target(
        name=name,
        model=model,
        make_task=lambda m: ClassifyTask(m, splits, batch_size=batch, runtime=runtime),
        judge=lambda m: ClassifyTask(m, splits, batch_size=batch, runtime=runtime).scores("test"),
        metric="accuracy",
        higher_is_better=True,
        train=recipe.train,
        seed=recipe.seed + 1000 + index,
    )


def compress_own(
    recipe: SequenceRecipe,
    name: str,
    model: nn.Module,
    splits: dict[str, SequenceSplit],
    index: int,
    dense_metrics: dict[str, Any],
    out: Path,
    on_event: EventFn = no_event,
) -> dict[str, Any]:
    """Prune a copy of a trained model to each of ``recipe.compress.sparsities``.

    Each copy fine-tunes for ``compress.finetune_steps`` with its masks enforced
    and is stored as ``checkpoint/compressed/<name>.s<percent>.safetensors``;
    its row holds the test accuracy of the weights loaded back, the bytes on
    disk and their ratio to the dense safetensors file.
    """
    c = recipe.compress
    target = sequence_target(name, model, splits, recipe, index)
    rows, dense, histogram = [], None, None
    for sparsity in c.sparsities:
        label = f"{name} {sparsity:.0%} pruned"
        on_event(Event.TRAIN_START, {"model": label, "total": max(c.finetune_steps, 1)})
        res = compress_model(
            target,
            out / "checkpoint" / "compressed",
            sparsity=sparsity,
            schedule=c.schedule,
            finetune_steps=c.finetune_steps,
            dtype=c.dtype,
            scope=c.scope,
            lr=c.lr,
            tag=f".s{round(100 * sparsity):02d}",
            label=label,
            dense_metrics=dense_metrics,
            on_event=on_event,
        )
        dense = res["dense"]
        comp = res["compressed"]
        rows.append(
            {
                "target": sparsity,
                "sparsity": comp["sparsity"],
                "metric": comp["metric"],
                "metrics": comp["metrics"],
                "bytes": comp["bytes"],
                "nonzero": comp["nonzero"],
                "bytes_ratio": comp["bytes"] / dense["bytes"],
                "seconds": res["seconds"],
            }
        )
        if sparsity == max(c.sparsities):
            histogram = res["histogram"]
    assert dense is not None
    return {
        "metric": "accuracy",
        "dtype": c.dtype,
        "finetune_steps": c.finetune_steps,
        "dense": {k: dense[k] for k in ("metric", "bytes", "nonzero")},
        "rows": rows,
        "histogram": histogram,
    }


def run_sequence(
    recipe: SequenceRecipe,
    out: Path,
    *,
    resume: bool = False,
    command: str = "",
    on_event: EventFn = no_event,
) -> dict[str, Any]:
    """Train and judge the recipe's models into ``out``; returns metrics.json's content."""
    started = time.perf_counter()
    splits = load_splits(recipe)  # bad data fails before anything is written
    train = splits["train"]
    runtime = open_run(
        recipe,
        out,
        resume=resume,
        command=command,
        on_event=on_event,
        data={
            "source": recipe.data.kind,
            "sizes": {k: len(splits[k]) for k in ("train", "val", "test")},
            "unit": "sequences",
            "seconds": time.perf_counter() - started,
        },
    )
    inits = model_inits(recipe)
    d_in, classes = int(train.x.shape[-1]), train.classes

    results: dict[str, Any] = {
        "task": "sequence",
        "recipe": recipe.name,
        "description": recipe.description,
        "data": {
            "kind": recipe.data.kind,
            "steps": int(train.x.shape[1]),
            "channels": d_in,
            "classes": classes,
            "n_train": len(train),
            "n_test": len(splits["test"]),
            "chance_accuracy": 1.0 / classes,
        },
        "params": {},
        "models": {},
        "train": {},
        "runtime": runtime.describe(),
    }
    for index, (name, init) in enumerate(inits.items()):
        torch.manual_seed(recipe.seed)  # equal seeds: the twins differ by their init only
        model = build_sequence_model(recipe, d_in, classes, init, steps=int(train.x.shape[1]))
        task = ClassifyTask(model, splits, batch_size=recipe.train.batch_size, runtime=runtime)
        results["train"][name] = fit_model(
            task,
            recipe.train,
            name=name,
            seed=recipe.seed + 1000 + index,
            out=out,
            recipe_name=recipe.name,
            on_event=on_event,
        )
        model.eval()
        results["params"][name] = count_parameters(model)
        results["models"][name] = task.scores("test")
        if recipe.compress.sparsities:
            results.setdefault("compression", {})[name] = compress_own(
                recipe, name, model, splits, index, results["models"][name], out, on_event
            )
    return close_run(out, results, on_event)


def _load(recipe: SequenceRecipe, run_dir: Path, splits: dict[str, SequenceSplit]) -> LoadedRun:
    train = splits["train"]
    steps, d_in, classes = int(train.x.shape[1]), int(train.x.shape[-1]), train.classes
    models = {
        name: build_sequence_model(recipe, d_in, classes, init, steps=steps)
        for name, init in model_inits(recipe).items()
    }
    summaries = load_trained(models, run_dir, recipe.name)
    return LoadedRun(run_dir, recipe, models, summaries, input_shape=(steps, d_in))


def load_sequence(recipe: SequenceRecipe, run_dir: Path) -> LoadedRun:
    """The run's trained classifiers (EMA weights); each maps sequences (B, L, C) to class
    logits (B, K)."""
    loaded = _load(recipe, run_dir, load_splits(recipe))
    runtime = Runtime.of(recipe)
    for model in loaded.models.values():
        runtime.place(model)
    return loaded


def sequence_targets(recipe: SequenceRecipe, run_dir: Path) -> list[Target]:
    """Every trained classifier of the run (EMA weights), judged by test accuracy."""
    splits = load_splits(recipe)
    loaded = _load(recipe, run_dir, splits)
    return [
        sequence_target(name, model, splits, recipe, index)
        for index, (name, model) in enumerate(loaded.models.items())
    ]


def evaluate_sequence(
    recipe: SequenceRecipe, run_dir: Path, *, on_event: EventFn = no_event
) -> dict[str, Any]:
    """Re-score a run: resuming a finished run only judges it again."""
    return run_sequence(recipe, run_dir, resume=True, on_event=on_event)


JOB = Job(
    tasks=("sequence",),
    run=run_sequence,
    evaluate=evaluate_sequence,
    load=load_sequence,
    targets=sequence_targets,
    data_dir=lambda folder: ["data.kind=mnist", f"data.path={folder}"],
    model_names=lambda recipe: list(model_inits(recipe)),
    metric_keys=("accuracy", "nll"),
    higher_is_better=frozenset({"accuracy"}),
    main_metric=(None, "accuracy"),
)
