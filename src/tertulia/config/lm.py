"""The ``lm`` job's recipe (``hope-lm``): character-level language models at equal steps.

:class:`LMRecipe` and its data and per-model sections.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import RecipeBase, Section, TrainConfig


class LMDataConfig(Section):
    """Character-level text: CPython's documentation topics or a UTF-8 file."""

    source: Literal["pydoc", "file"] = "pydoc"
    path: str | None = Field(None, description="source=file: a UTF-8 text file")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="the tail kept for validation")
    context: int = Field(256, ge=2, description="characters per training window")

    @model_validator(mode="after")
    def _check(self) -> LMDataConfig:
        if self.source == "file" and not self.path:
            raise ValueError("data.source=file needs data.path, a UTF-8 text file")
        return self


class LMModelConfig(Section):
    """One language model of an ``lm`` recipe (``tertulia.nn.lm``)."""

    d: int = Field(128, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1, description="transformer: attention heads")
    d_state: int = Field(16, ge=1, description="mamba: SSM state size")
    periods: list[int] = Field(
        default_factory=lambda: [1, 4, 16], description="hope: CMS level periods"
    )
    chunk: int = Field(16, ge=1, description="hope: tokens per memory-update chunk")


class LMRecipe(RecipeBase):
    """Recipe ``hope-lm``: character-level language models at equal steps, bits per character."""

    task: Literal["lm"] = "lm"
    name: str = "hope-lm"
    description: str = ""
    seed: int = 0
    data: LMDataConfig = LMDataConfig()
    models: dict[Literal["hope", "transformer", "mamba"], LMModelConfig] = Field(
        default_factory=lambda: {
            "hope": LMModelConfig(),
            "transformer": LMModelConfig(),
            "mamba": LMModelConfig(layers=6),
        },
        description="the models to train, each with its size",
    )
    train: TrainConfig = TrainConfig(steps=1000, batch_size=16, lr=2e-3, warmup=50, ema=0.0)

    @model_validator(mode="after")
    def _check(self) -> LMRecipe:
        if not self.models:
            raise ValueError("models needs at least one of hope, transformer, mamba")
        for name, m in self.models.items():
            if name == "transformer" and m.d % m.heads:
                raise ValueError(f"models.transformer.d={m.d} must be divisible by heads={m.heads}")
        return self
