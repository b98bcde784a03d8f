"""tertulia: orchestras of tiny recursive models with calibrated uncertainty.

Cells (tiny recursive models) refine latent states, exchange attention
messages over a graph and iterate until they agree; Gaussian heads give a
mean and a variance for every predicted point.

The public names below load on first use (PEP 562), so ``import tertulia`` and
the light commands (``tertulia --help``, ``recipes``, ``show``) start without
importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import ConfigError as ConfigError
from .errors import DataError as DataError
from .errors import RunDirError as RunDirError
from .errors import TrainingDiverged as TrainingDiverged
from .errors import UserError as UserError

if TYPE_CHECKING:
    from .config import Recipe as Recipe
    from .config import load_recipe as load_recipe
    from .filters import LinearGaussian as LinearGaussian
    from .filters import LinearSSM as LinearSSM
    from .filters import kalman_filter as kalman_filter
    from .filters import rts_smoother as rts_smoother
    from .jobs import LoadedRun as LoadedRun
    from .jobs import load_run as load_run
    from .nn import GaussianMLP as GaussianMLP
    from .nn import Orchestra as Orchestra
    from .nn import Prediction as Prediction
    from .nn import make_graph as make_graph
    from .solvers import Equilibrium as Equilibrium
    from .solvers import SolverSpec as SolverSpec
    from .solvers import Truncated as Truncated
    from .solvers import Unrolled as Unrolled

_LAZY = {
    "Recipe": "config",
    "load_recipe": "config",
    "LinearGaussian": "filters",
    "LinearSSM": "filters",
    "kalman_filter": "filters",
    "rts_smoother": "filters",
    "LoadedRun": "jobs",
    "load_run": "jobs",
    "GaussianMLP": "nn",
    "Orchestra": "nn",
    "Prediction": "nn",
    "make_graph": "nn",
    "Equilibrium": "solvers",
    "SolverSpec": "solvers",
    "Truncated": "solvers",
    "Unrolled": "solvers",
}

__version__ = "0.1.0"
__all__ = [
    "ConfigError",
    "DataError",
    "RunDirError",
    "TrainingDiverged",
    "UserError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'tertulia' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
