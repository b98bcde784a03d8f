"""The ``forecast`` job's recipe: an orchestra and its baselines on PDE trajectories.

:class:`Recipe` and its sections: model (graph, forward solver), baselines, train (the
shared trainer's keys plus the orchestra's: :class:`ForecastTrainConfig`, with its DEQ
and block sub-sections) and eval (OOD test sets, adversarial attacks). Its ``data``
section (:class:`~tertulia.config.base.DataConfig`) is shared with ``continual`` and
lives in :mod:`tertulia.config.base`. The layout checks (grid split, halo, graph
edges) live in :mod:`tertulia.layout`, shared with :mod:`tertulia.nn`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Strict, StrictInt, model_validator

from ..errors import ConfigError
from ..layout import check_edges, patch_size
from .base import DataConfig, RecipeBase, Section, TrainConfig

# a (source, target) pair: a YAML list of two integers (lax: a list is a valid tuple)
Edge = Annotated[tuple[StrictInt, StrictInt], Strict(False)]

# ----------------------------------------------------------------------- model


class GraphConfig(Section):
    """Who talks to whom. ``kind`` builds the edges; ``edges`` lists them for ``explicit``."""

    kind: Literal["ring", "chain", "full", "explicit"] = "ring"
    edges: list[Edge] = Field(
        default_factory=list, description="directed (source, target) pairs for kind=explicit"
    )
    coordinator: bool = Field(False, description="add a coordinating cell linked to all cells")
    memory_slots: int = Field(0, ge=0, description="shared memory slots read/written by attention")


class SolverConfig(Section):
    """Forward fixed-point solver of ``S* = F(S*, X)`` (used by ``train.mode=deq``).

    ``bptt`` and ``truncated`` always unroll damped Picard rounds, so that
    evaluation repeats exactly the computation that was trained.
    """

    kind: Literal["picard", "anderson", "broyden"] = "anderson"
    damping: float = Field(1.0, gt=0, le=1, description="Picard: S <- (1-λ)S + λF(S)")
    memory: int = Field(5, ge=1, description="Anderson history m / Broyden rank")
    mixing: float = Field(1.0, gt=0, le=1, description="Anderson mixing β")
    lam: float = Field(1e-4, ge=0, description="Anderson least-squares regularisation")


class ModelConfig(Section):
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


class BaselinesConfig(Section):
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


class ForecastTrainConfig(TrainConfig):
    """The forecasting job's training: the shared trainer's keys plus the orchestra's
    (gradient mode, loss, consistency and state penalties, per-cell weights, DEQ backward,
    block training, Jacobian penalty, ρ logging), read by ``tertulia.build`` and
    ``tertulia.train.ForecastTask``. Its YAML keeps the historical key order
    (:data:`~tertulia.config.base.TRAIN_KEY_ORDER`)."""

    mode: Literal["bptt", "truncated", "deq"] = Field(
        "bptt",
        description="bptt: gradient through every round; truncated: last grad_rounds; "
        "deq: solve to the fixed point, differentiate implicitly",
    )
    grad_rounds: int = Field(2, ge=1, description="rounds with gradient in truncated mode")
    loss: Literal["nll", "beta_nll"] = "nll"
    beta: float = Field(0.5, ge=0, le=1, description="β of β-NLL")
    consistency: float = Field(0.1, ge=0, description="γ: weight of neighbour agreement")
    state_norm: float = Field(0.0, ge=0, description="weight of the mean squared state norm")
    cell_weights: list[float] | None = Field(None, description="λ_i per cell (default all 1)")
    deq: DEQConfig = DEQConfig()
    blocks: BlocksConfig = BlocksConfig()
    jac_reg: float = Field(0.0, ge=0, description="weight of the Jacobian Frobenius penalty")
    jac_reg_every: int = Field(1, ge=1, description="apply the Jacobian penalty every k steps")
    jac_reg_samples: int = Field(1, ge=1, description="Hutchinson probe vectors")
    rho_every: int = Field(0, ge=0, description="log the contraction factor ρ every k steps")


# ------------------------------------------------------------------------ eval


class OODConfig(Section):
    """Test sets generated outside the training range, one per shifted quantity."""

    enabled: bool = True
    nu: list[float] = Field(default_factory=lambda: [0.02, 0.1])
    amplitude: list[float] = Field(default_factory=lambda: [2.0])
    noise: list[float] = Field(
        default_factory=lambda: [3.0], description="factors multiplying sigma0 and sigma1"
    )
    n: int = Field(32, ge=1, description="trajectories per condition")


class AdversarialConfig(Section):
    """FGSM and PGD on the input window, ‖δ‖∞ ≤ ε·RMS(window) per sample."""

    enabled: bool = True
    eps: list[float] = Field(default_factory=lambda: [0.01, 0.05])
    pgd_steps: int = Field(10, ge=1)
    samples: int = Field(512, ge=1, description="test samples attacked")
    objective: Literal["nll", "mse"] = "nll"


class EvalConfig(Section):
    rollout_steps: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=1)
    calibration_levels: int = Field(19, ge=3)
    rho: bool = Field(True, description="contraction factor ρ per test sample (orchestra)")
    rho_iters: int = Field(20, ge=1, description="power iterations for ρ")
    ood: OODConfig = OODConfig()
    adversarial: AdversarialConfig = AdversarialConfig()


# ---------------------------------------------------------------------- recipe


class Recipe(RecipeBase):
    """A forecasting recipe: an orchestra and its baselines on PDE trajectories."""

    task: Literal["forecast"] = "forecast"
    name: str = "burgers"
    description: str = ""
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    train: ForecastTrainConfig = ForecastTrainConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _check_layout(self) -> Recipe:
        d, m, t = self.data, self.model, self.train
        g = m.graph
        try:
            # data.grid is the grid of a data file too (the forecasting job checks they agree)
            patch_size(d.grid, m.cells, m.halo, names=("data.grid", "model.cells", "model.halo"))
            check_edges(g.kind, g.edges, m.cells, coordinator=g.coordinator, where="model.graph")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if d.frames < d.window + 2:
            raise ValueError(
                f"data.frames={d.frames} must be at least data.window+2={d.window + 2}"
            )
        if t.cell_weights is not None and len(t.cell_weights) != m.cells:
            raise ValueError(
                f"train.cell_weights has {len(t.cell_weights)} entries; "
                f"model.cells={m.cells} needs one per cell"
            )
        if t.mode == "truncated" and t.grad_rounds > m.rounds:
            raise ValueError(f"train.grad_rounds={t.grad_rounds} exceeds model.rounds={m.rounds}")
        n_nodes = m.cells + int(g.coordinator)
        blocks = t.blocks
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
        return self
