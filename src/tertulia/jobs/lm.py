"""The ``lm`` job: character-level language models at equal steps, in bits per character.

``tertulia run hope-lm`` (``task: lm``): text (CPython's documentation topics,
or a file) → each model of ``models`` (``hope``, ``transformer``, ``mamba``;
:mod:`tertulia.nn.lm`) trained by the shared trainer (progress, checkpoints,
resume) on random windows of ``data.context`` characters, ``train.steps``
steps each → bits per character on the validation tail, in non-overlapping
windows of ``data.context`` characters (each character predicted from the
characters before it in its window):

    bpc = (1 / N_val) Σ_t −log₂ p(c_t | c_{<t in its window})

HOPE's continuum-memory levels declare their period C (``Level.optim_groups``),
so the trainer steps them every C steps (:class:`tertulia.optim.MultiFrequency`).

Legend: N_val validation characters, c_t a character.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..build import count_parameters
from ..config import LMModelConfig, LMRecipe
from ..data.chars import CharCorpus, char_corpus, pydoc_text, read_text
from ..nn import lm
from ..nn.titans import NeuralMemory
from ..runs import Event, EventFn, close_run, fit_model, load_trained, no_event, open_run
from ..runtime import CPU, Runtime, on_cpu
from ..train.tasks import TaskBase
from .base import Job, LoadedRun

LN2 = math.log(2.0)



def load_corpus(recipe: LMRecipe) -> CharCorpus:
    d = recipe.data
    text = pydoc_text() if d.source == "pydoc" else read_text(d.path or "")
    corpus = char_corpus(text, val_fraction=d.val_fraction, min_split=d.context + 1)
    return corpus


def build_lm(name: str, m: LMModelConfig, vocab: int, context: int) -> nn.Module:
    """The model ``name`` (hope, transformer or mamba) of width ``m.d`` and ``m.layers`` blocks,
    built on the CPU (the task moves it)."""
    with on_cpu():
        return _build_lm(name, m, vocab, context)


def _build_lm(name: str, m: LMModelConfig, vocab: int, context: int) -> nn.Module:
    if name == "transformer":
        return lm.transformer_lm(vocab, m.d, m.layers, heads=m.heads, context=context)
    if name == "mamba":
        return lm.mamba_lm(vocab, m.d, m.layers, d_state=m.d_state)

    model = lm.hope_lm(
        vocab, m.d, m.layers, memory=lambda: NeuralMemory(m.d, chunk=m.chunk), periods=m.periods
    )
    return model


class LMTask(TaskBase):
    """Next-character cross-entropy on random training windows (the corpus on the device)."""

    def __init__(
        self,
        model: nn.Module,
        corpus: CharCorpus,
        *,
        context: int,
        batch_size: int,
        runtime: Runtime = CPU,
    ):
        self.runtime = runtime
        self.model, self.corpus = runtime.place(model), runtime.to(corpus)
        self.context, self.batch_size = context, batch_size

    def sample_batch(self, generator: torch.Generator) -> torch.Tensor:
        train = self.corpus.train
        n = len(train) - self.context - 1
        starts = torch.randint(n + 1, (self.batch_size,), generator=generator, device="cpu")
        offsets = torch.arange(self.context + 1, device="cpu")
        return train[(starts[:, None] + offsets).to(train.device)]  # (B, context + 1)

    def loss(self, batch: torch.Tensor, step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.forward_module(batch[:, :-1]).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        value = float(loss.detach())
        return loss, {"loss": value, "bpc": value / LN2}

    @torch.no_grad()
    def bpc(self, *, max_windows: int | None = None, batch: int = 16) -> float:
        """Bits per character on the validation tail (non-overlapping windows)."""
        was = self.model.training
        self.model.eval()
        val, c = self.corpus.val, self.context
        windows = (len(val) - 1) // c
        if max_windows is not None:
            windows = min(windows, max_windows)
        total, count = 0.0, 0
        for start in range(0, windows, batch):
            rows = torch.stack(
                [val[w * c : w * c + c + 1] for w in range(start, min(start + batch, windows))]
            )
            with self.runtime.autocast():
                logits = self.model(rows[:, :-1]).float()
            total += float(
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1), reduction="sum"
                )
            )
            count += rows[:, 1:].numel()
        self.model.train(was)
        return total / max(count, 1) / LN2

    def validation_nll(self) -> float:
        return self.bpc(max_windows=32) * LN2


def _results(recipe: LMRecipe, corpus: CharCorpus, runtime: Runtime) -> dict[str, Any]:
    """metrics.json of a run, before any model is judged."""
    return {
        "task": "lm",
        "recipe": recipe.name,
        "description": recipe.description,
        "data": {
            "source": recipe.data.source,
            "train_characters": len(corpus.train),
            "val_characters": len(corpus.val),
            "vocabulary": corpus.size,
            "context": recipe.data.context,
            "uniform_bpc": math.log2(corpus.size),
        },
        "params": {},
        "models": {},
        "train": {},
        "runtime": runtime.describe(),
    }


def run_lm(
    recipe: LMRecipe,
    out: Path,
    *,
    resume: bool = False,
    command: str = "",
    on_event: EventFn = no_event,
) -> dict[str, Any]:
    """Train and judge every model of the recipe into ``out``; returns metrics.json's content."""
    started = time.perf_counter()
    corpus = load_corpus(recipe)  # bad data fails before anything is written
    runtime = open_run(
        recipe,
        out,
        resume=resume,
        command=command,
        on_event=on_event,
        data={
            "source": recipe.data.source if recipe.data.source == "pydoc" else recipe.data.path,
            "sizes": {"train": len(corpus.train), "val": len(corpus.val), "test": 0},
            "unit": "characters",
            "seconds": time.perf_counter() - started,
        },
    )
    results = _results(recipe, corpus, runtime)
    for index, (name, m) in enumerate(recipe.models.items()):
        torch.manual_seed(recipe.seed + index)
        model = build_lm(name, m, corpus.size, recipe.data.context)
        task = LMTask(
            model,
            corpus,
            context=recipe.data.context,
            batch_size=recipe.train.batch_size,
            runtime=runtime,
        )
        results["train"][name] = fit_model(
            task,
            recipe.train,
            name=name,
            seed=recipe.seed + 1000,  # the same batches for every model
            out=out,
            recipe_name=recipe.name,
            on_event=on_event,
        )
        results["params"][name] = count_parameters(model)
        results["models"][name] = {"bpc": task.bpc()}
    return close_run(out, results, on_event)


