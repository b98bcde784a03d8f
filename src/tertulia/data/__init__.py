"""Data: periodic 1-D PDE trajectories (generated or read from a file) and their cache.

See :mod:`tertulia.data.pde` for the equations and :mod:`tertulia.data.cache` for the
on-disk cache. Arrays are (N, T, G): trajectories, frames, grid points.
"""

from .cache import cache_dir as cache_dir
from .cache import cache_key as cache_key
from .cache import cache_path as cache_path
from .cache import load_or_build as load_or_build
from .pde import GENERATOR_VERSION as GENERATOR_VERSION
from .pde import SPLITS as SPLITS
from .pde import Trajectories as Trajectories
from .pde import advection_exact as advection_exact
from .pde import burgers as burgers
from .pde import burgers_cole_hopf as burgers_cole_hopf
from .pde import dataset_key as dataset_key
from .pde import generate as generate
from .pde import grid_points as grid_points
from .pde import heat_exact as heat_exact
from .pde import load_dataset as load_dataset
from .pde import load_file as load_file
from .pde import observe as observe
from .pde import random_initial_conditions as random_initial_conditions
from .pde import simulate as simulate
from .pde import will_generate as will_generate

__all__ = [
    "GENERATOR_VERSION",
    "SPLITS",
    "Trajectories",
    "advection_exact",
    "burgers",
    "burgers_cole_hopf",
    "cache_dir",
    "cache_key",
    "cache_path",
    "dataset_key",
    "generate",
    "grid_points",
    "heat_exact",
    "load_dataset",
    "load_file",
    "load_or_build",
    "observe",
    "random_initial_conditions",
    "simulate",
    "will_generate",
]
