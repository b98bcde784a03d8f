"""The ``continual`` job's recipe: a stream of PDE regimes, a plain MLP vs CMS (nested learning).

:class:`ContinualRecipe` and its model section; its PDE ``data`` section is the
forecasting job's :class:`~tertulia.config.base.DataConfig` (always generated) and its
``train`` section the plain :class:`~tertulia.config.base.TrainLoopConfig`: the job runs
its own loop (:func:`tertulia.jobs.continual.train_stream`), not the shared trainer.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import DataConfig, RecipeBase, Section, TrainLoopConfig


class ContinualModelConfig(Section):
    """The forecaster of ``continual`` (``tertulia.nn.memory.ContinuumMLP``) and its CMS rule."""

    d: int = Field(128, ge=1, description="width of the residual levels")
    hidden: int = Field(256, ge=1, description="hidden width inside each level")
    periods: list[int] = Field(
        default_factory=lambda: [1, 4, 16],
        description="CMS: update period C of each level, in steps (the plain MLP: all 1)",
    )
    io_period: int = Field(4, ge=1, description="CMS: update period of the input/output maps")

    @model_validator(mode="after")
    def _check(self) -> ContinualModelConfig:
        if not self.periods or min(self.periods) < 1:
            raise ValueError(f"model.periods={self.periods} needs one or more periods ≥ 1")
        return self


class ContinualRecipe(RecipeBase):
    """Recipe ``continual``: a stream of PDE regimes; forgetting of a plain MLP vs CMS."""

    task: Literal["continual"] = "continual"
    name: str = "continual"
    description: str = ""
    seed: int = 0
    data: DataConfig = DataConfig(grid=64, frames=30, n_train=128, n_val=8, n_test=32)
    nus: list[float] = Field(
        default_factory=lambda: [0.3, 0.1, 0.03, 0.01],
        description="one regime per value of data.nu, trained in this order",
    )
    model: ContinualModelConfig = ContinualModelConfig()
    train: TrainLoopConfig = Field(
        TrainLoopConfig(steps=1000, batch_size=64, lr=1e-3),
        description="the job's own loop: no schedule, EMA, checkpoints or optimiser choice",
    )
    eval_every: int = Field(100, ge=1, description="steps between evaluations on every regime")
    slow_control: bool = Field(
        True,
        description="also train the plain MLP at lr / io_period: is CMS more than a smaller step?",
    )

    @model_validator(mode="after")
    def _check(self) -> ContinualRecipe:
        if len(self.nus) < 2:
            raise ValueError(f"nus={self.nus}: forgetting needs at least two regimes")
        if min(self.nus) <= 0:
            raise ValueError(f"nus={self.nus}: every viscosity must be > 0")
        if self.data.path is not None:
            raise ValueError(
                f"data.path={self.data.path!r} does not apply to continual recipes: every "
                "regime is generated with its own viscosity from nus; drop data.path"
            )
        return self
