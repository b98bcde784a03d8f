"""Run reports: figures (``plots``) and one self-contained HTML page (``html``).

``build_report(run_dir)`` reads only the files of a run directory (no model, no
torch) and writes ``report.html`` plus one PNG per figure beside them.
"""

from __future__ import annotations

from .html import build_report as build_report

__all__ = ["build_report"]
