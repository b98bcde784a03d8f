"""tertulia: orchestras of tiny recursive models with calibrated uncertainty.

Cells (tiny recursive models) refine latent states, exchange attention
messages over a graph and iterate until they agree; Gaussian heads give a
mean and a variance for every predicted point.
"""

from .config import Recipe as Recipe
from .config import load_recipe as load_recipe
from .errors import ConfigError as ConfigError
from .errors import DataError as DataError
from .errors import RunDirError as RunDirError
from .errors import TrainingDiverged as TrainingDiverged
from .errors import UserError as UserError
from .filters import LinearGaussian as LinearGaussian
from .filters import LinearSSM as LinearSSM
from .filters import kalman_filter as kalman_filter
from .filters import rts_smoother as rts_smoother
from .nn import GaussianMLP as GaussianMLP
from .nn import Orchestra as Orchestra
from .nn import Prediction as Prediction
from .nn import make_graph as make_graph
from .pipeline import LoadedRun as LoadedRun
from .pipeline import load_run as load_run
from .solvers import Equilibrium as Equilibrium
from .solvers import SolverSpec as SolverSpec
from .solvers import Truncated as Truncated
from .solvers import Unrolled as Unrolled

__version__ = "0.1.0"
