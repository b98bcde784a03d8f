"""Report page of ``tertulia sweep``: one row per trial and the metric across trials.

Input: the sweep summary (what ``sweep.json`` holds): recipe, metric,
lower_is_better and rows [{trial, sets, metric | error}]. Output, written
atomically into the sweep's directory: ``sweep.png`` (a bar per finished trial;
none when no trial finished) and ``report.html`` with the PNG embedded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes, atomic_write_text
from . import page, plots

__all__ = ["build_sweep_report"]


def build_sweep_report(out: Path, summary: dict[str, Any]) -> Path:
    """Write ``sweep.png`` and ``report.html`` of a sweep into ``out``; return the page's path."""
    rows = summary["rows"]
    done = [r for r in rows if "error" not in r and r.get("metric") is not None]
    parts = [f"<h1>{page.escape('tertulia sweep: ' + summary['recipe'])}</h1>"]
    table = "".join(
        f"<tr><th scope='row'>{page.escape(r['trial'])}</th>"
        f"<td>{page.escape(' '.join(r['sets']))}</td>"
        f"<td>{page.escape(page.format_value(r.get('metric')) if 'error' not in r else 'failed')}"
        f"</td><td>{page.escape(r.get('error', ''))}</td></tr>"
        for r in rows
    )
    parts.append(
        "<section><h2>Trials</h2><table class='metrics'><thead><tr><th>trial</th>"
        f"<th>overrides</th><th>{page.escape(summary['metric'])}</th><th>error</th></tr></thead>"
        f"<tbody>{table}</tbody></table></section>"
    )
    if done:
        fig = plots.new_figure(6.0, 3.0)
        ax = fig.add_subplot(1, 1, 1)
        ax.bar(range(len(done)), [r["metric"] for r in done])
        ax.set_xticks(
            range(len(done)),
            [" ".join(r["sets"]) for r in done],
            rotation=30,
            ha="right",
            fontsize=6,
        )
        ax.set_ylabel(summary["metric"])
        figure = page.Figure(
            "sweep",
            "Metric across trials",
            f"{summary['metric']} of every finished trial "
            f"({'lower' if summary['lower_is_better'] else 'higher'} is better).",
            plots.figure_png(fig),
        )
        atomic_write_bytes(out / "sweep.png", figure.png)
        parts.append("<section><h2>Figure</h2>" + page.figure_html(figure) + "</section>")
    html = page.document(f"sweep {summary['recipe']}", parts)
    return atomic_write_text(out / page.REPORT_FILE, html)
