"""Report page of the ``continual`` job: what each model remembers of earlier regimes.

Inputs (metrics.json): data.{nus, steps_per_regime}, models.{m}.{forgetting,
final, learned, R}, curves.{m}.{steps, nrmse}, params, periods. Sections are
skipped when their data is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes, atomic_write_text
from . import page, plots


def _curves(m: Mapping[str, Any]) -> page.Figure | None:
    curves, data = m.get("curves") or {}, m.get("data") or {}
    nus, per = data.get("nus"), data.get("steps_per_regime")
    if not isinstance(curves, dict) or not curves or not nus:
        return None
    fig = plots.new_figure(3.2 * len(curves), 3.0)
    for i, (name, c) in enumerate(curves.items()):
        try:
            steps = np.asarray(c["steps"], dtype=float)
            values = np.asarray(c["nrmse"], dtype=float)
        except (KeyError, TypeError, ValueError):
            return None
        if values.ndim != 2 or values.shape != (steps.size, len(nus)):
            return None
        ax = fig.add_subplot(1, len(curves), i + 1)
        for j, nu in enumerate(nus):
            ax.plot(steps, values[:, j], label=f"ν = {nu}")
        if per:
            for b in range(1, len(nus)):
                ax.axvline(b * per, color="0.6", lw=0.8, ls="--")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        if i == 0:
            ax.set_ylabel("test nRMSE")
            ax.legend(fontsize=7)
    caption = (
        "Test error on every regime while the stream goes on (dashed: a new regime starts). "
        "A curve rising after its own regime ends is forgetting."
    )
    return page.Figure("continual_curves", "Error on every regime", caption, plots.figure_png(fig))


def _matrices(m: Mapping[str, Any]) -> page.Figure | None:
    models, nus = m.get("models") or {}, (m.get("data") or {}).get("nus")
    mats = {}
    for name, row in models.items():
        try:
            mats[name] = np.asarray(row["R"], dtype=float)
        except (KeyError, TypeError, ValueError):
            return None
    if not mats or not nus or any(a.shape != (len(nus), len(nus)) for a in mats.values()):
        return None
    vmin = min(float(a.min()) for a in mats.values())
    vmax = max(float(a.max()) for a in mats.values())
    fig = plots.new_figure(3.0 * len(mats), 2.9)
    for i, (name, a) in enumerate(mats.items()):
        ax = fig.add_subplot(1, len(mats), i + 1)
        im = ax.imshow(a, vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(nus)), [str(v) for v in nus], fontsize=7)
        ax.set_yticks(range(len(nus)), [str(v) for v in nus], fontsize=7)
        ax.set_xlabel("tested on ν")
        if i == 0:
            ax.set_ylabel("after training on ν")
        for r in range(len(nus)):
            for c in range(len(nus)):
                ax.text(c, r, f"{a[r, c]:.3f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=fig.axes, shrink=0.8)
    caption = (
        "R[i, j]: test nRMSE on regime j after training on regime i. Below the diagonal is "
        "memory of the past; forgetting is the last row minus the diagonal, averaged."
    )
    return page.Figure("continual_matrix", "Regime-by-regime error", caption, plots.figure_png(fig))


def build_continual_report(run: page.RunFiles) -> Path:
    """Write the figures and ``report.html`` of a continual run; return the page's path."""
    m = run.metrics
    figures = [f for f in (_curves(m), _matrices(m)) if f is not None]
    for fig in figures:
        atomic_write_bytes(run.root / f"{fig.name}.png", fig.png)
    title = f"tertulia report: {m.get('recipe', '')}"
    parts = [f"<h1>{page.escape(title)}</h1>"]
    if m.get("description"):
        parts.append(f"<p class='description'>{page.escape(m['description'])}</p>")
    models = m.get("models")
    if isinstance(models, dict) and models:
        rows = {
            name: {k: row.get(k) for k in ("forgetting", "final", "learned", "seconds")}
            | {"params": (m.get("params") or {}).get(name)}
            for name, row in models.items()
            if isinstance(row, dict)
        }
        parts.append("<section><h2>Forgetting</h2>" + page.table(rows, "test nRMSE"))
        base, cms = models.get("mlp", {}), models.get("cms", {})
        if base.get("forgetting") and cms.get("forgetting") is not None:
            ratio = cms["forgetting"] / base["forgetting"]
            parts.append(
                f"<p class='note'>CMS forgets {ratio:.2f}× as much as the plain MLP. "
                "<i>learned</i> is the mean error on each regime right after training on it; "
                "<i>final</i> the mean error on all regimes at the end.</p>"
            )
        parts.append("</section>")
    for key, label in (("data", "Data"), ("periods", "Update periods")):
        if isinstance(m.get(key), dict):
            parts.append(f"<section><h2>{label}</h2>")
            parts.append(page.key_value_table(m[key], css="data") + "</section>")
    if figures:
        parts.append("<section><h2>Figures</h2>")
        parts.extend(page.figure_html(f) for f in figures)
        parts.append("</section>")
    return atomic_write_text(run.root / page.REPORT_FILE, page.document(title, parts))
