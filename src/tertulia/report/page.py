r"""What every report page shares: the run directory as read from disk, figures,
number formatting and escaping, tables, the CSS and the page around the sections.

    RunFiles, load_run_files   metrics.json, examples.safetensors and train_log.jsonl
                               of a run directory, read and checked for types
    Figure, figure_html        one figure (PNG bytes, title, caption) and its <figure>
    real_number, format_value, format_count, escape, order_models
                               numbers and text as the pages show them
    table, key_value_table, training_table
                               the tables more than one page draws
    document                   the whole self-contained page (inline CSS, footer)

Inputs of :func:`load_run_files` (only ``metrics.json`` is required):

    metrics.json          a JSON object (RunDirError if missing or not valid JSON)
    examples.safetensors  arrays, read as float64 (RunDirError if unreadable)
    train_log.jsonl       one JSON object per line, grouped by its "model"; lines that
                          are not JSON objects are counted and skipped
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from ..errors import RunDirError

__all__ = [
    "EXAMPLES_FILE",
    "METRICS_FILE",
    "REPORT_FILE",
    "TRAIN_LOG_FILE",
    "Figure",
    "RunFiles",
    "document",
    "escape",
    "figure_html",
    "format_count",
    "format_value",
    "key_value_table",
    "load_run_files",
    "order_models",
    "real_number",
    "table",
    "training_table",
]

METRICS_FILE = "metrics.json"
EXAMPLES_FILE = "examples.safetensors"
TRAIN_LOG_FILE = "train_log.jsonl"
REPORT_FILE = "report.html"

# Models that usually exist come first, in this order; others follow as found.
_CANONICAL_ORDER = ("orchestra", "mlp", "persistence")

# --------------------------------------------------------------------------- loading


@dataclass
class RunFiles:
    """What was read from a run directory, already checked for types."""

    root: Path
    metrics: dict[str, Any]
    examples: dict[str, np.ndarray] = field(default_factory=dict)
    log: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    log_bad_lines: int = 0

    def section(self, key: str) -> dict[str, Any]:
        value = self.metrics.get(key)
        return value if isinstance(value, dict) else {}

    def models(self) -> dict[str, dict[str, Any]]:
        return {m: v for m, v in self.section("models").items() if isinstance(v, dict)}


def _load_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a run directory: no {METRICS_FILE}")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunDirError(f"{path} is not valid JSON: {first_line}") from exc
    if not isinstance(metrics, dict):
        raise RunDirError(f"{path} must hold a JSON object, got {type(metrics).__name__}")
    return metrics


def _load_examples(run_dir: Path) -> dict[str, np.ndarray]:
    path = run_dir / EXAMPLES_FILE
    if not path.is_file():
        return {}
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunDirError(f"{path} is not a readable safetensors file: {message}") from exc
    return {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}


def _load_train_log(run_dir: Path) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Records grouped by model; lines that are not JSON objects are counted and
    skipped (a run killed mid-append can leave a torn last line)."""
    path = run_dir / TRAIN_LOG_FILE
    if not path.is_file():
        return {}, 0
    by_model: dict[str, list[dict[str, Any]]] = {}
    bad = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(record, dict):
            bad += 1
            continue
        by_model.setdefault(str(record.get("model", "model")), []).append(record)
    return by_model, bad


def load_run_files(run_dir: Path) -> RunFiles:
    """Read ``run_dir``; RunDirError when it has no readable ``metrics.json`` or a
    corrupt ``examples.safetensors``."""
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a run directory: it does not exist")
    metrics = _load_metrics(run_dir)
    log, bad = _load_train_log(run_dir)
    return RunFiles(run_dir, metrics, _load_examples(run_dir), log, bad)


# --------------------------------------------------------------------------- helpers


def order_models(names: Sequence[str]) -> list[str]:
    """Unique names, the usual models first (orchestra, mlp, persistence), others as found."""
    unique = list(dict.fromkeys(names))
    known = [m for m in _CANONICAL_ORDER if m in unique]
    return known + [m for m in unique if m not in _CANONICAL_ORDER]


def real_number(value: Any) -> float | None:
    """A float for real numbers (bools excluded), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def format_value(value: Any) -> str:
    """Numbers to 4 significant digits, None as a dash, other values as (short) JSON."""
    number = real_number(value)
    if number is not None:
        return f"{number:.4g}"
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    text = json.dumps(value, separators=(", ", ": "))
    return text if len(text) <= 200 else text[:199] + "…"


def format_count(value: Any) -> str:
    """Whole numbers with thousands separators, others as :func:`format_value`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    number = real_number(value)
    if number is not None and number.is_integer():
        return f"{int(number):,}"
    return format_value(value)


