"""The ``recall`` job's recipe: Titans memory vs sliding-window attention at equal parameters.

:class:`RecallRecipe` and its data and per-model sections.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import RecipeBase, Section, TrainConfig


class RecallDataConfig(Section):
    """Associative recall at a distance (``tertulia.data.recall``)."""

    keys: int = Field(16, ge=2)
    values: int = Field(16, ge=2)
    fillers: int = Field(8, ge=1)
    pairs: int = Field(4, ge=1, description="key–value pairs shown before the gap")
    window: int = Field(32, ge=2, description="W: the sliding-attention window")
    train_max: float = Field(4.0, gt=0, description="training distances up to this many W")
    eval_multiples: list[float] = Field(
        default_factory=lambda: [1.0, 2.0, 4.0], description="test distances, in windows W"
    )
    n_test: int = Field(500, ge=1, description="test sequences per distance")

    @model_validator(mode="after")
    def _check(self) -> RecallDataConfig:
        if self.pairs > min(self.keys, self.values):
            raise ValueError(f"data.pairs={self.pairs} exceeds min(keys, values)")
        if 4.0 not in self.eval_multiples:
            raise ValueError("data.eval_multiples must include 4.0 (the contract's accuracy_4x)")
        return self


class RecallModelConfig(Section):
    d: int = Field(64, ge=4)
    layers: int = Field(1, ge=1)
    heads: int = Field(4, ge=1, description="sliding_attention: heads")
    chunk: int = Field(8, ge=1, description="titans: tokens per memory-update chunk")


class RecallRecipe(RecipeBase):
    """Recipe ``recall``: Titans memory vs sliding-window attention at equal parameters."""

    task: Literal["recall"] = "recall"
    name: str = "recall"
    description: str = ""
    seed: int = 0
    data: RecallDataConfig = RecallDataConfig()
    models: dict[Literal["titans", "sliding_attention"], RecallModelConfig] = Field(
        default_factory=lambda: {
            "titans": RecallModelConfig(),
            "sliding_attention": RecallModelConfig(layers=2),
        }
    )
    train: TrainConfig = TrainConfig(steps=1500, batch_size=32, lr=3e-3, warmup=50, ema=0.0)
