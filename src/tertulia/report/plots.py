r"""Figures of a run, drawn from plain numpy data (no model, no torch).

Every function builds a fresh :class:`matplotlib.figure.Figure` rendered by the
Agg canvas, so importing this module selects no backend and touches no pyplot
global state; :func:`figure_png` turns a figure into PNG bytes. Pages that draw
their own figures use :func:`new_figure`, :func:`step_series` (one train-log key
against step), :func:`plot_steps`, :func:`plain_log_labels` and ``OTHER_COLORS``.

What each figure shows (y observed frame, μ/σ predictive mean/std):

    prediction_figure   μ ± 2σ against the clean next frame and the noisy y,
                        one panel per model, cell patch boundaries marked
    rollout_figure      nRMSE_k = mean_n ‖μ_nk − y_nk‖₂/‖y_nk‖₂ per rollout step k
    calibration_figure  observed coverage of μ ± Φ⁻¹((1+ℓ)/2)σ against ℓ
    residual_figure     ‖S^{r+1} − S^r‖/‖S^r‖ per round r of the orchestra
    attention_figure    α_ij, row i = receiving cell, column j = sender
    training_figure     training loss (and validation NLL, residual) per step
    spacetime_figure    truth | mean | |mean − truth| of one rollout
    rho_figure          histogram of the contraction factor ρ_b ≈ ‖∂F/∂S‖₂ at S*_b
    iterations_figure   histogram of the forward solver iterations per sample
    solver_training_figure  forward/backward solver iterations (and mean ρ) per step
    ood_figure          nRMSE_shift / nRMSE_in and σ̄_shift / σ̄_in per OOD condition
    adversarial_figure  nRMSE and 90% coverage against the attack radius ε

Axes
----
    G   grid points of the 1-D field
    K   rollout steps
    B   test samples (ρ, iterations)
    C   OOD conditions
    E   attack radii ε
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
from matplotlib.ticker import LogFormatter, MaxNLocator

__all__ = [
    "DPI",
    "OTHER_COLORS",
    "adversarial_figure",
    "attention_figure",
    "calibration_figure",
    "figure_png",
    "iterations_figure",
    "model_color",
    "new_figure",
    "ood_figure",
    "plain_log_labels",
    "plot_steps",
    "prediction_figure",
    "residual_figure",
    "rho_figure",
    "rollout_figure",
    "solver_training_figure",
    "spacetime_figure",
    "step_series",
    "training_figure",
]

DPI = 110

# Fixed colours so a model looks the same in every figure.
_MODEL_COLORS = {"orchestra": "#1f77b4", "mlp": "#ff7f0e", "persistence": "#7f7f7f"}
# Colours of the other models (by a name hash) and of other lines in a figure.
OTHER_COLORS = ("#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def model_color(model: str) -> str:
    """A stable colour for ``model`` (known models fixed, others by a name hash)."""
    if model in _MODEL_COLORS:
        return _MODEL_COLORS[model]
    return OTHER_COLORS[sum(map(ord, model)) % len(OTHER_COLORS)]


def new_figure(width: float, height: float) -> Figure:
    """An empty ``width`` × ``height`` inch figure (constrained layout) on an Agg canvas."""
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


class _PlainLogFormatter(LogFormatter):
    """LogFormatter's choice of the ticks to label, written as plain numbers (0.06, 2, 10)."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def plain_log_labels(ax: Axes) -> None:
    """Tick labels of a log y axis as plain numbers instead of 6×10⁻²."""
    if ax.get_yscale() == "log":
        ax.yaxis.set_major_formatter(_PlainLogFormatter())
        ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))


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
    fig = new_figure(9.0, 0.6 + 2.4 * len(names))
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
    fig = new_figure(6.4, 4.0)
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
    fig = new_figure(5.0, 5.0)
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
    fig = new_figure(6.4, 4.0)
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
    fig = new_figure(side + 1.2, side)
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


