"""The ``velora`` job's recipe: math and language experts, a router and a fusion.

:class:`VeloraRecipe` and its sections (data, experts, router, fusion, the phase-3
unfreezing schedule) and :data:`VELORA_GROUPS`, the layer groups that schedule names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import RecipeBase, Section, TrainConfig

VELORA_GROUPS = (
    "router",
    "fusion",
    "math.heads",
    "math.arith",
    "math.encoder",
    "language.head",
    "language.encoder",
)


class VeloraDataConfig(Section):
    """Math and language datasets (``tertulia.data.velora``), generated or read from CSVs."""

    n_math: int = Field(6000, ge=10, description="math items over train/val/test")
    n_language: int = Field(6000, ge=10, description="language items over train/val/test")
    n_extrapolation: int = Field(1000, ge=1, description="math items with operands 10x beyond")
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    low: float = Field(1.0, gt=0, description="smallest operand magnitude in training")
    high: float = Field(100.0, gt=0, description="operand magnitudes below this in training")
    path: str | None = Field(
        None,
        description="directory with math_dataset.csv and language_dataset.csv (with a split"
        " column) to read instead of generating",
    )
    max_len: int = Field(160, ge=8, description="tokens per text (longer texts are cut)")

    @model_validator(mode="after")
    def _check(self) -> VeloraDataConfig:
        if self.low >= self.high:
            raise ValueError(f"data.low={self.low} must be below data.high={self.high}")
        return self


class ExpertConfig(Section):
    """A byte-level expert: S4D encoder width, depth and state size, and its phase-1 training."""

    d_model: int = Field(64, ge=4)
    layers: int = Field(2, ge=1)
    d_state: int = Field(32, ge=2, description="S4D state size N per channel (even)")
    train: TrainConfig = TrainConfig(steps=1500, batch_size=64, lr=3e-3, warmup=50, ema=0.0)


class RouterConfig(Section):
    """The neural router (``tertulia.nn.moe.Router``) and the weights of its losses."""

    d_model: int = Field(32, ge=4, description="width of the router's byte encoder")
    k: int = Field(1, ge=1, le=2, description="experts per input")
    noisy: bool = Field(False, description="noisy top-k gating while training")
    hidden: int = Field(0, ge=0, description="hidden width of the gating MLP (0: linear)")
    capacity_factor: float | None = Field(None, gt=0, description="items per expert cap (train)")
    supervised: float = Field(1.0, ge=0, description="weight of the domain cross-entropy")
    balance: float = Field(1e-2, ge=0, description="weight of the load-balancing loss")
    z_loss: float = Field(1e-3, ge=0, description="weight of the router z-loss")


class FusionConfig(Section):
    kind: Literal["weighted", "attention"] = Field(
        "weighted", description="router-weighted sum, or attention over expert outputs"
    )


class UnfreezeStep(Section):
    """Layer groups that start learning at ``start`` (steps into phase 3), at lr × lr_mult."""

    groups: list[str] = Field(min_length=1)
    start: int = Field(0, ge=0)
    lr_mult: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> UnfreezeStep:
        for g in self.groups:
            if g not in VELORA_GROUPS:
                raise ValueError(
                    f"unknown layer group {g!r}; groups are: {', '.join(VELORA_GROUPS)}"
                )
        return self


def _default_unfreeze() -> list[UnfreezeStep]:
    return [
        UnfreezeStep(groups=["router", "fusion"], start=0, lr_mult=1.0),
        UnfreezeStep(groups=["math.heads", "language.head"], start=0, lr_mult=0.3),
        UnfreezeStep(groups=["math.encoder", "language.encoder"], start=200, lr_mult=0.1),
    ]


class FinetuneConfig(Section):
    """Phase 3: gradual unfreezing on the mixed set with per-group learning-rate multipliers."""

    train: TrainConfig = TrainConfig(steps=600, batch_size=64, lr=1e-3, warmup=20, ema=0.0)
    schedule: list[UnfreezeStep] = Field(default_factory=_default_unfreeze)

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        seen: set[str] = set()
        for stage in self.schedule:
            for g in stage.groups:
                if g in seen:
                    raise ValueError(f"layer group {g!r} appears twice in finetune.schedule")
                seen.add(g)
        return self


class VeloraRecipe(RecipeBase):
    """Recipe ``velora``: math and language experts, a router and a fusion, in three phases."""

    task: Literal["velora"] = "velora"
    name: str = "velora"
    description: str = ""
    seed: int = 0
    data: VeloraDataConfig = VeloraDataConfig()
    math: ExpertConfig = ExpertConfig()
    language: ExpertConfig = ExpertConfig()
    router: RouterConfig = RouterConfig()
    fusion: FusionConfig = FusionConfig()
    phase2: TrainConfig = Field(
        TrainConfig(steps=400, batch_size=64, lr=3e-3, warmup=20, ema=0.0),
        description="phase 2: router and fusion with the experts frozen",
    )
    finetune: FinetuneConfig = FinetuneConfig()
    explain: int = Field(12, ge=0, description="inputs whose routing the report explains")
