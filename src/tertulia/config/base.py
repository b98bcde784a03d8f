"""What every recipe shares: the base section, the recipe base and the shared sections.

:class:`Section` is the base of every section (unknown keys are rejected, assignments
validated); :class:`RecipeBase` the base of every recipe (a ``runtime`` section,
``with_runtime`` and ``to_yaml``). The sections used by several jobs live here too:
the PDE data (``forecast`` and ``continual``), the training sections (every neural job)
and the runtime (every recipe). So do the messages of unknown keys and validation
errors, which :class:`RecipeBase` needs as well as :mod:`tertulia.config.load`.

A job's train section holds only the keys that job reads: :class:`TrainLoopConfig`
(any training loop: ``continual``) ⊂ :class:`TrainConfig` (the shared trainer:
``sequence``, ``lm``, ``recall``, ``velora``) ⊂ ``ForecastTrainConfig`` (the orchestra's
keys, in :mod:`tertulia.config.forecast`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)

from ..errors import ConfigError


class Section(BaseModel):
    """Base of every section: unknown keys are rejected, assignments are validated, types
    are strict.

    Strict: a bool is not a number, a string is not a number (``d: "8"``) and a number is
    not a string (``name: 2024``); a whole number is a valid float (``lr: 1``) but a float
    is not a valid integer (``d: 8.0``), so a value is never silently converted. YAML
    floats in exponent form without a dot (``1e-3``) are floats: recipes are read with
    :class:`~tertulia.config.load.RecipeLoader`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


# ------------------------------------------------------------------------ data


class InitialConditionConfig(Section):
    """Random initial conditions ``u0(x) = Σ_k a_k sin(k x + φ_k)``."""

    max_mode: int = Field(3, ge=1, description="largest wavenumber k drawn")
    terms: int = Field(3, ge=1, description="number of sine terms summed")
    amplitude: float = Field(1.0, gt=0, description="amplitudes a_k ~ U(-A, A) / sqrt(terms)")


class NoiseConfig(Section):
    """Heteroscedastic observation noise ``y = u + σ ε``, ``σ = σ0 + σ1 |u|``."""

    sigma0: float = Field(0.02, ge=0)
    sigma1: float = Field(0.05, ge=0)


class DataConfig(Section):
    """Periodic 1-D PDE trajectories on ``x ∈ [0, 2π)``, generated or read from a file."""

    equation: Literal["burgers", "heat", "advection"] = "burgers"
    path: str | None = Field(
        None, description="read trajectories from a .npz/.safetensors file instead of generating"
    )
    grid: int = Field(128, ge=8)
    nu: float = Field(0.05, gt=0, description="viscosity / diffusivity")
    speed: float = Field(1.0, description="advection speed c")
    dt: float = Field(0.1, gt=0, description="time between saved frames")
    frames: int = Field(40, ge=3, description="saved frames per trajectory (t = 0, dt, …)")
    solver_dt: float = Field(1e-3, gt=0, description="internal time step of the Burgers solver")
    refine: int = Field(
        2, ge=1, description="Burgers is solved on grid·refine points, then subsampled to grid"
    )
    n_train: int = Field(512, ge=1)
    n_val: int = Field(32, ge=1)
    n_test: int = Field(64, ge=1)
    seed: int = 0
    ic: InitialConditionConfig = InitialConditionConfig()
    noise: NoiseConfig = NoiseConfig()
    window: int = Field(4, ge=1, description="past noisy frames a model sees")
    cache: bool = True


# ----------------------------------------------------------------------- train

# The order of the train keys in a resolved recipe, whichever train class holds them: the
# order of the single train section that every job shared before the split, so that a
# forecasting run's config.yaml diffs cleanly against older runs, and every job's train
# section lists its keys in the same order. Keys missing here come last.
TRAIN_KEY_ORDER = (
    "mode",
    "grad_rounds",
    "steps",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup",
    "min_lr_ratio",
    "clip",
    "ema",
    "loss",
    "beta",
    "consistency",
    "state_norm",
    "cell_weights",
    "checkpoint_every",
    "log_every",
    "nan_patience",
    "threads",
    "deq",
    "blocks",
    "jac_reg",
    "jac_reg_every",
    "jac_reg_samples",
    "rho_every",
    "optimizer",
)
_TRAIN_RANK = {key: rank for rank, key in enumerate(TRAIN_KEY_ORDER)}


