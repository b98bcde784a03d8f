r"""Figures of a run, drawn from plain numpy data (no model, no torch).

Every function builds a fresh :class:`matplotlib.figure.Figure` rendered by the
Agg canvas, so importing this module selects no backend and touches no pyplot
global state; :func:`figure_png` turns a figure into PNG bytes.

What each figure shows (y observed frame, μ/σ predictive mean/std):

    prediction_figure   μ ± 2σ against the clean next frame and the noisy y,
                        one panel per model, cell patch boundaries marked
    rollout_figure      nRMSE_k = mean_n ‖μ_nk − y_nk‖₂/‖y_nk‖₂ per rollout step k
    calibration_figure  observed coverage of μ ± Φ⁻¹((1+ℓ)/2)σ against ℓ
    residual_figure     ‖S^{r+1} − S^r‖/‖S^r‖ per round r of the orchestra
    attention_figure    α_ij, row i = receiving cell, column j = sender
    training_figure     training loss (and validation NLL, residual) per step
    spacetime_figure    truth | mean | |mean − truth| of one rollout

Axes
----
    G   grid points of the 1-D field
    K   rollout steps
    L   nominal levels of the calibration curve
    R   message rounds
    n   cells
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "DPI",
    "attention_figure",
    "calibration_figure",
    "figure_png",
    "model_color",
    "prediction_figure",
    "residual_figure",
    "rollout_figure",
    "spacetime_figure",
    "training_figure",
]

DPI = 110

# Fixed colours so a model looks the same in every figure.
_MODEL_COLORS = {"orchestra": "#1f77b4", "mlp": "#ff7f0e", "persistence": "#7f7f7f"}
_OTHER_COLORS = ("#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def model_color(model: str) -> str:
    """A stable colour for ``model`` (known models fixed, others by a name hash)."""
    if model in _MODEL_COLORS:
        return _MODEL_COLORS[model]
    return _OTHER_COLORS[sum(map(ord, model)) % len(_OTHER_COLORS)]


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure, *, dpi: int = DPI) -> bytes:
    """Render ``fig`` to PNG bytes with the Agg canvas."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def _positive_or_nan(values: np.ndarray) -> np.ndarray:
    """Values for a log axis: non-positive and non-finite entries become NaN."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def _set_log_y_if_possible(ax: Axes, *series: np.ndarray) -> None:
    if any(np.isfinite(s).any() for s in series):
        ax.set_yscale("log")


def _patch_boundaries(x: np.ndarray, cells: int) -> list[float]:
    """x positions between the grid patches of ``cells`` equal(ish) splits."""
    if cells < 2 or cells > x.size:
        return []
    starts = np.cumsum([len(c) for c in np.array_split(np.arange(x.size), cells)])[:-1]
    return [0.5 * (float(x[i - 1]) + float(x[i])) for i in starts]


def prediction_figure(
    x: np.ndarray,
    predictions: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    truth: np.ndarray | None = None,
    obs: np.ndarray | None = None,
    input_last: np.ndarray | None = None,
    cells: int | None = None,
) -> Figure:
    """One panel per model: mean, ±2σ band, truth, noisy observation, last input.

    ``predictions`` maps a model name to ``(mean, std)``, each of shape (G,).
    """
    names = list(predictions)
    if not names:
        raise ValueError("predictions must hold at least one model")
    fig = _new_figure(9.0, 0.6 + 2.4 * len(names))
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    boundaries = _patch_boundaries(x, cells) if cells else []
    for ax, name in zip(axes, names, strict=True):
        mean, std = predictions[name]
        color = model_color(name)
        for b in boundaries:
            ax.axvline(b, color="0.85", lw=0.8, zorder=0)
        if input_last is not None:
            ax.plot(x, input_last, color="0.55", lw=1.0, ls="--", label="last input frame")
        if obs is not None:
            ax.plot(x, obs, ".", color="0.25", ms=3.0, label="noisy next frame")
        if truth is not None:
            ax.plot(x, truth, color="black", lw=1.3, label="clean next frame")
        ax.fill_between(x, mean - 2 * std, mean + 2 * std, color=color, alpha=0.25, lw=0)
        ax.plot(x, mean, color=color, lw=1.8, label=f"{name} mean ± 2σ")
        ax.set_title(f"{name}: next-frame prediction", fontsize=10)
        ax.set_ylabel("u")
        ax.grid(alpha=0.25)
        ax.legend(loc="upper right", fontsize=7.5, ncols=2, framealpha=0.85)
    axes[-1].set_xlabel("x")
    return fig


def rollout_figure(curves: Mapping[str, Sequence[float]]) -> Figure:
    """nRMSE against rollout step (1-based) for every model, log y."""
    fig = _new_figure(6.4, 4.0)
    ax = fig.subplots()
    plotted = []
    for name, values in curves.items():
        v = _positive_or_nan(np.asarray(values, dtype=np.float64))
        steps = np.arange(1, v.size + 1)
        ax.plot(steps, v, marker="o", ms=3, lw=1.6, color=model_color(name), label=name)
        plotted.append(v)
    _set_log_y_if_possible(ax, *plotted)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("rollout step k")
    ax.set_ylabel("nRMSE")
    ax.set_title("Autoregressive rollout error")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def calibration_figure(
    levels: Sequence[float],
    observed: Mapping[str, Sequence[float]],
    *,
    areas: Mapping[str, float] | None = None,
) -> Figure:
    """Observed coverage against nominal level; the diagonal is perfect calibration."""
    fig = _new_figure(5.0, 5.0)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1.0, label="perfect calibration")
    lv = np.asarray(levels, dtype=np.float64)
    for name, values in observed.items():
        label = name
        area = (areas or {}).get(name)
        if area is not None and math.isfinite(area):
            label = f"{name} (area {area:.3f})"
        ax.plot(lv, np.asarray(values, dtype=np.float64), marker="o", ms=3, lw=1.6,
                color=model_color(name), label=label)  # fmt: skip
    ax.set_xlim(-0.02, 1.02)  # a little margin so markers at 0 and 1 are not cut
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("nominal level of central interval")
    ax.set_ylabel("observed coverage")
    ax.set_title("Calibration")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8.5)
    return fig


def residual_figure(residuals: Sequence[float]) -> Figure:
    """Relative state change per message round, log y."""
    fig = _new_figure(6.4, 4.0)
    ax = fig.subplots()
    v = _positive_or_nan(np.asarray(residuals, dtype=np.float64))
    ax.plot(np.arange(1, v.size + 1), v, marker="o", ms=4, lw=1.6, color=model_color("orchestra"))
    _set_log_y_if_possible(ax, v)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round r")
    ax.set_ylabel(r"$\Vert S^{r+1} - S^{r} \Vert \,/\, \Vert S^{r} \Vert$")
    ax.set_title("Orchestra: residual per round")
    ax.grid(alpha=0.3, which="both")
    return fig


def attention_figure(attention: np.ndarray, *, title: str = "Attention between cells") -> Figure:
    """Heat map of an (n, n) attention matrix with the values written in the cells."""
    a = np.asarray(attention, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"attention must be a square (n, n) matrix, got shape {a.shape}")
    n = a.shape[0]
    side = min(3.2 + 0.45 * n, 10.0)
    fig = _new_figure(side + 1.2, side)
    ax = fig.subplots()
    finite = a[np.isfinite(a)]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    image = ax.imshow(a, cmap="viridis", vmin=0.0, vmax=vmax)
    fig.colorbar(image, ax=ax, label="attention weight α_ij", shrink=0.85)
    if n <= 16:
        fontsize = 9 if n <= 8 else 6.5
        for i in range(n):
            for j in range(n):
                value = a[i, j]
                dark = not np.isfinite(value) or value < 0.6 * vmax
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=fontsize,
                        color="white" if dark else "black")  # fmt: skip
    ticks = np.arange(n)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    if n > 16:
        ax.tick_params(labelsize=6)
    ax.set_xlabel("sender cell j")
    ax.set_ylabel("receiving cell i")
    ax.set_title(title)
    return fig


def _smooth(values: np.ndarray, span: int) -> np.ndarray:
    """Exponential moving average that skips NaNs (a skipped step keeps the last value)."""
    alpha = 2.0 / (span + 1.0)
    out = np.empty_like(values)
    state = math.nan
    for i, v in enumerate(values):
        if math.isfinite(v):
            state = v if math.isnan(state) else (1 - alpha) * state + alpha * v
        out[i] = state
    return out


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [
        (float(r["step"]), float(r[key]))
        for r in records
        if isinstance(r.get(key), int | float) and isinstance(r.get("step"), int | float)
    ]
    if not pairs:
        return np.empty(0), np.empty(0)
    steps, values = np.asarray(pairs, dtype=np.float64).T
    order = np.argsort(steps, kind="stable")
    return steps[order], values[order]


def training_figure(records_by_model: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure | None:
    """Loss per step for each model (raw and smoothed), validation NLL as dots,
    and a second panel with the orchestra residual when it was logged.

    Returns ``None`` when no record holds a numeric ``step`` and ``loss``.
    """
    losses = {m: _series(r, "loss") for m, r in records_by_model.items()}
    losses = {m: s for m, s in losses.items() if s[0].size}
    if not losses:
        return None
    residuals = {m: _series(r, "residual") for m, r in records_by_model.items()}
    residuals = {m: s for m, s in residuals.items() if s[0].size}
    fig = _new_figure(11.0 if residuals else 6.8, 4.2)
    axes = fig.subplots(1, 2 if residuals else 1, squeeze=False)[0]
    ax = axes[0]
    # The view spans the smoothed curves, the bulk of the raw values and the
    # validation dots after the first 5% of steps, so early spikes do not
    # squash the interesting part (the data are clipped in view only).
    lows, highs = [], []
    for name, (steps, loss) in losses.items():
        color = model_color(name)
        tail = slice(loss.size // 20, None)
        if loss.size > 50:
            ax.plot(steps, loss, color=color, lw=0.7, alpha=0.3)
            smooth = _smooth(loss, max(5, loss.size // 50))
            ax.plot(steps, smooth, color=color, lw=1.8, label=f"{name} loss")
            raw = loss[tail][np.isfinite(loss[tail])]
            if raw.size:
                lows.append(np.percentile(raw, 2.0))
                highs.append(np.percentile(raw, 98.0))
            view = smooth[tail]
        else:
            ax.plot(steps, loss, color=color, lw=1.6, marker=".", label=f"{name} loss")
            view = loss
        val_steps, val = _series(records_by_model[name], "val_nll")
        if val.size:
            ax.plot(val_steps, val, "o", color=color, mec="black", mew=0.6, ms=5,
                    label=f"{name} validation NLL")  # fmt: skip
            view = np.concatenate([view, val])
        view = view[np.isfinite(view)]
        if view.size:
            lows.append(view.min())
            highs.append(view.max())
    if lows:
        low, high = float(min(lows)), float(max(highs))
        pad = 0.05 * (high - low) if high > low else max(1.0, abs(high))
        ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss (Gaussian NLL)")
    ax.set_title("Training curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if residuals:
        ax = axes[1]
        plotted = []
        for name, (steps, res) in residuals.items():
            v = _positive_or_nan(res)
            ax.plot(steps, v, color=model_color(name), lw=1.2, label=name)
            plotted.append(v)
        _set_log_y_if_possible(ax, *plotted)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("final-round residual")
        ax.set_title("Fixed-point residual during training")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return fig


def spacetime_figure(
    x: np.ndarray, truth: np.ndarray, mean: np.ndarray, *, model: str = "orchestra"
) -> Figure:
    """Space–time images of one rollout: truth | model mean | absolute error.

    ``truth`` and ``mean`` have shape (K, G); step k runs upward.
    """
    truth = np.asarray(truth, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    if truth.ndim != 2 or truth.shape != mean.shape:
        raise ValueError(
            f"truth and mean must both have shape (K, G), got {truth.shape} and {mean.shape}"
        )
    k = truth.shape[0]
    extent = (float(x[0]), float(x[-1]), 0.5, k + 0.5)
    fig = _new_figure(12.0, 3.8)
    axes = fig.subplots(1, 3, sharey=True)
    both = np.concatenate([truth.ravel(), mean.ravel()])
    both = both[np.isfinite(both)]
    vmin, vmax = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    common = dict(aspect="auto", origin="lower", extent=extent, interpolation="nearest")
    panels = [
        (truth, "truth", "RdBu_r", vmin, vmax),
        (mean, f"{model} mean", "RdBu_r", vmin, vmax),
        (np.abs(mean - truth), "|mean − truth|", "magma", 0.0, None),
    ]
    for ax, (image, title, cmap, lo, hi) in zip(axes, panels, strict=True):
        handle = ax.imshow(image, cmap=cmap, vmin=lo, vmax=hi, **common)
        fig.colorbar(handle, ax=ax, shrink=0.9)
        ax.set_title(title)
        ax.set_xlabel("x")
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("rollout step k")
    return fig
