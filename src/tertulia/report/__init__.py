"""Run reports: ``build_report(run_dir)`` rebuilds one self-contained HTML page.

It reads only the files of a run directory (no model, no torch; ``page``) and
writes ``report.html`` plus one PNG per figure beside them, with the page of the
run's ``task`` (metrics.json):

    series, island    ``classical``   state-space fits, filters, control
    compress          ``compress``    ``tertulia compress``: before and after pruning
    velora            ``velora``      experts, router, fusion
    continual         ``continual``   forgetting across regimes
    anything else     ``forecast``    forecast, sequence, lm, recall … (the default)

``plots`` draws the shared figures; ``sweep`` is the page of ``tertulia sweep``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .._io import secondary_rank
from .classical import build_classical_report
from .compress import build_compress_report
from .continual import build_continual_report
from .forecast import build_forecast_report
from .page import REPORT_FILE, RunFiles, load_run_files
from .velora import build_velora_report

__all__ = ["build_report"]

# task in metrics.json → page builder; every other task (or none) gets the forecast page
_PAGES: dict[str, Callable[[RunFiles], Path]] = {
    "series": build_classical_report,
    "island": build_classical_report,
    "compress": build_compress_report,
    "velora": build_velora_report,
    "continual": build_continual_report,
    "forecast": build_forecast_report,
    "sequence": build_forecast_report,
    "lm": build_forecast_report,
    "recall": build_forecast_report,
}


def build_report(run_dir: Path) -> Path:
    """Write the figures (PNG) and ``report.html`` into ``run_dir``; return the page's path.

    Raises :class:`~tertulia.errors.RunDirError` when ``run_dir`` has no readable
    ``metrics.json`` or a corrupt ``examples.safetensors``.
    """
    if secondary_rank():  # rank 0 of a distributed run writes the report
        return Path(run_dir) / REPORT_FILE
    run = load_run_files(Path(run_dir))
    task = run.metrics.get("task")
    if not isinstance(task, str):  # none, or malformed (a list is no key): the default page
        task = ""
    return _PAGES.get(task, build_forecast_report)(run)