def _load(recipe: LMRecipe, run_dir: Path, corpus: CharCorpus) -> LoadedRun:
    models = {
        name: build_lm(name, m, corpus.size, recipe.data.context)
        for name, m in recipe.models.items()
    }
    summaries = load_trained(models, run_dir, recipe.name, Runtime.of(recipe))
    return LoadedRun(run_dir, recipe, models, summaries)


def load_lm(recipe: LMRecipe, run_dir: Path) -> LoadedRun:
    """The run's trained language models (EMA weights), on ``recipe.runtime``'s device; each
    maps token ids (B, T) to next-character logits (B, T, V)."""
    return _load(recipe, run_dir, load_corpus(recipe))


def evaluate_lm(recipe: LMRecipe, run_dir: Path, *, on_event: EventFn = no_event) -> dict[str, Any]:
    """Re-judge the run's trained models (validation bits per character); rewrite
    metrics.json and the report. Nothing is trained."""
    corpus = load_corpus(recipe)
    runtime = Runtime.of(recipe)
    loaded = _load(recipe, run_dir, corpus)
    results = _results(recipe, corpus, runtime)
    on_event(Event.EVALUATE, {"models": list(loaded.models)})
    for name, model in loaded.models.items():
        task = LMTask(
            model,
            corpus,
            context=recipe.data.context,
            batch_size=recipe.train.batch_size,
            runtime=runtime,
        )
        results["train"][name] = loaded.summaries[name]
        results["params"][name] = count_parameters(model)
        results["models"][name] = {"bpc": task.bpc()}
    return close_run(run_dir, results, on_event, announce=False)


JOB = Job(
    tasks=("lm",),
    run=run_lm,
    evaluate=evaluate_lm,
    load=load_lm,
    model_names=lambda recipe: list(recipe.models),
    metric_keys=("bpc",),
    main_metric=(None, "bpc"),
)
