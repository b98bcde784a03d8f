"""Torch modules: cells (TRM, Kalman), messaging, graphs, heads, the orchestra, baselines,
and deep SSM layers (S4D, Mamba's selective scan) with their residual stack."""

from .cells import CellBank as CellBank
from .graph import Graph as Graph
from .graph import make_graph as make_graph
from .heads import KalmanHead as KalmanHead
from .heads import Prediction as Prediction
from .heads import StackedGaussianHead as StackedGaussianHead
from .kalman_cell import KalmanCellBank as KalmanCellBank
from .mamba import MambaBlock as MambaBlock
from .messaging import AttentionMessenger as AttentionMessenger
from .messaging import MemorySlots as MemorySlots
from .mlp import GaussianMLP as GaussianMLP
from .mlp import Persistence as Persistence
from .orchestra import Orchestra as Orchestra
from .orchestra import OrchestraTrace as OrchestraTrace
from .s4d import S4D as S4D
from .s4d import S4DKernel as S4DKernel
from .scan import selective_scan as selective_scan
from .seqmodel import SequenceModel as SequenceModel
from .ssm_forecaster import GaussianSSM as GaussianSSM
from .stacked import StackedLayerNorm as StackedLayerNorm
from .stacked import StackedLinear as StackedLinear
