"""What a job tells its caller while it works: the :class:`Event` names, defined once.

A job hands each event with a payload dict to an :data:`EventFn`; the CLI turns
them into progress bars and lines, library callers may pass :func:`no_event`.
This module imports nothing heavy, so the CLI can name the events without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any


class Event(str, Enum):
    """Every event a job emits, with the payload keys it carries."""

    DATA_GENERATE = "data_generate"  # equation, count: data is being generated
    DATA = "data"  # source, sizes, seconds, out[, unit]: the data has loaded
    TRAIN_START = "train_start"  # model, total
    STEP = "step"  # model, step, total, logs
    TRAIN_END = "train_end"  # model, steps, skipped_steps, seconds, resumed_from …
    EVALUATE = "evaluate"  # models: judging has started
    ROBUSTNESS = "robustness"  # what (ood | adversarial), conditions | eps
    FIT = "fit"  # model: a classical fit has started
    SIMULATE = "simulate"  # what
    NOTE = "note"  # text: a line worth showing
    COMPRESS_END = "compress_end"  # model: one model is pruned, stored and judged
    REPORT = "report"  # the report is being written


EventFn = Callable[[Event, dict[str, Any]], None]


def no_event(event: Event, payload: dict[str, Any]) -> None:
    """An :data:`EventFn` that ignores every event."""
