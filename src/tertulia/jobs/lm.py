"""The ``lm`` job: character-level language models at equal steps, in bits per character.

``tertulia run hope-lm`` (``task: lm``): text (CPython's documentation topics,
or a file) → each model of ``models`` (``hope``, ``transformer``, ``mamba``;
:mod:`tertulia.nn.lm`) trained by the shared trainer (progress, checkpoints,
resume) on random windows of ``data.context`` characters, ``train.steps``
steps each → bits per character on the validation tail, in non-overlapping
windows of ``data.context`` characters (each character predicted from the
characters before it in its window):

    bpc = (1 / N_val) Σ_t −log₂ p(c_t | c_{<t in its window})

HOPE's continuum-memory levels carry ``{"period": C}`` in their ``_optim`` tag,
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
from ..runs import EventFn, close_run, fit_model, no_event, open_run
from ..runtime import CPU, Runtime, on_cpu
from .base import Job

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
    for block in model.blocks:
        for level, c in zip(block.levels, m.periods, strict=True):
            if c > 1:
                for p in level.parameters():
                    p._optim = {"period": c}  # type: ignore[attr-defined]
    return model


class LMTask:
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
        logits = self.model(batch[:, :-1]).float()
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
    results: dict[str, Any] = {
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


JOB = Job(
    tasks=("lm",),
    run=run_lm,
    nothing_to_load="is a {task} run of recipe {name!r}: it has no trained models to load "
    "(its fitted parameters are in metrics.json)",
)
