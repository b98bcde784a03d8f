"""The ``sequence`` job's recipe (``delay-recall``, ``seq-digits``, ``compress-mnist``).

:class:`SequenceRecipe`: deep SSMs (or an MLP) classifying sequences, with its data and
model sections and the post-training compression section :class:`CompressConfig`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import RecipeBase, Section, TrainConfig


class SequenceDataConfig(Section):
    """Sequence-classification data (``tertulia.data.sequences``)."""

    kind: Literal["delay_recall", "digits", "mnist"] = "digits"
    delay: int = Field(500, ge=1, description="delay_recall: silent steps between token and cue")
    tokens: int = Field(8, ge=2, description="delay_recall: number of token classes")
    distractors: bool = Field(False, description="delay_recall: random tokens fill the delay")
    n_train: int = Field(2000, ge=1, description="delay_recall: training sequences")
    n_test: int = Field(500, ge=1, description="delay_recall: test sequences")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="digits: held-out share")
    path: str | None = Field(None, description="mnist: directory of IDX files")
    pixels: bool = Field(False, description="mnist: 784 one-pixel steps instead of 28 rows")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="training share held for validation")

    @model_validator(mode="after")
    def _check(self) -> SequenceDataConfig:
        if self.kind == "mnist" and not self.path:
            raise ValueError("data.kind=mnist needs data.path, a directory of MNIST IDX files")
        return self


class SequenceModelConfig(Section):
    """A residual stack of S4D, HiPPO-memory or Mamba layers (``tertulia.nn.seqmodel``),
    or (``kind: mlp``) an MLP on the flattened sequence (``tertulia.nn.mlp.MLPClassifier``,
    widths ``hidden``, dropout after every hidden layer but the last).

    ``kind: hippo`` uses fixed HiPPO memories (``tertulia.nn.hippo_memory``):
    ``init`` and ``compare_init`` are then ``legs`` (HiPPO-LegS) or ``random``
    (a random A of equal size and spectrum range).
    """

    kind: Literal["s4d", "hippo", "mamba", "mlp"] = "s4d"
    d_model: int = Field(64, ge=1)
    hidden: list[int] = Field(
        default_factory=lambda: [128, 64], description="mlp: hidden widths, e.g. [128, 64]"
    )
    layers: int = Field(2, ge=1)
    d_state: int = Field(64, ge=2, description="state size N per channel (hippo: memory size N)")
    init: Literal["legs", "lin", "inv", "real", "random"] = Field(
        "legs",
        description="S4D initialisation of the diagonal state matrix; hippo: legs or random",
    )
    compare_init: Literal["none", "legs", "lin", "inv", "real", "random"] = Field(
        "random",
        description="train a second S4D or hippo model with this init at equal budget; "
        "hippo: none, legs or random",
    )
    dt_min: float = Field(1e-3, gt=0)
    dt_max: float = Field(1e-1, gt=0)
    ssm_lr: float = Field(1e-3, gt=0, description="learning rate of the SSM parameters (no decay)")
    dropout: float = Field(0.0, ge=0, lt=1)
    pool: Literal["last", "mean"] = "last"

    @model_validator(mode="after")
    def _check(self) -> SequenceModelConfig:
        if self.dt_min > self.dt_max:
            raise ValueError(f"model.dt_min={self.dt_min} exceeds model.dt_max={self.dt_max}")
        if self.kind == "mlp" and (not self.hidden or min(self.hidden) < 1):
            raise ValueError(f"model.hidden={self.hidden} needs one or more widths ≥ 1")
        if self.kind == "hippo":
            allowed = {"init": ("legs", "random"), "compare_init": ("none", "legs", "random")}
            for key, value in (("init", self.init), ("compare_init", self.compare_init)):
                if value not in allowed[key]:
                    raise ValueError(
                        f"model.{key}={value!r} is not a hippo init; expected "
                        f"{' or '.join(allowed[key])}"
                    )
        return self


class CompressConfig(Section):
    """After training, prune a copy of each model to each sparsity (``tertulia.compress``).

    Empty ``sparsities`` (the default) compresses nothing; ``0`` in the list is the
    dense model fine-tuned with the same budget, the fair reference.
    """

    sparsities: list[float] = Field(
        default_factory=list, description="fractions pruned, each in [0, 1), e.g. [0.7, 0.9]"
    )
    schedule: Literal["cubic", "oneshot"] = "cubic"
    scope: Literal["global", "layer"] = "global"
    finetune_steps: int = Field(1000, ge=0, description="fine-tuning steps per sparsity")
    lr: float | None = Field(None, gt=0, description="fine-tuning learning rate (default train.lr)")
    dtype: Literal["fp32", "fp16", "int8"] = "fp16"

    @model_validator(mode="after")
    def _check(self) -> CompressConfig:
        bad = [s for s in self.sparsities if not 0.0 <= s < 1.0]
        if bad:
            raise ValueError(f"compress.sparsities must lie in [0, 1); got {bad}")
        return self


class SequenceRecipe(RecipeBase):
    """Recipes ``delay-recall`` and ``seq-digits``: deep SSMs classifying sequences."""

    task: Literal["sequence"] = "sequence"
    name: str = "seq-digits"
    description: str = ""
    seed: int = 0
    data: SequenceDataConfig = SequenceDataConfig()
    model: SequenceModelConfig = SequenceModelConfig()
    train: TrainConfig = TrainConfig()
    compress: CompressConfig = CompressConfig()