def escape(text: Any) -> str:
    """``str(text)`` safe in HTML text and quoted attributes."""
    return html.escape(str(text), quote=True)


# --------------------------------------------------------------------------- tables


def table(
    rows: Mapping[str, Mapping[str, Any]], title: str, fmt: Callable[[Any], str] | None = None
) -> str:
    """Rows = metric, columns = model: one table of numbers (``fmt`` formats a cell)."""
    fmt = fmt or format_value
    names = list(rows)
    keys = list(dict.fromkeys(k for m in names for k in rows[m]))
    if not names or not keys:
        return ""
    head = "".join(f"<th>{escape(m)}</th>" for m in names)
    body = "".join(
        f"<tr><th scope='row'>{escape(k)}</th>"
        + "".join(f"<td>{escape(fmt(rows[m].get(k)))}</td>" for m in names)
        + "</tr>"
        for k in keys
    )
    return (
        f"<table class='metrics'><caption>{escape(title)}</caption><thead><tr><th></th>"
        f"{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def key_value_table(items: Mapping[str, Any], *, css: str, count: bool = False) -> str:
    """One row per item: key, then the value (:func:`format_count` when ``count``)."""
    fmt = format_count if count else format_value
    rows = "".join(
        f"<tr><th scope='row'>{escape(k)}</th><td>{escape(fmt(v))}</td></tr>"
        for k, v in items.items()
    )
    return f"<table class='{css}'><tbody>{rows}</tbody></table>"


def training_table(train: Mapping[str, Any]) -> str:
    """``metrics.json`` → ``train``: one row per model, one column per key ('' if none)."""
    runs = {m: v for m, v in train.items() if isinstance(v, dict)}
    names = order_models(list(runs))
    keys = list(dict.fromkeys(k for m in names for k in runs[m]))
    if not names or not keys:
        return ""
    head = "".join(f"<th>{escape(k)}</th>" for k in keys)
    rows = []
    for m in names:
        cells = "".join(
            f"<td>{escape(format_count(runs[m][k]) if k in runs[m] else '—')}</td>" for k in keys
        )
        rows.append(f"<tr><th scope='row'>{escape(m)}</th>{cells}</tr>")
    return (
        f"<table class='train'><thead><tr><th>model</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


# --------------------------------------------------------------------------- page


@dataclass
class Figure:
    """One figure of a page: written as ``{name}.png`` and embedded in the HTML."""

    name: str  # file stem of the PNG
    title: str
    caption: str
    png: bytes


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 0;
       color: #1d1d1f; background: #fafafa; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem 2rem 3rem; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
.description { color: #444; margin-top: 0.2rem; }
table { border-collapse: collapse; margin: 0.6rem 0; background: white; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.7rem; text-align: right;
         font-variant-numeric: tabular-nums; }
th[scope=row] { text-align: left; font-weight: 600; }
thead th { background: #f0f0f3; }
td.best { background: #eef6ee; }
td.yes { color: #2a7a2a; text-align: center; } td.no { color: #b3261e; text-align: center; }
.scroll { overflow-x: auto; }
h3 { margin-bottom: 0.3rem; }
.better { color: #777; font-size: 0.85em; text-align: left; }
.note { color: #666; font-size: 0.9em; }
figure { margin: 1.5rem 0; background: white; border: 1px solid #e3e3e3; padding: 0.8rem; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: #444; font-size: 0.92em; margin-top: 0.5rem; }
figcaption b { color: #1d1d1f; }
footer { color: #888; font-size: 0.85em; margin-top: 3rem; }
"""


def figure_html(fig: Figure) -> str:
    """``fig`` as a <figure>, its PNG inline as a base64 data URI."""
    data = base64.b64encode(fig.png).decode("ascii")
    return (
        f"<figure id='fig-{escape(fig.name)}'><img src=\"data:image/png;base64,{data}\" "
        f"alt='{escape(fig.title)}'><figcaption><b>{escape(fig.title)}.</b> {escape(fig.caption)}"
        "</figcaption></figure>"
    )


def document(title: str, parts: Sequence[str], *, css: str = "") -> str:
    """The whole page: ``parts`` (HTML fragments, empty ones dropped) then the footer."""
    body = "\n".join(p for p in (*parts, _FOOTER) if p)
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{escape(title)}</title>\n<style>{_CSS}{css}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


_FOOTER = "<footer>Rebuilt from the run directory by tertulia.report.</footer>"
