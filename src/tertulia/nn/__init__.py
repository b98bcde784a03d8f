"""Torch modules: cells (TRM, Kalman), messaging, graphs, heads, the orchestra, baselines."""

from .cells import CellBank as CellBank
from .graph import Graph as Graph
from .graph import make_graph as make_graph
from .heads import KalmanHead as KalmanHead
from .heads import Prediction as Prediction
from .heads import StackedGaussianHead as StackedGaussianHead
from .kalman_cell import KalmanCellBank as KalmanCellBank
from .messaging import AttentionMessenger as AttentionMessenger
from .messaging import MemorySlots as MemorySlots
from .mlp import GaussianMLP as GaussianMLP
from .mlp import Persistence as Persistence
from .orchestra import Orchestra as Orchestra
from .orchestra import OrchestraTrace as OrchestraTrace
from .stacked import StackedLayerNorm as StackedLayerNorm
from .stacked import StackedLinear as StackedLinear
