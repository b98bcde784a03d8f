"""Recipe → objects, through explicit dictionaries of the valid choices.

Every choice a recipe can make (solver for a training mode, graph kind) is a
key of a dict here, and an unknown choice is answered with the list of keys.
The MLP baseline is sized to the orchestra's parameter count.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .config import ForecastTrainConfig, ModelConfig, Recipe
from .errors import ConfigError
from .nn.graph import Graph, make_graph
from .nn.mlp import GaussianMLP, Persistence, hidden_for_params
from .nn.orchestra import Orchestra
from .nn.ssm_forecaster import GaussianSSM
from .solvers import Equilibrium, SolverSpec, Truncated, Unrolled
from .stability import spectral_bound


def forward_spec(model: ModelConfig) -> SolverSpec:
    """The forward fixed-point solver of ``model.solver`` bounded by ``model.rounds``."""
    s = model.solver
    return SolverSpec(
        s.kind,
        tol=model.tol,
        max_iter=model.rounds,
        damping=s.damping,
        memory=s.memory,
        mixing=s.mixing,
        lam=s.lam,
    )


def _equilibrium(m: ModelConfig, t: ForecastTrainConfig) -> Equilibrium:
    adjoint = SolverSpec(
        t.deq.solver,
        tol=t.deq.tol,
        max_iter=t.deq.max_iter,
        memory=m.solver.memory,
        lam=m.solver.lam,
    )
    return Equilibrium(
        forward_spec(m),
        backward=t.deq.backward,
        adjoint=adjoint,
        phantom_steps=t.deq.phantom_steps,
        phantom_damping=t.deq.phantom_damping,
    )


SOLVERS: dict[str, Callable[[ModelConfig, ForecastTrainConfig], Unrolled | Equilibrium]] = {
    "bptt": lambda m, t: Unrolled(m.rounds, tol=m.tol, damping=m.solver.damping),
    "truncated": lambda m, t: Truncated(
        m.rounds, grad_rounds=t.grad_rounds, tol=m.tol, damping=m.solver.damping
    ),
    "deq": _equilibrium,
}


def _choose(table: dict, key: str, what: str):
    if key not in table:
        raise ConfigError(f"{what} {key!r} is not one of: {', '.join(table)}")
    return table[key]


def build_graph(model: ModelConfig) -> Graph:
    g = model.graph
    return make_graph(
        g.kind,
        model.cells,
        edges=[tuple(e) for e in g.edges],
        coordinator=g.coordinator,
        memory_slots=g.memory_slots,
    )


def build_solver(recipe: Recipe) -> Unrolled | Equilibrium:
    return _choose(SOLVERS, recipe.train.mode, "train.mode")(recipe.model, recipe.train)


def build_orchestra(recipe: Recipe, *, scale: float = 1.0) -> Orchestra:
    """The orchestra of ``recipe``; with ``model.spectral_norm`` its round maps are bounded."""
    m = recipe.model
    orchestra = Orchestra(
        grid=recipe.data.grid,
        window=recipe.data.window,
        graph=build_graph(m),
        d=m.d,
        d_msg=m.d_msg,
        d_key=m.d_key,
        hidden_mult=m.hidden_mult,
        halo=m.halo,
        schedule=m.schedule,
        order=m.order,
        kernel=m.kernel,
        solver=build_solver(recipe),
        scale=scale,
        skip=m.skip,
        cell=m.cell,
        ssm_channels=m.ssm_channels,
        ssm_state=m.ssm_state,
    )
    if m.spectral_norm is not None:
        # every linear map inside the round: the cells' MLPs and the messenger
        spectral_bound(orchestra.bank, m.spectral_norm)
        spectral_bound(orchestra.messenger, m.spectral_norm)
    return orchestra


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_mlp(recipe: Recipe, *, params: int, scale: float = 1.0) -> GaussianMLP:
    """The monolithic MLP with (close to) ``params`` parameters."""
    g, w, layers = recipe.data.grid, recipe.data.window, recipe.baselines.mlp_layers
    hidden = hidden_for_params(w * g, 2 * g, layers, params)
    return GaussianMLP(grid=g, window=w, hidden=hidden, layers=layers, scale=scale)


def build_persistence(*, sigma: float) -> Persistence:
    return Persistence(sigma=sigma)


def build_ssm(recipe: Recipe, kind: str, *, scale: float = 1.0) -> GaussianSSM:
    """A deep-SSM forecaster (``baselines.ssm``): S4D or Mamba layers scanning the grid."""
    b = recipe.baselines
    return GaussianSSM(
        grid=recipe.data.grid,
        window=recipe.data.window,
        kind=kind,
        d_model=b.ssm_width,
        layers=b.ssm_layers,
        d_state=b.ssm_state,
        scale=scale,
    )
