"""The ``recall`` job: associative recall beyond an attention window.

``tertulia run recall`` (``task: recall``): sequences of key–value pairs, a gap
of filler tokens and a query (:mod:`tertulia.data.recall`). Training draws each
batch at a random distance in [2P, ``train_max`` · W]; the test sets sit at
``eval_multiples`` × W. Models (:mod:`tertulia.nn.lm`):

* ``titans`` — a Titans neural memory (:class:`tertulia.nn.titans.NeuralMemory`)
  behind a token shift, written at test time token by token and read at the query;
* ``sliding_attention`` — a causal Transformer whose attention sees the last
  W tokens only (with ``layers`` blocks its reach is ``layers · (W − 1)`` steps).

The answer is the value token scored highest at the last position (logits over
the whole vocabulary; chance is 1 / values). ``metrics.json``: ``{"models":
{name: {"accuracy_4x", "accuracy": {multiple: acc}, …}}}``.

Legend: P pairs, W the attention window.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..build import count_parameters
from ..config import RecallModelConfig, RecallRecipe
from ..data.recall import RecallSet, RecallVocab, recall_set
from ..nn import lm
from ..nn.titans import NeuralMemory
from ..runs import Event, EventFn, close_run, fit_model, load_trained, no_event, open_run
from ..runtime import CPU, Runtime, on_cpu
from ..train.tasks import TaskBase
from .base import Job, LoadedRun


def vocab_of(recipe: RecallRecipe) -> RecallVocab:
    d = recipe.data
    return RecallVocab(keys=d.keys, values=d.values, fillers=d.fillers)


def test_sets(recipe: RecallRecipe) -> dict[float, RecallSet]:
    d, v = recipe.data, vocab_of(recipe)
    return {
        m: recall_set(
            d.n_test,
            distance=max(int(round(m * d.window)), 2 * d.pairs),
            pairs=d.pairs,
            vocab=v,
            seed=recipe.seed + 10_000 + i,
        )
        for i, m in enumerate(d.eval_multiples)
    }


def build_recall_model(name: str, m: RecallModelConfig, recipe: RecallRecipe) -> nn.Module:
    """The model ``name`` (titans or sliding_attention), built on the CPU."""
    with on_cpu():
        return _build_recall_model(name, m, recipe)


def _build_recall_model(name: str, m: RecallModelConfig, recipe: RecallRecipe) -> nn.Module:
    vocab = vocab_of(recipe).size
    if name == "sliding_attention":
        longest = (
            2 * recipe.data.pairs
            + 2
            + int(max(recipe.data.train_max, *recipe.data.eval_multiples) * recipe.data.window)
        )
        return lm.transformer_lm(
            vocab, m.d, m.layers, heads=m.heads, context=longest, window=recipe.data.window
        )

    return lm.memory_lm(vocab, m.d, m.layers, memory=lambda: NeuralMemory(m.d, chunk=m.chunk))


class RecallTask(TaskBase):
    """Cross-entropy of the answer at the last position; a random distance per batch."""

    def __init__(self, model: nn.Module, recipe: RecallRecipe, *, runtime: Runtime = CPU):
        self.runtime = runtime
        self.model, self.recipe, self.vocab = runtime.place(model), recipe, vocab_of(recipe)

    def _logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Last-position logits (float32) of ``tokens`` moved to the device, under autocast."""
        with self.runtime.autocast():
            return self.model(tokens.to(self.runtime.device))[:, -1].float()

    def sample_batch(self, generator: torch.Generator) -> RecallSet:
        """A fresh batch, made on the CPU (the trainer moves it)."""
        d = self.recipe.data
        low, high = 2 * d.pairs, max(int(d.train_max * d.window), 2 * d.pairs)
        distance = int(torch.randint(low, high + 1, (1,), generator=generator, device="cpu"))
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device="cpu"))
        return recall_set(
            self.recipe.train.batch_size,
            distance=distance,
            pairs=d.pairs,
            vocab=self.vocab,
            seed=seed,
        )

    def loss(self, batch: RecallSet, step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.forward_module(batch.tokens)[:, -1].float()
        loss = F.cross_entropy(logits, batch.label)
        acc = float((logits.argmax(-1) == batch.label).float().mean())
        return loss, {"loss": float(loss.detach()), "accuracy": acc}

    @torch.no_grad()
    def accuracy(self, data: RecallSet, batch: int = 100) -> float:
        was = self.model.training
        self.model.eval()
        right = 0
        for i in range(0, len(data), batch):
            logits = self._logits(data.tokens[i : i + batch]).cpu()
            right += int((logits.argmax(-1) == data.label[i : i + batch].cpu()).sum())
        self.model.train(was)
        return right / len(data)

    def validation_nll(self) -> float:
        data = recall_set(
            64,
            distance=self.recipe.data.window,
            pairs=self.recipe.data.pairs,
            vocab=self.vocab,
            seed=self.recipe.seed + 99,
        )
        with torch.no_grad():
            logits = self._logits(data.tokens)
            return float(F.cross_entropy(logits, data.label.to(logits.device)))


def _results(
    recipe: RecallRecipe, tests: dict[float, RecallSet], runtime: Runtime
) -> dict[str, Any]:
    """metrics.json of a run, before any model is judged."""
    d = recipe.data
    return {
        "task": "recall",
        "recipe": recipe.name,
        "description": recipe.description,
        "data": {
            "pairs": d.pairs,
            "window": d.window,
            "distances": {str(m): t.distance for m, t in tests.items()},
            "chance_accuracy": 1.0 / d.values,
        },
        "params": {},
        "models": {},
        "train": {},
        "runtime": runtime.describe(),
    }


def _judge(task: RecallTask, tests: dict[float, RecallSet]) -> dict[str, Any]:
    accuracy = {str(mult): task.accuracy(t) for mult, t in tests.items()}
    return {"accuracy_4x": accuracy[str(4.0)], "accuracy": accuracy}


def run_recall(
    recipe: RecallRecipe,
    out: Path,
    *,
    resume: bool = False,
    command: str = "",
    on_event: EventFn = no_event,
) -> dict[str, Any]:
    """Train and judge both models into ``out``; returns metrics.json's content."""
    started = time.perf_counter()
    tests = test_sets(recipe)
    runtime = open_run(
        recipe,
        out,
        resume=resume,
        command=command,
        on_event=on_event,
        data={
            "source": "associative recall",
            "sizes": {
                "train": recipe.train.steps * recipe.train.batch_size,
                "val": 64,
                "test": sum(len(t) for t in tests.values()),
            },
            "unit": "sequences",
            "seconds": time.perf_counter() - started,
        },
    )
    results = _results(recipe, tests, runtime)
    for index, (name, m) in enumerate(recipe.models.items()):
        torch.manual_seed(recipe.seed + index)
        model = build_recall_model(name, m, recipe)
        task = RecallTask(model, recipe, runtime=runtime)
        results["train"][name] = fit_model(
            task,
            recipe.train,
            name=name,
            seed=recipe.seed + 1000,
            out=out,
            recipe_name=recipe.name,
            on_event=on_event,
        )
        results["params"][name] = count_parameters(model)
        results["models"][name] = _judge(task, tests)
    return close_run(out, results, on_event)


def load_recall(recipe: RecallRecipe, run_dir: Path) -> LoadedRun:
    """The run's trained models (EMA weights), on ``recipe.runtime``'s device; each maps
    token ids (B, T) to logits (B, T, V)."""
    models = {name: build_recall_model(name, m, recipe) for name, m in recipe.models.items()}
    summaries = load_trained(models, run_dir, recipe.name, Runtime.of(recipe))
    return LoadedRun(run_dir, recipe, models, summaries)


def evaluate_recall(
    recipe: RecallRecipe, run_dir: Path, *, on_event: EventFn = no_event
) -> dict[str, Any]:
    """Re-judge the run's trained models (accuracy against distance); rewrite metrics.json
    and the report. Nothing is trained."""
    runtime = Runtime.of(recipe)
    loaded = load_recall(recipe, run_dir)
    tests = test_sets(recipe)
    results = _results(recipe, tests, runtime)
    on_event(Event.EVALUATE, {"models": list(loaded.models)})
    for name, model in loaded.models.items():
        results["train"][name] = loaded.summaries[name]
        results["params"][name] = count_parameters(model)
        results["models"][name] = _judge(RecallTask(model, recipe, runtime=runtime), tests)
    return close_run(run_dir, results, on_event, announce=False)


JOB = Job(
    tasks=("recall",),
    run=run_recall,
    evaluate=evaluate_recall,
    load=load_recall,
    model_names=lambda recipe: list(recipe.models),
    metric_keys=("accuracy_4x",),
    higher_is_better=frozenset({"accuracy_4x"}),
    main_metric=(None, "accuracy_4x"),
)
