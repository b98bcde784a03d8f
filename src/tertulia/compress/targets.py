"""What ``tertulia compress`` can prune: one trained model of a run, with its task.

A :class:`Target` bundles one trained model with what fine-tuning and judging
it needs, so the compression loop (:mod:`tertulia.compress.job`) never looks
at the kind of run. Each job that has networks makes its own targets (the
``targets`` entry of its :class:`~tertulia.jobs.base.Job` record):

============  ===================================  ==========================
run (task)    models                               main metric (test split)
============  ===================================  ==========================
forecast      orchestra, MLP, SSM forecasters,     one-step nRMSE (lower)
              comparison orchestras
sequence      the S4D / HiPPO / Mamba stacks, MLP  accuracy (higher)
velora        the whole system (experts, router,   mixed score (higher)
              fusion) after its last phase
============  ===================================  ==========================

Each model starts from the weights its run evaluates (EMA for forecasting and
sequence runs, the best-validating ones for VELORA) and is fine-tuned with its
run's own training task and configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass
class Target:
    """One trained model of a run and how to fine-tune and judge it."""

    name: str
    model: nn.Module
    make_task: Callable[[nn.Module], Any]  # a trainer Task around a (copied) model
    judge: Callable[[nn.Module], dict[str, Any]]  # test metrics of a model
    metric: str  # the key of judge()'s main metric
    higher_is_better: bool
    train: Any  # the run's training configuration of this model (TrainConfig or alike)
    seed: int
