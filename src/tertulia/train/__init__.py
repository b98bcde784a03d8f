"""Training: tasks (what a batch means), the trainer loop, checkpoints."""

from .checkpoint import has_checkpoint as has_checkpoint
from .checkpoint import load_checkpoint as load_checkpoint
from .checkpoint import load_weights as load_weights
from .checkpoint import save_checkpoint as save_checkpoint
from .tasks import Batch as Batch
from .tasks import ForecastTask as ForecastTask
from .tasks import Task as Task
from .tasks import TaskBase as TaskBase
from .trainer import Trainer as Trainer
from .trainer import TrainSummary as TrainSummary
from .trainer import learning_rate as learning_rate
