"""What every recipe shares: the base section, the recipe base and the shared sections.

:class:`Section` is the base of every section (unknown keys are rejected, assignments
validated); :class:`RecipeBase` the base of every recipe (a ``runtime`` section,
``with_runtime`` and ``to_yaml``). The sections used by several jobs live here too:
the PDE data (``forecast`` and ``continual``), the training loop with its DEQ, block
and optimiser sub-sections (every neural job) and the runtime (every recipe). So do the
messages of unknown keys and validation errors, which :class:`RecipeBase` needs as well
as :mod:`tertulia.config.load`.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError


class Section(BaseModel):
    """Base of every section: unknown keys are rejected, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


class DEQConfig(Section):
    """Backward pass of ``train.mode=deq``."""

    backward: Literal["implicit", "phantom"] = Field(
        "implicit",
        description="implicit: solve g = Jᵀg + ∂L/∂S*; phantom: k damped rounds from S*",
    )
    solver: Literal["picard", "anderson", "broyden"] = Field(
        "anderson", description="solver of the adjoint fixed point"
    )
    tol: float = Field(1e-4, gt=0, description="relative residual of the adjoint solve")
    max_iter: int = Field(30, ge=1)
    phantom_steps: int = Field(5, ge=1, description="k rounds of the phantom gradient")
    phantom_damping: float = Field(0.5, gt=0, le=1, description="λ of the phantom rounds")


class BlocksConfig(Section):
    """Block training (seed §4.3): only some cells learn at each step."""

    kind: Literal["none", "round_robin", "custom"] = "none"
    size: int = Field(1, ge=1, description="cells per round-robin block")
    every: int = Field(100, ge=1, description="steps before the next block takes over")
    schedule: list[list[int]] = Field(
        default_factory=list, description="kind=custom: the blocks in order, e.g. [[0, 1], [2, 3]]"
    )
    shared: bool = Field(True, description="train the shared (non-per-cell) parameters always")


class OptimizerConfig(Section):
    """The training optimiser: AdamW (default) or deep momentum (``tertulia.optim.DMGD``)."""

    kind: Literal["adamw", "dmgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1, description="dmgd: α of the memory's momentum")
    memory: Literal["mlp", "linear"] = Field("mlp", description="dmgd: deep or linear memory")
    hidden: int = Field(16, ge=1, description="dmgd: width of the memory MLP")
    inner_lr: float = Field(0.05, gt=0, description="dmgd: learning rate of the memory MLP")
    newton_schulz: int = Field(0, ge=0, description="dmgd: Newton–Schulz steps on 2-D updates")


class TrainConfig(Section):
    mode: Literal["bptt", "truncated", "deq"] = Field(
        "bptt",
        description="bptt: gradient through every round; truncated: last grad_rounds; "
        "deq: solve to the fixed point, differentiate implicitly",
    )
    grad_rounds: int = Field(2, ge=1, description="rounds with gradient in truncated mode")
    steps: int = Field(5000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup: int = Field(100, ge=0, description="linear warm-up steps before cosine decay")
    min_lr_ratio: float = Field(0.05, ge=0, le=1)
    clip: float = Field(1.0, gt=0, description="gradient-norm clipping")
    ema: float = Field(0.99, ge=0, lt=1, description="EMA decay of weights (0: off)")
    loss: Literal["nll", "beta_nll"] = "nll"
    beta: float = Field(0.5, ge=0, le=1, description="β of β-NLL")
    consistency: float = Field(0.1, ge=0, description="γ: weight of neighbour agreement")
    state_norm: float = Field(0.0, ge=0, description="weight of the mean squared state norm")
    cell_weights: list[float] | None = Field(None, description="λ_i per cell (default all 1)")
    checkpoint_every: int = Field(200, ge=1)
    log_every: int = Field(20, ge=1)
    nan_patience: int = Field(20, ge=1, description="consecutive non-finite steps before stopping")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")
    deq: DEQConfig = DEQConfig()
    blocks: BlocksConfig = BlocksConfig()
    jac_reg: float = Field(0.0, ge=0, description="weight of the Jacobian Frobenius penalty")
    jac_reg_every: int = Field(1, ge=1, description="apply the Jacobian penalty every k steps")
    jac_reg_samples: int = Field(1, ge=1, description="Hutchinson probe vectors")
    rho_every: int = Field(0, ge=0, description="log the contraction factor ρ every k steps")
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


def format_validation_error(exc: ValidationError, source: str, root: type[BaseModel]) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    path = ".".join(loc) or "(recipe)"
    if err["type"] == "extra_forbidden":
        cls: type[BaseModel] | None = root
        for part in loc[:-1]:
            cls = section_class(cls, part) if cls and part in cls.model_fields else None
        if cls is not None:
            msg = unknown_key_message(path, loc[-1], cls)
        else:
            msg = f"unknown key {path!r}"
    else:
        given = err.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        msg = f"{path}: {err['msg'].removeprefix('Value error, ')}{shown}"
    more = len(exc.errors()) - 1
    tail = f" (+{more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {msg}{tail}"