class OptimizerConfig(Section):
    """The training optimiser: AdamW (default) or deep momentum (``tertulia.optim.DMGD``)."""

    kind: Literal["adamw", "dmgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1, description="dmgd: α of the memory's momentum")
    memory: Literal["mlp", "linear"] = Field("mlp", description="dmgd: deep or linear memory")
    hidden: int = Field(16, ge=1, description="dmgd: width of the memory MLP")
    inner_lr: float = Field(0.05, gt=0, description="dmgd: learning rate of the memory MLP")
    newton_schulz: int = Field(0, ge=0, description="dmgd: Newton–Schulz steps on 2-D updates")


class TrainLoopConfig(Section):
    """What every training loop reads: steps, batch size, AdamW's rate and decay, clipping,
    CPU threads. The ``continual`` job's own loop reads these and nothing else.

    Each job's train section is this class or one of its subclasses, holding exactly the
    keys that job reads, so that a key which would do nothing is an unknown key.
    """

    steps: int = Field(5000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    clip: float = Field(1.0, gt=0, description="gradient-norm clipping")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")

    @model_serializer(mode="wrap")
    def _in_key_order(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        return dict(sorted(data.items(), key=lambda kv: _TRAIN_RANK.get(kv[0], len(_TRAIN_RANK))))


class TrainConfig(TrainLoopConfig):
    """What the shared trainer (:class:`tertulia.train.Trainer`) reads: the loop's keys plus
    the schedule, EMA, checkpoints, logging, the NaN guard and the optimiser.

    The train section of the ``sequence``, ``lm``, ``recall`` and ``velora`` jobs; the
    forecasting job adds the orchestra's keys (:class:`~tertulia.config.ForecastTrainConfig`).
    """

    warmup: int = Field(100, ge=0, description="linear warm-up steps before cosine decay")
    min_lr_ratio: float = Field(0.05, ge=0, le=1)
    ema: float = Field(0.99, ge=0, lt=1, description="EMA decay of weights (0: off)")
    checkpoint_every: int = Field(200, ge=1)
    log_every: int = Field(20, ge=1)
    nan_patience: int = Field(20, ge=1, description="consecutive non-finite steps before stopping")
    optimizer: OptimizerConfig = OptimizerConfig()


# --------------------------------------------------------------------- runtime


class RuntimeConfig(Section):
    """Where the recipe's models run and in what precision (:mod:`tertulia.runtime`)."""

    device: str = Field(
        "cpu", description="cpu, cuda, cuda:N or auto (CUDA when there is a GPU, else the CPU)"
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: forward passes under bfloat16 autocast (weights stay fp32)"
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        from ..runtime import check_device_spec  # lazy: runtime imports torch; config does not

        try:
            return check_device_spec(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


class RecipeBase(Section):
    """What every recipe has: a task, a name, a description, a seed (declared by each
    recipe, so that they lead its YAML) and a runtime section (last in its YAML)."""

    runtime: RuntimeConfig = RuntimeConfig()

    def with_runtime(self, device: str | None = None, precision: str | None = None) -> Any:
        """This recipe with ``runtime.device`` / ``runtime.precision`` replaced (None: kept);
        ConfigError for a value that is not allowed."""
        if device is None and precision is None:
            return self
        values = self.runtime.model_dump()
        if device is not None:
            values["device"] = device
        if precision is not None:
            values["precision"] = precision
        try:
            runtime = RuntimeConfig(**values)
        except ValidationError as exc:
            raise ConfigError(
                format_validation_error(exc, "--device/--precision", RuntimeConfig)
            ) from None
        return self.model_copy(update={"runtime": runtime})

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        data["runtime"] = data.pop("runtime")  # base-class fields come first in a dump
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


# -------------------------------------------------------------------- messages


def section_class(cls: type[BaseModel], field: str) -> type[BaseModel] | None:
    ann = cls.model_fields[field].annotation
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return None


def unknown_key_message(path: str, key: str, cls: type[BaseModel]) -> str:
    valid = list(cls.model_fields)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {path!r}: {hint}valid keys here: {', '.join(valid)}"


def format_validation_error(
    exc: ValidationError,
    source: str,
    root: type[BaseModel],
    *,
    unknown: Callable[[str, str, type[BaseModel]], str] = unknown_key_message,
) -> str:
    """One line for the first error of ``exc`` (validating a ``root`` from ``source``).

    ``unknown(path, key, section_class)`` words an unknown key; a value of the wrong
    type gets a hint on how to write it (strict types: :class:`Section`).
    """
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    path = ".".join(loc) or "(recipe)"
    at = f"{path}: " if loc else ""  # a whole-recipe check names its keys itself
    if err["type"] == "extra_forbidden":
        cls: type[BaseModel] | None = root
        for part in loc[:-1]:
            cls = section_class(cls, part) if cls and part in cls.model_fields else None
        if cls is not None:
            msg = unknown(path, loc[-1], cls)
        else:
            msg = f"unknown key {path!r}"
    else:
        given = err.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        msg = f"{at}{err['msg'].removeprefix('Value error, ')}{shown}{_type_hint(err)}"
    more = len(exc.errors()) - 1
    tail = f" (+{more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {msg}{tail}"


def _type_hint(err: Any) -> str:
    """How to write a value that strict types refused, or ``""``."""
    kind, given = err["type"], err.get("input")
    if kind not in ("int_type", "float_type", "string_type"):
        return ""
    if isinstance(given, bool):
        return "; true/false is not a number" if kind != "string_type" else "; quote it"
    if kind == "int_type" and isinstance(given, float):
        return "; an integer is written without a decimal point"
    if kind != "string_type" and isinstance(given, str):
        return "; write the number without quotes"
    if kind == "string_type" and isinstance(given, int | float):
        return f"; quote it to make it text: '{given}'"
    return ""
