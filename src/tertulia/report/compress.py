"""Report page of ``tertulia compress`` (``task: compress``): before and after pruning;
and the compression section of runs whose recipe compresses its own models
(``compress.sparsities``, e.g. ``compress-mnist``).

Inputs (metrics.json): settings, models.{m}.{dense,compressed}.{metric, bytes,
nonzero, sparsity, metrics}, layers.{m}.{tensor: sparsity}, histograms.{m}.{edges,
dense, compressed}; for a run's own section, compression.{m}.{metric, dense, rows,
histogram}. Sections are skipped when their data is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes, atomic_write_text
from . import page, plots

KEYS = ("nrmse_1step", "nrmse_rollout", "nll", "crps", "coverage_90", "miscalibration_area")


def _metric_keys(models: Mapping[str, Any]) -> list[str]:
    """The forecasting keys when present, else every scalar test metric (at most 8)."""
    found: list[str] = []
    for entry in models.values():
        metrics = (
            ((entry.get("dense") or {}).get("metrics") or {}) if isinstance(entry, dict) else {}
        )
        for k, v in metrics.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in found:
                found.append(k)
    if "nrmse_1step" in found:
        return [k for k in KEYS if k in found]
    return found[:8]


def _cell(value: Any) -> str:
    """Integers (bytes, counts) in full; other values as the report formats them."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return page.format_value(value)


def _models_table(models: Mapping[str, Any]) -> str:
    cols: dict[str, dict[str, Any]] = {}
    keys = _metric_keys(models)
    for name, entry in models.items():
        for part in ("dense", "compressed"):
            e = entry.get(part) or {}
            row = {k: (e.get("metrics") or {}).get(k) for k in keys}
            row.update(bytes=e.get("bytes"), nonzero=e.get("nonzero"), sparsity=e.get("sparsity"))
            cols[f"{name} ({part})"] = row
    return page.table(cols, "test metrics and sizes before and after", fmt=_cell) if cols else ""


def _layers_table(layers: Mapping[str, Any]) -> str:
    rows = {
        f"{m}: {t}": {"sparsity": f"{100 * float(s):.1f} %"}
        for m, per in layers.items()
        if isinstance(per, dict)
        for t, s in per.items()
    }
    return page.table(rows, "sparsity of every pruned tensor", fmt=str) if rows else ""


def _histogram(name: str, h: Mapping[str, Any]) -> page.Figure | None:
    try:
        edges = np.asarray(h["edges"], dtype=float)
        dense = np.asarray(h["dense"], dtype=float)
        comp = np.asarray(h["compressed"], dtype=float)
    except (KeyError, TypeError, ValueError):
        return None
    if edges.ndim != 1 or dense.shape != (edges.size - 1,) or comp.shape != dense.shape:
        return None
    fig = plots.new_figure(6.0, 3.0)
    ax = fig.add_subplot(1, 1, 1)
    centres = (edges[1:] + edges[:-1]) / 2
    width = edges[1] - edges[0]
    ax.bar(centres, dense, width, alpha=0.5, label="dense")
    ax.bar(centres, comp, width, alpha=0.7, label="compressed (non-zeros)")
    ax.set_yscale("symlog")
    ax.set_xlabel("weight value")
    ax.set_ylabel("count")
    ax.legend(fontsize=7)
    caption = (
        f"Weights of {name}'s pruned tensors before and after: magnitude pruning removes "
        "the centre, so the surviving weights form two lobes (the seed's bimodal shape)."
    )
    return page.Figure(f"hist_{name}", f"Weights of {name}", caption, plots.figure_png(fig))


def compression_section(root: Any, section: Mapping[str, Any]) -> str:
    """HTML of a run's own compression results (``metrics.json`` → ``compression``);
    writes the weight histograms into ``root``."""
    parts = ["<section><h2>Compression</h2>"]
    for name, entry in section.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("rows"), list):
            continue
        metric = str(entry.get("metric", "metric"))
        dense = entry.get("dense") or {}
        table: dict[str, dict[str, Any]] = {
            "dense": {
                metric: dense.get("metric"),
                "bytes": dense.get("bytes"),
                "nonzero": dense.get("nonzero"),
                "bytes ratio": 1.0,
            }
        }
        for row in entry["rows"]:
            if not isinstance(row, dict):
                continue
            label = f"{100 * float(row.get('target', 0)):.0f} % pruned"
            if float(row.get("target", 0)) == 0:
                label = "dense, same fine-tuning"
            table[label] = {
                metric: row.get("metric"),
                "bytes": row.get("bytes"),
                "nonzero": row.get("nonzero"),
                "bytes ratio": row.get("bytes_ratio"),
            }
        parts.append(
            page.table(
                table, f"{name}: test {metric}, checkpoint bytes ({entry.get('dtype', '')})", _cell
            )
        )
        fig = _histogram(name, entry.get("histogram") or {})
        if fig is not None:
            atomic_write_bytes(root / f"{fig.name}.png", fig.png)
            parts.append(page.figure_html(fig))
    parts.append(
        "<p class='note'>Each row prunes a copy of the trained model along the cubic schedule "
        "while it fine-tunes (masks enforced), stores it as a sparse checkpoint and judges "
        "the weights loaded back from it; the dense row of equal fine-tuning isolates the "
        "effect of the extra steps.</p></section>"
    )
    return "".join(parts)


def build_compress_report(run: page.RunFiles) -> Path:
    """Write the histograms and ``report.html`` of a compress run; return the page's path."""
    m = run.metrics
    figures = [
        f
        for name, h in (m.get("histograms") or {}).items()
        if isinstance(h, dict)
        for f in [_histogram(name, h)]
        if f is not None
    ]
    for fig in figures:
        atomic_write_bytes(run.root / f"{fig.name}.png", fig.png)
    title = f"tertulia compress: {m.get('recipe', '')}"
    parts = [f"<h1>{page.escape(title)}</h1>"]
    settings = m.get("settings")
    if isinstance(settings, dict):
        parts.append(
            f"<p class='note'>From <code>{page.escape(m.get('source', ''))}</code></p>"
            + page.key_value_table(settings, css="data")
        )
    for key in ("dense", "compressed"):
        if isinstance(m.get(key), dict):
            parts.append(f"<h3>{page.escape(key)} ({page.escape(m.get('main', ''))})</h3>")
            parts.append(page.key_value_table(m[key], css="data"))
    models = m.get("models")
    if isinstance(models, dict):
        parts.append("<section><h2>Models</h2>" + _models_table(models) + "</section>")
    layers = m.get("layers")
    if isinstance(layers, dict):
        parts.append("<section><h2>Per tensor</h2>" + _layers_table(layers) + "</section>")
    if figures:
        parts.append("<section><h2>Figures</h2>")
        parts.extend(page.figure_html(f) for f in figures)
        parts.append("</section>")
    return atomic_write_text(run.root / page.REPORT_FILE, page.document(title, parts))
