r"""Report pages of the classical state-space recipes (``task: series``, ``task: island``).

Inputs, read from the run directory by :func:`tertulia.report.page.load_run_files`:

    metrics.json          task, recipe, description, data, models.{m}.{number},
                          series: n4sid_modes, em_modes [{real, imag, modulus,
                          growth_rate, period}]; island: open_loop, lqr, kalman …
    examples.safetensors  series: t, y, t_forecast, {m}.{filtered,smoothed,
                          forecast}.{mean,lo,hi}, {m}.residuals,
                          em.loglik_history, n4sid.singular_values
                          island: t, free.states, lqr.states, lqg.states,
                          truth, sensors, kalman.{filtered,smoothed}.{mean,lo,hi},
                          least_squares, open_loop.eig, closed_loop.eig

Every figure is skipped when its arrays are missing or malformed. Bands are
90 % (mean ± 1.645 σ).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from .._io import atomic_write_bytes, atomic_write_text
from . import page, plots


def _get(ex: Mapping[str, np.ndarray], key: str, size: int | None = None) -> np.ndarray | None:
    v = ex.get(key)
    if v is None or not isinstance(v, np.ndarray) or v.ndim == 0:
        return None
    if size is not None and v.shape[0] != size:
        return None
    return v


def _modes_table(modes: Any, title: str) -> str:
    if not isinstance(modes, list) or not modes:
        return ""
    rows = {
        f"λ{i + 1}": {
            k: m.get(k) for k in ("real", "imag", "modulus", "growth_rate", "period", "kind")
        }
        for i, m in enumerate(modes)
        if isinstance(m, dict)
    }
    return page.table(rows, title)


def _band(ax: Any, t: np.ndarray, ex: Mapping[str, np.ndarray], key: str, color: str, label: str):
    mean, lo, hi = (_get(ex, f"{key}.{k}", t.shape[0]) for k in ("mean", "lo", "hi"))
    if mean is None:
        return
    if lo is not None and hi is not None:
        ax.fill_between(t, lo, hi, color=color, alpha=0.18, linewidth=0)
    ax.plot(t, mean, color=color, lw=1.4, label=label)


# ------------------------------------------------------------------------- series


def _series_figures(run: page.RunFiles) -> list[page.Figure]:
    ex, models = run.examples, list(run.models())
    t, y = _get(ex, "t"), _get(ex, "y")
    if t is None or y is None or t.shape != y.shape:
        return []
    figures: list[page.Figure] = []
    tf = _get(ex, "t_forecast")
    fitted = [m for m in models if _get(ex, f"{m}.filtered.mean", t.shape[0]) is not None]
    if fitted:
        fig = plots.new_figure(8.5, 2.9 * len(fitted))
        axes = np.atleast_1d(fig.subplots(len(fitted), 1, squeeze=False)[:, 0])
        for ax, m in zip(axes, fitted, strict=True):
            ax.plot(t, y, "o", ms=2.6, color="black", label="data")
            _band(ax, t, ex, f"{m}.filtered", "#ff7f0e", "filtered E[h_t | y_1..t]")
            _band(ax, t, ex, f"{m}.smoothed", "#1f77b4", "smoothed E[h_t | y_1..T]")
            if tf is not None and tf.size:
                _band(ax, tf, ex, f"{m}.forecast", "#2ca02c", "forecast (observation)")
            ax.set_title(m)
            ax.legend(fontsize=7, loc="best")
        figures.append(
            page.Figure(
                "series",
                "Filtered, smoothed and forecast level",
                "Dots: the series (missing values leave gaps). Bands: 90 % intervals of the "
                "latent level (filtered, smoothed) and of the next observations (forecast).",
                plots.figure_png(fig),
            )
        )
    resid = [m for m in models if _get(ex, f"{m}.residuals") is not None]
    if resid:
        fig = plots.new_figure(9.5, 2.6 * len(resid))
        grid = fig.subplots(len(resid), 3, squeeze=False)
        for row, m in zip(grid, resid, strict=True):
            e = _get(ex, f"{m}.residuals")
            te = t if e.shape[0] == t.shape[0] else np.arange(e.shape[0])
            ok = np.isfinite(e)
            row[0].axhline(0, color="grey", lw=0.8)
            row[0].plot(te[ok], e[ok], lw=1.0, color="#1f77b4")
            row[0].set_title(f"{m}: standardised residuals", fontsize=9)
            lags = min(20, max(1, int(ok.sum()) // 4))
            from ..filters.diagnostics import autocorrelation  # lazy: filters import torch

            r = autocorrelation(e[ok], lags)
            row[1].bar(np.arange(1, lags + 1), r, color="#1f77b4")
            bound = 1.96 / np.sqrt(max(int(ok.sum()), 1))
            row[1].axhline(bound, color="grey", ls="--", lw=0.8)
            row[1].axhline(-bound, color="grey", ls="--", lw=0.8)
            row[1].set_title("autocorrelation (±1.96/√n)", fontsize=9)
            q = np.sort(e[ok])
            theory = stats.norm.ppf((np.arange(1, q.size + 1) - 0.5) / q.size)
            row[2].plot(theory, q, ".", ms=3, color="#1f77b4")
            lim = [float(min(theory.min(), q.min())), float(max(theory.max(), q.max()))]
            row[2].plot(lim, lim, color="grey", lw=0.8)
            row[2].set_title("normal Q–Q", fontsize=9)
        figures.append(
            page.Figure(
                "diagnostics",
                "Residual diagnostics",
                "One-step prediction errors divided by their predicted standard deviation, "
                "diffuse start dropped. A right model leaves white N(0, 1) noise: no "
                "autocorrelation outside the dashed bounds, points on the Q–Q line.",
                plots.figure_png(fig),
            )
        )
    history = _get(ex, "em.loglik_history")
    if history is not None and history.size > 1:
        fig = plots.new_figure(6.0, 3.2)
        ax = fig.subplots()
        ax.plot(np.arange(1, history.size + 1), history, color="#9467bd")
        ax.set_xlabel("EM iteration")
        ax.set_ylabel("log-likelihood")
        figures.append(
            page.Figure(
                "em",
                "EM log-likelihood",
                "Expectation–maximisation never decreases the likelihood (checked in the "
                "metrics as loglik_never_decreased).",
                plots.figure_png(fig),
            )
        )
    sv = _get(ex, "n4sid.singular_values")
    if sv is not None and sv.size:
        fig = plots.new_figure(6.0, 3.2)
        ax = fig.subplots()
        ax.semilogy(np.arange(1, sv.size + 1), np.maximum(sv, 1e-300), "o-", color="#8c564b")
        order = run.models().get("n4sid", {}).get("order")
        if isinstance(order, (int, float)):
            ax.axvline(order + 0.5, color="grey", ls="--", lw=0.8, label=f"order {int(order)}")
            ax.legend(fontsize=8)
        ax.set_xlabel("index")
        ax.set_ylabel("singular value")
        figures.append(
            page.Figure(
                "n4sid",
                "N4SID singular values",
                "Singular values of the weighted projection of future on past outputs; the "
                "gap after the system order separates states from noise.",
                plots.figure_png(fig),
            )
        )
    return figures


# ------------------------------------------------------------------------- island


def _island_figures(run: page.RunFiles) -> list[page.Figure]:
    ex = run.examples
    t = _get(ex, "t")
    figures: list[page.Figure] = []
    if t is None:
        return figures
    names = ("fish", "pelicans")
    runs = [
        (k, label, c)
        for k, label, c in (
            ("free", "no control", "#d62728"),
            ("lqr", "LQR (true state)", "#1f77b4"),
            ("lqg", "LQR on the Kalman estimate", "#2ca02c"),
        )
        if (s := _get(ex, f"{k}.states", t.shape[0])) is not None and s.ndim == 2
    ]
    if runs:
        fig = plots.new_figure(9.5, 3.4)
        axes = fig.subplots(1, 2)
        for j, ax in enumerate(axes):
            for k, label, c in runs:
                s = ex[f"{k}.states"][:, j]
                ax.plot(t, np.sign(s) * np.log10(1 + np.abs(s)), color=c, lw=1.2, label=label)
            ax.set_title(f"{names[j]} (deviation, signed log10(1+|x|))", fontsize=9)
            ax.set_xlabel("time")
        axes[0].legend(fontsize=7)
        figures.append(
            page.Figure(
                "control",
                "Boom and bust, and its control",
                "Without input the populations oscillate with growing amplitude "
                "(eigenvalues with positive real part); fish-food drops u = −K h from the "
                "continuous-time LQR bring both back to equilibrium, also when K acts on the "
                "Kalman estimate instead of the true state.",
                plots.figure_png(fig),
            )
        )
    truth = _get(ex, "truth", t.shape[0])
    if truth is not None and truth.ndim == 2:
        fig = plots.new_figure(9.5, 3.4)
        axes = fig.subplots(1, 2)
        ls = _get(ex, "least_squares", t.shape[0])
        for j, ax in enumerate(axes):
            ax.plot(t, truth[:, j], color="black", lw=1.2, label="truth")
            if ls is not None and ls.ndim == 2:
                ax.plot(t, ls[:, j], ".", ms=2, color="grey", label="sensors, least squares")
            for key, c, label in (
                ("kalman.filtered", "#ff7f0e", "Kalman filter"),
                ("kalman.smoothed", "#1f77b4", "RTS smoother"),
            ):
                mean = _get(ex, f"{key}.mean", t.shape[0])
                lo, hi = _get(ex, f"{key}.lo", t.shape[0]), _get(ex, f"{key}.hi", t.shape[0])
                if mean is None or mean.ndim != 2:
                    continue
                if lo is not None and hi is not None:
                    ax.fill_between(t, lo[:, j], hi[:, j], color=c, alpha=0.18, linewidth=0)
                ax.plot(t, mean[:, j], color=c, lw=1.1, label=label)
            ax.set_title(names[j], fontsize=9)
            ax.set_xlabel("time")
        axes[0].legend(fontsize=7)
        figures.append(
            page.Figure(
                "kalman",
                "Recovering the populations from four noisy sensors",
                "Truth of the LQR-controlled run, the per-step least-squares inversion of the "
                "sensors (grey) and the Kalman filter and smoother with 90 % bands.",
                plots.figure_png(fig),
            )
        )
    eig_open, eig_closed = _get(ex, "open_loop.eig"), _get(ex, "closed_loop.eig")
    if eig_open is not None and eig_open.ndim == 2:
        fig = plots.new_figure(4.6, 4.0)
        ax = fig.subplots()
        ax.axvline(0, color="grey", lw=0.8)
        ax.axhline(0, color="grey", lw=0.8)
        ax.plot(eig_open[:, 0], eig_open[:, 1], "x", ms=9, mew=2, color="#d62728", label="A")
        if eig_closed is not None and eig_closed.ndim == 2:
            ax.plot(eig_closed[:, 0], eig_closed[:, 1], "o", ms=7, color="#1f77b4", label="A − BK")
        ax.set_xlabel("Re λ")
        ax.set_ylabel("Im λ")
        ax.legend(fontsize=8)
        figures.append(
            page.Figure(
                "eigenvalues",
                "Eigenvalues, open and closed loop",
                "Right of the imaginary axis the system grows; LQR moves both eigenvalues "
                "to the left half-plane.",
                plots.figure_png(fig),
            )
        )
    return figures


# ------------------------------------------------------------------------- page


def _html(run: page.RunFiles, figures: list[page.Figure]) -> str:
    m = run.metrics
    title = f"tertulia report: {m.get('recipe', '')}"
    parts = [f"<h1>{page.escape(title)}</h1>"]
    if m.get("description"):
        parts.append(f"<p class='description'>{page.escape(m['description'])}</p>")
    parts.append(f"<p class='note'>Run directory: <code>{page.escape(run.root.name)}</code></p>")
    models = run.models()
    if models:
        parts.append("<section><h2>Models</h2>")
        parts.append(page.table(models, "fitted parameters, log-likelihood and diagnostics"))
        parts.append("</section>")
    tables = [
        _modes_table(m.get("n4sid_modes"), "N4SID eigenvalues (period in time units)"),
        _modes_table(m.get("em_modes"), "EM eigenvalues (period in time units)"),
        _modes_table(m.get("open_loop_modes"), "open loop: eigenvalues of A"),
        _modes_table(m.get("closed_loop_modes"), "closed loop: eigenvalues of A − BK"),
    ]
    for key in ("island", "kalman", "lqr"):
        if isinstance(m.get(key), dict):
            flat = {k: v for k, v in m[key].items() if not isinstance(v, (dict, list))}
            tables.append(f"<h3>{page.escape(key)}</h3>" + page.key_value_table(flat, css="data"))
    if any(tables):
        parts.append("<section><h2>Analysis</h2>")
        parts.extend(t for t in tables if t)
        parts.append("</section>")
    data = run.section("data")
    if data:
        parts.append("<section><h2>Data</h2>")
        parts.append(page.key_value_table(data, css="data"))
        parts.append("</section>")
    if figures:
        parts.append("<section><h2>Figures</h2>")
        parts.extend(page.figure_html(f) for f in figures)
        parts.append("</section>")
    for key in ("n4sid_skipped",):
        if m.get(key):
            parts.append(f"<p class='note'>{page.escape(m[key])}</p>")
    return page.document(title, parts)


def build_classical_report(run: page.RunFiles) -> Path:
    """Write the figures and ``report.html`` of a series or island run; return the page path."""
    task = run.metrics.get("task")
    figures = _series_figures(run) if task == "series" else _island_figures(run)
    for fig in figures:
        atomic_write_bytes(run.root / f"{fig.name}.png", fig.png)
    return atomic_write_text(run.root / page.REPORT_FILE, _html(run, figures))