def step_series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the train-log ``records`` that hold a number under ``key``, by step."""
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
    """The training batches' Gaussian NLL per step for each model (raw and smoothed; the
    objective ``loss`` for models that log no ``nll``), validation NLL as dots, and a
    second panel with the orchestra residual when it was logged. Under β-NLL the
    objective is not the NLL: the curve shows the NLL, measured like the validation dots.

    Returns ``None`` when no record holds a numeric ``step`` and ``loss``.
    """
    keys = {
        m: "nll" if step_series(r, "nll")[0].size else "loss"
        for m, r in records_by_model.items()
    }
    losses = {m: step_series(r, keys[m]) for m, r in records_by_model.items()}
    losses = {m: s for m, s in losses.items() if s[0].size}
    if not losses:
        return None
    residuals = {m: step_series(r, "residual") for m, r in records_by_model.items()}
    residuals = {m: s for m, s in residuals.items() if s[0].size}
    fig = new_figure(11.0 if residuals else 6.8, 4.2)
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
            ax.plot(steps, smooth, color=color, lw=1.8, label=f"{name} {keys[name]}")
            raw = loss[tail][np.isfinite(loss[tail])]
            if raw.size:
                lows.append(np.percentile(raw, 2.0))
                highs.append(np.percentile(raw, 98.0))
            view = smooth[tail]
        else:
            ax.plot(steps, loss, color=color, lw=1.6, marker=".", label=f"{name} {keys[name]}")
            view = loss
        val_steps, val = step_series(records_by_model[name], "val_nll")
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
    plotted = {keys[m] for m in losses}
    ax.set_ylabel("Gaussian NLL" if plotted == {"nll"} else "training loss / NLL")
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
    fig = new_figure(12.0, 3.8)
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


def _histogram_bins(values: np.ndarray) -> int:
    return int(min(40, max(5, round(math.sqrt(values.size)))))


def rho_figure(rho: Sequence[float]) -> Figure:
    """Histogram of the contraction factor ρ per sample (B,), a line at ρ = 1 and the
    fraction of samples below 1 in the title (non-finite ρ counts as not below 1)."""
    v = np.asarray(rho, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("rho must hold at least one value")
    finite = v[np.isfinite(v)]
    below = float(np.mean(v < 1.0))
    fig = new_figure(6.4, 4.0)
    ax = fig.subplots()
    if finite.size:
        ax.hist(finite, bins=_histogram_bins(finite), color=model_color("orchestra"),
                alpha=0.85, edgecolor="white", lw=0.5)  # fmt: skip
    ax.axvline(1.0, color="#d62728", ls="--", lw=1.4, label="ρ = 1 (contraction limit)")
    ax.set_xlabel("contraction factor ρ ≈ ‖∂F/∂S‖₂ at the fixed point")
    ax.set_ylabel("test samples")
    ax.set_title(f"Contraction factor per test sample: {below:.1%} below 1")
    if finite.size < v.size:
        ax.text(0.99, 0.97, f"{v.size - finite.size} non-finite not shown",
                transform=ax.transAxes, ha="right", va="top", fontsize=8)  # fmt: skip
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8.5)
    return fig


def iterations_figure(iterations: Sequence[float]) -> Figure:
    """Histogram of the forward solver iterations per sample (B,), one bin per count
    when the counts are integers over a short range; a line marks the mean."""
    v = np.asarray(iterations, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("iterations must hold at least one finite value")
    lo, hi = float(v.min()), float(v.max())
    if np.all(v == np.round(v)) and hi - lo <= 80:
        bins: Any = np.arange(lo - 0.5, hi + 1.5)
    else:
        bins = _histogram_bins(v)
    fig = new_figure(6.4, 4.0)
    ax = fig.subplots()
    ax.hist(v, bins=bins, color=model_color("orchestra"), alpha=0.85, edgecolor="white", lw=0.5)
    mean = float(v.mean())
    ax.axvline(mean, color="black", ls="--", lw=1.2, label=f"mean {mean:.3g}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("forward solver iterations")
    ax.set_ylabel("test samples")
    ax.set_title("Forward solver iterations per test sample")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8.5)
    return fig


def plot_steps(
    ax: Axes, steps: np.ndarray, values: np.ndarray, *, color: str, ls: str, label: str
) -> None:
    """Raw values, with a moving average on top for long series (as in training_figure)."""
    if values.size > 50:
        ax.plot(steps, values, color=color, lw=0.7, ls=ls, alpha=0.3)
        ax.plot(steps, _smooth(values, max(5, values.size // 50)), color=color, lw=1.8, ls=ls,
                label=label)  # fmt: skip
    else:
        ax.plot(steps, values, color=color, lw=1.5, ls=ls, marker=".", label=label)


def solver_training_figure(
    records_by_model: Mapping[str, Sequence[Mapping[str, Any]]],
) -> Figure | None:
    """Forward (solid) and backward (dashed) solver iterations per training step for
    every model that logged them, and a second panel with the logged mean ρ.

    Reads the keys ``iterations``, ``backward_iterations`` and ``rho`` of the records;
    returns ``None`` when no record holds a numeric ``step`` and one of them.
    """
    iters = {}
    rhos = {}
    for name, records in records_by_model.items():
        forward = step_series(records, "iterations")
        backward = step_series(records, "backward_iterations")
        if forward[0].size or backward[0].size:
            iters[name] = (forward, backward)
        rho = step_series(records, "rho")
        if rho[0].size:
            rhos[name] = rho
    panels = int(bool(iters)) + int(bool(rhos))
    if not panels:
        return None
    fig = new_figure(5.8 * panels, 4.0)
    axes = list(fig.subplots(1, panels, squeeze=False)[0])
    if iters:
        ax = axes.pop(0)
        for name, ((fs, fv), (bs, bv)) in iters.items():
            color = model_color(name)
            if fv.size:
                plot_steps(ax, fs, fv, color=color, ls="-", label=f"{name} forward")
            if bv.size:
                plot_steps(ax, bs, bv, color=color, ls="--", label=f"{name} backward (adjoint)")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("solver iterations (batch mean)")
        ax.set_title("Solver iterations during training")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if rhos:
        ax = axes.pop(0)
        for name, (steps, rho) in rhos.items():
            ax.plot(steps, rho, color=model_color(name), lw=1.4, marker=".", label=name)
        ax.axhline(1.0, color="#d62728", ls="--", lw=1.2, label="ρ = 1")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("mean contraction factor ρ")
        ax.set_title("Contraction factor during training")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def ood_figure(
    conditions: Sequence[str], ratios: Mapping[str, tuple[Sequence[float], Sequence[float]]]
) -> Figure:
    """Grouped bars of nRMSE_shift / nRMSE_in per condition (C,) and model, drawn from
    the line ratio = 1; diamonds mark σ̄_shift / σ̄_in. Log y when every shown ratio is
    positive. ``ratios`` maps a model to ``(nrmse_ratio, std_ratio)``, each (C,), NaN
    where missing.
    """
    names = list(ratios)
    if not names or not conditions:
        raise ValueError("ood_figure needs at least one condition and one model")
    c = len(conditions)
    width = 0.8 / len(names)
    fig = new_figure(max(6.4, 1.6 + 0.45 * c * len(names) + 0.5 * c), 4.4)
    ax = fig.subplots()
    arrays = {
        m: (np.asarray(r, dtype=np.float64), np.asarray(s, dtype=np.float64))
        for m, (r, s) in ratios.items()
    }
    shown = np.concatenate([np.concatenate(v) for v in arrays.values()])
    shown = shown[np.isfinite(shown)]
    log = bool(shown.size) and bool(np.all(shown > 0))
    x = np.arange(c, dtype=np.float64)
    for i, name in enumerate(names):
        error, sigma = arrays[name]
        color = model_color(name)
        offset = x + (i - (len(names) - 1) / 2) * width
        ax.bar(offset, np.where(np.isfinite(error), error - 1.0, np.nan), width * 0.9,
               bottom=1.0, color=color, alpha=0.85, label=f"{name}: nRMSE ratio")  # fmt: skip
        ax.plot(offset, sigma, "D", color=color, mec="black", mew=0.8, ms=6,
                label=f"{name}: " + r"$\hat\sigma$ ratio")  # fmt: skip
    ax.axhline(1.0, color="0.3", lw=1.0)
    if log:
        ax.set_yscale("log")
        plain_log_labels(ax)
    ax.set_xticks(x)
    ax.set_xticklabels(
        list(conditions), rotation=20 if c > 4 else 0, ha="right" if c > 4 else "center"
    )
    ax.set_ylabel("shifted / in-distribution")
    ax.set_title(r"Out of distribution: error and predicted $\hat\sigma$ relative to the test set")
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(fontsize=8, ncols=2)
    return fig


def adversarial_figure(
    curves: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]]],
) -> Figure:
    """nRMSE (left, log y when positive) and 90% coverage (right) against the attack
    radius ε for every model: FGSM dashed, PGD solid, both from the clean point at ε = 0.

    ``curves[model][method]`` is ``(eps, nrmse, coverage_90)``, each (E,), for the
    methods ``"fgsm"``, ``"pgd"`` and ``"none"`` (the clean scores, ε = 0).
    """
    if not curves:
        raise ValueError("adversarial_figure needs at least one model")
    fig = new_figure(11.0, 4.2)
    err_ax, cov_ax = fig.subplots(1, 2)
    styles = {"fgsm": ("--", "s", "FGSM"), "pgd": ("-", "o", "PGD")}
    plotted = []
    for name, methods in curves.items():
        color = model_color(name)
        clean = methods.get("none")
        start = None
        if clean is not None and len(clean[0]):
            start = (0.0, float(clean[1][0]), float(clean[2][0]))
            err_ax.plot([0.0], [start[1]], "*", color=color, mec="black", ms=11, zorder=3)
            cov_ax.plot([0.0], [start[2]], "*", color=color, mec="black", ms=11, zorder=3)
        for method, (ls, marker, word) in styles.items():
            if method not in methods:
                continue
            eps, nrmse, cov = (np.asarray(a, dtype=np.float64) for a in methods[method])
            if start is not None and not np.any(eps == 0.0):
                eps = np.concatenate([[start[0]], eps])
                nrmse = np.concatenate([[start[1]], nrmse])
                cov = np.concatenate([[start[2]], cov])
            order = np.argsort(eps, kind="stable")
            eps, nrmse, cov = eps[order], nrmse[order], cov[order]
            label = f"{name} {word}"
            err = _positive_or_nan(nrmse)
            err_ax.plot(eps, err, ls=ls, marker=marker, ms=4, lw=1.6, color=color, label=label)
            cov_ax.plot(eps, cov, ls=ls, marker=marker, ms=4, lw=1.6, color=color, label=label)
            plotted.append(err)
    _set_log_y_if_possible(err_ax, *plotted)
    plain_log_labels(err_ax)
    err_ax.set_xlabel("attack radius ε (relative to the window RMS)")
    err_ax.set_ylabel("nRMSE")
    err_ax.set_title("Error under attack (★ clean)")
    err_ax.grid(alpha=0.3, which="both")
    err_ax.legend(fontsize=8)
    cov_ax.axhline(0.9, color="0.4", ls=":", lw=1.2, label="nominal 0.9")
    cov_ax.set_ylim(-0.02, 1.02)
    cov_ax.set_xlabel("attack radius ε (relative to the window RMS)")
    cov_ax.set_ylabel("coverage of the 90% interval")
    cov_ax.set_title("Calibration under attack")
    cov_ax.grid(alpha=0.3)
    cov_ax.legend(fontsize=8)
    return fig
