"""Compression: pruning that stays pruned during training, and checkpoints that really shrink."""

from .pruning import Masks as Masks
from .pruning import Pruner as Pruner
from .pruning import cubic_schedule as cubic_schedule
from .pruning import magnitude_masks as magnitude_masks
from .pruning import oneshot_schedule as oneshot_schedule
from .pruning import prunable as prunable
from .pruning import snr_importance as snr_importance
from .pruning import sparsity_report as sparsity_report
from .pruning import threshold_masks as threshold_masks
from .sparse_io import load_compressed as load_compressed
from .sparse_io import save_compressed as save_compressed
