r"""The forecast page: the report of every run whose task has no page of its own
(forecast, sequence, lm, recall and any other task): metrics, parameters, data,
training, figures, equilibrium and robustness sections, and the compression section
of runs that compress their own models (:func:`.compress.compression_section`).

Inputs (only ``metrics.json`` is required; every other piece, section, model
or curve may be missing, null or malformed and its table row, column or figure
is then skipped):

    metrics.json          recipe, description, params, models.{m}.{metric},
                          curves.{rollout_nrmse, calibration, residual_per_round,
                          attention, cells, rho, iterations}, train.{m}, data,
                          robustness.{ood, adversarial}.{m}
    examples.safetensors  x, input_last, truth, obs: (G,);  {m}.mean, {m}.std: (G,);
                          rollout.truth, {m}.rollout_mean: (K, G)
    train_log.jsonl       one {"model", "step", "loss", ...} object per line

Equilibrium (fixed-point solver) inputs, all optional:

    models.{m}            iterations_mean, converged_fraction, rho_mean, rho_max,
                          rho_below_1 (test split)
    train.{m}             unconverged_fraction, forward_iterations_mean,
                          backward_iterations_mean, peak_activation_mb,
                          mode (bptt | truncated | deq), backward (implicit | phantom)
    curves.rho            ρ_b per test sample of the orchestra: (B,)
    curves.iterations     forward solver iterations per test sample: (B,)
    train_log.jsonl       per record: iterations, backward_iterations, unconverged,
                          rho (some steps only), activation_mb, block

Robustness inputs (``tertulia.robustness``), all optional:

    robustness.ood.{m}          evaluate_ood: in_distribution, conditions [{name,
                                scores, nrmse_ratio, std_ratio, sigma_follows_error …}],
                                spearman_std_error, skipped {name: reason}
    robustness.adversarial.{m}  evaluate_adversarial: rows [{method, eps, nrmse,
                                nrmse_ratio, nll, coverage_90 …}], samples

Recall runs (``task: recall``) add ``models.{m}.accuracy`` ({distance: accuracy}) and
``data.chance_accuracy`` as one more figure, accuracy against distance.

Outputs, written atomically into the run directory: one PNG per figure and
``report.html``, a single page with the PNGs embedded as base64 data URIs,
inline CSS, no scripts and no external resources.

"Best" in the metrics table: lower wins for errors (nrmse, rmse, mse, mae,
*_error), nll, crps and the miscalibration area; for ``coverage_XX`` the value
closest to the nominal XX/100 wins. Other rows (rounds, residuals, message
counts, solver iterations, converged fractions, ρ, activation memory) are not
ranked. The robustness tables bold, per row, the best nrmse, nll and coverage_90
by the same rules.

Axes
----
    G   grid points;  K   rollout steps;  L   calibration levels;  n   cells
    B   test samples
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes, atomic_write_text
from . import plots
from .compress import compression_section
from .page import (
    REPORT_FILE,
    TRAIN_LOG_FILE,
    Figure,
    RunFiles,
    document,
    escape,
    figure_html,
    format_count,
    format_value,
    key_value_table,
    order_models,
    real_number,
    training_table,
)

__all__ = ["build_forecast_report"]

_LOWER_IS_BETTER_TOKENS = frozenset(
    {"nrmse", "rmse", "mse", "mae", "nll", "crps", "error", "miscalibration"}
)
# Solver diagnostics describe cost and stability, not accuracy: never ranked, even
# when a name also holds a token above (e.g. "rho_error").
_UNRANKED_TOKENS = frozenset({"iterations", "converged", "unconverged", "rho", "activation"})
_COVERAGE_KEY = re.compile(r"^coverage_(\d+)$")


def _float_list(value: Any) -> np.ndarray | None:
    """A finite-length 1-D float array, or None when ``value`` is not a list of numbers."""
    if not isinstance(value, list) or not value:
        return None
    numbers = [real_number(v) for v in value]
    if any(v is None for v in numbers):
        return None
    return np.asarray(numbers, dtype=np.float64)


def _ranking(key: str) -> tuple[Callable[[float], float], str] | None:
    """A score where lower is better for ``key`` and a word on it, or None."""
    tokens = set(key.lower().split("_"))
    if _UNRANKED_TOKENS & tokens:
        return None
    match = _COVERAGE_KEY.match(key)
    if match:
        nominal = int(match.group(1)) / 100.0
        return (lambda v: abs(v - nominal)), f"closest to {nominal:g}"
    if _LOWER_IS_BETTER_TOKENS & tokens:
        return (lambda v: v), "lower"
    return None


def _best_models(key: str, row: Mapping[str, Any]) -> tuple[set[str], str]:
    ranking = _ranking(key)
    if ranking is None:
        return set(), ""
    score, word = ranking
    scores = {}
    for model, value in row.items():
        number = real_number(value)
        if number is not None and math.isfinite(number):
            scores[model] = score(number)
    if len(scores) < 2:
        return set(), word
    best = min(scores.values())
    return {m for m, s in scores.items() if math.isclose(s, best, rel_tol=1e-12, abs_tol=0)}, word


# --------------------------------------------------------------------------- tables


def _metrics_table(models: dict[str, dict[str, Any]]) -> str:
    names = order_models(list(models))
    keys = list(dict.fromkeys(k for m in names for k in models[m]))
    if not names or not keys:
        return "<p class='note'>No model metrics were recorded.</p>"
    head = "".join(f"<th>{escape(m)}</th>" for m in names)
    rows = []
    for key in keys:
        row = {m: models[m].get(key) for m in names}
        best, word = _best_models(key, row)
        cells = []
        for m in names:
            text = escape(format_value(row[m])) if key in models[m] else "—"
            cells.append(
                f"<td class='best'><b>{text}</b></td>" if m in best else f"<td>{text}</td>"
            )
        better = f"<td class='better'>{escape(word)}</td>"
        rows.append(f"<tr><th scope='row'>{escape(key)}</th>{''.join(cells)}{better}</tr>")
    return (
        "<table class='metrics'><thead><tr><th>metric</th>"
        f"{head}<th class='better'>better</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        "<p class='note'>Values to 4 significant digits, on the test split. "
        "<b>Bold</b>: best among the models where “better” is defined.</p>"
    )


# (column header, section of metrics.json, key) of the equilibrium table
_EQUILIBRIUM_COLUMNS = (
    ("forward iterations (test)", "models", "iterations_mean"),
    ("converged (test)", "models", "converged_fraction"),
    ("ρ mean", "models", "rho_mean"),
    ("ρ max", "models", "rho_max"),
    ("fraction ρ < 1", "models", "rho_below_1"),
    ("forward iterations (training)", "train", "forward_iterations_mean"),
    ("backward iterations (training)", "train", "backward_iterations_mean"),
    ("unconverged (training)", "train", "unconverged_fraction"),
    ("peak activation MB", "train", "peak_activation_mb"),
)


def _training_mode(summary: Mapping[str, Any]) -> str:
    """``"deq / implicit"`` from the string fields ``mode`` and ``backward`` ('' if none)."""
    words = [summary.get(k) for k in ("mode", "backward")]
    return " / ".join(w for w in words if isinstance(w, str) and w)


def _equilibrium_table(run: RunFiles) -> str:
    """One row per model with a numeric solver diagnostic; columns nobody has are dropped."""
    sources = {
        "models": run.models(),
        "train": {m: v for m, v in run.section("train").items() if isinstance(v, dict)},
    }
    names = order_models(list(sources["models"]) + list(sources["train"]))
    values = {
        m: [real_number(sources[sec].get(m, {}).get(key)) for _, sec, key in _EQUILIBRIUM_COLUMNS]
        for m in names
    }
    rows = [m for m in names if any(v is not None for v in values[m])]
    if not rows:
        return ""
    used = [
        i for i in range(len(_EQUILIBRIUM_COLUMNS)) if any(values[m][i] is not None for m in rows)
    ]
    modes = {m: _training_mode(sources["train"].get(m, {})) for m in rows}
    show_mode = any(modes.values())
    head = ("<th>training mode</th>" if show_mode else "") + "".join(
        f"<th>{escape(_EQUILIBRIUM_COLUMNS[i][0])}</th>" for i in used
    )
    body = []
    for m in rows:
        cells = f"<td>{escape(modes[m] or '—')}</td>" if show_mode else ""
        cells += "".join(f"<td>{escape(format_value(values[m][i]))}</td>" for i in used)
        body.append(f"<tr><th scope='row'>{escape(m)}</th>{cells}</tr>")
    return (
        f"<table class='equilibrium'><thead><tr><th>model</th>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
        "<p class='note'>Test columns: means over the test split (converged: fraction of "
        "samples whose forward solve met the tolerance). ρ: contraction factor of the round "
        "map at the fixed point, ρ ≈ ‖∂F/∂S‖₂; below 1 the rounds contract. Training "
        "columns: means over the optimiser steps (backward: adjoint solver iterations of "
        "the implicit gradient). Diagnostics, not scores: nothing is ranked.</p>"
    )


_IN_DISTRIBUTION = ""  # key of the in-distribution row (condition names are non-empty)
# (column header, key) per model in the OOD and adversarial tables
_OOD_COLUMNS = (
    ("nRMSE", "nrmse"),
    ("nRMSE ratio", "nrmse_ratio"),
    ("NLL", "nll"),
    ("coverage 90", "coverage_90"),
    ("σ̂ ratio", "std_ratio"),
    ("σ̂ follows error", "sigma_follows_error"),
)
_ADVERSARIAL_COLUMNS = (
    ("nRMSE", "nrmse"),
    ("nRMSE ratio", "nrmse_ratio"),
    ("NLL", "nll"),
    ("coverage 90", "coverage_90"),
)
_RANKED_ROBUSTNESS_KEYS = ("nrmse", "nll", "coverage_90")
_METHOD_ORDER = {"none": 0, "fgsm": 1, "pgd": 2}
_METHOD_LABEL = {"none": "clean", "fgsm": "FGSM", "pgd": "PGD"}


def _robustness(run: RunFiles, key: str) -> dict[str, dict[str, Any]]:
    """``robustness.{key}`` per model (dict entries only), in canonical model order."""
    raw = run.section("robustness").get(key)
    if not isinstance(raw, dict):
        return {}
    return {m: raw[m] for m in order_models(list(raw)) if isinstance(raw[m], dict)}


def _ood_rows(entry: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Condition name → scores of one model; the in-distribution row first."""
    rows: dict[str, dict[str, Any]] = {}
    ref = entry.get("in_distribution")
    if isinstance(ref, dict):
        rows[_IN_DISTRIBUTION] = ref
    conditions = entry.get("conditions")
    for c in conditions if isinstance(conditions, list) else ():
        if isinstance(c, dict) and isinstance(c.get("name"), str) and c["name"]:
            rows.setdefault(c["name"], c)
    return rows


def _adversarial_rows(entry: Mapping[str, Any]) -> dict[tuple[str, float], dict[str, Any]]:
    """(method, ε) → scores of one model; rows without a string method or numeric ε dropped."""
    rows: dict[tuple[str, float], dict[str, Any]] = {}
    raw = entry.get("rows")
    for r in raw if isinstance(raw, list) else ():
        if not isinstance(r, dict):
            continue
        method, eps = r.get("method"), real_number(r.get("eps"))
        if isinstance(method, str) and eps is not None and math.isfinite(eps):
            rows.setdefault((method, eps), r)
    return rows


def _flag(value: Any) -> str:
    if value is True:
        return "<td class='yes'>✓</td>"
    if value is False:
        return "<td class='no'>✗</td>"
    return "<td>—</td>"


def _grouped_table(
    css: str,
    row_heads: Sequence[str],
    rows: Sequence[tuple[Sequence[str], Mapping[str, Mapping[str, Any]]]],
    columns: Sequence[tuple[str, str]],
) -> str:
    """A table with ``columns`` under every model. ``rows`` holds (row header cells,
    model → scores); numbers as elsewhere, booleans as ✓/✗, best per row in bold."""
    models = list(dict.fromkeys(m for _, scores in rows for m in scores))
    top = "".join(f"<th rowspan='2'>{escape(h)}</th>" for h in row_heads) + "".join(
        f"<th colspan='{len(columns)}'>{escape(m)}</th>" for m in models
    )
    sub = "".join(f"<th>{escape(h)}</th>" for m in models for h, _ in columns)
    body = []
    for heads, scores in rows:
        best = {
            k: _best_models(k, {m: scores[m].get(k) for m in scores})[0]
            for k in _RANKED_ROBUSTNESS_KEYS
        }
        cells = [f"<th scope='row'>{escape(h)}</th>" for h in heads]
        for m in models:
            for _, k in columns:
                value = scores.get(m, {}).get(k)
                if k == "sigma_follows_error":
                    cells.append(_flag(value))
                elif m in best.get(k, ()):
                    cells.append(f"<td class='best'><b>{escape(format_value(value))}</b></td>")
                else:
                    cells.append(f"<td>{escape(format_value(value))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f"<div class='scroll'><table class='{css}'><thead><tr>{top}</tr><tr>{sub}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _ood_tables(run: RunFiles) -> str:
    entries = _robustness(run, "ood")
    per_model = {m: r for m, e in entries.items() if (r := _ood_rows(e))}
    parts = []
    if per_model:
        names = list(dict.fromkeys(c for rows in per_model.values() for c in rows))
        names.sort(key=lambda c: c != _IN_DISTRIBUTION)  # stable: in distribution first
        rows = [
            (
                ["in distribution" if c == _IN_DISTRIBUTION else c],
                {m: r[c] for m, r in per_model.items() if c in r},
            )
            for c in names
        ]
        parts.append("<h3>Out of distribution</h3>")
        parts.append(_grouped_table("ood", ["condition"], rows, _OOD_COLUMNS))
        parts.append(
            "<p class='note'>Each condition is a test set with one quantity shifted and "
            "everything else as trained. Ratios: shifted / in distribution (nRMSE, and the "
            "mean predicted σ̂). σ̂ follows error: ✓ when σ̂ grows whenever the error does "
            "(or the error does not grow), ✗ when the model stays confident while its error "
            "grows. <b>Bold</b>: best nRMSE, NLL and coverage per condition.</p>"
        )
    skipped: dict[str, dict[str, list[str]]] = {}
    for m, e in entries.items():
        raw = e.get("skipped")
        for name, reason in raw.items() if isinstance(raw, dict) else ():
            skipped.setdefault(str(name), {}).setdefault(format_value(reason), []).append(m)
    if skipped:
        items = []
        for name, reasons in skipped.items():
            for reason, models in reasons.items():
                who = "" if len(models) == len(entries) else f" ({', '.join(models)})"
                items.append(f"<li><b>{escape(name)}</b>{escape(who)}: {escape(reason)}</li>")
        parts.append(
            f"<p class='note'>Skipped conditions:</p><ul class='note'>{''.join(items)}</ul>"
        )
    spearman = {
        m: e["spearman_std_error"]
        for m, e in entries.items()
        if "spearman_std_error" in e
        and (e["spearman_std_error"] is None or real_number(e["spearman_std_error"]) is not None)
    }
    if spearman:
        values = ", ".join(
            f"{m} {format_value(v) if v is not None else '— (undefined)'}"
            for m, v in spearman.items()
        )
        parts.append(
            "<p class='note spearman'>Spearman rank correlation between σ̂ and the error per "
            "sample, pooled over the test set and every condition (1: σ̂ orders the samples "
            f"by their error, 0: no relation): {escape(values)}.</p>"
        )
    return "".join(parts)


def _adversarial_table(run: RunFiles) -> str:
    entries = _robustness(run, "adversarial")
    per_model = {m: r for m, e in entries.items() if (r := _adversarial_rows(e))}
    if not per_model:
        return ""
    keys = list(dict.fromkeys(k for rows in per_model.values() for k in rows))
    keys.sort(key=lambda k: (_METHOD_ORDER.get(k[0], len(_METHOD_ORDER)), k[0], k[1]))
    rows = [
        (
            [_METHOD_LABEL.get(method, method), format_value(eps)],
            {m: r[(method, eps)] for m, r in per_model.items() if (method, eps) in r},
        )
        for method, eps in keys
    ]
    samples = {
        m: entries[m]["samples"]
        for m in per_model
        if real_number(entries[m].get("samples")) is not None
    }
    counts = set(samples.values())
    if len(counts) == 1 and len(samples) == len(per_model):
        on = f" on {format_count(next(iter(counts)))} test samples"
    elif samples:
        on = " on " + ", ".join(f"{format_count(n)} ({m})" for m, n in samples.items())
        on += " test samples"
    else:
        on = ""
    return (
        "<h3>Adversarial inputs</h3>"
        + _grouped_table("adversarial", ["attack", "ε"], rows, _ADVERSARIAL_COLUMNS)
        + f"<p class='note'>Scores{escape(on)} when the input window is perturbed within "
        "‖δ‖∞ ≤ ε · RMS(window) to maximise the loss (FGSM: one signed-gradient step; PGD: "
        "projected steps from a random start). nRMSE ratio: attacked / clean. "
        "<b>Bold</b>: best nRMSE, NLL and coverage per attack.</p>"
    )


# --------------------------------------------------------------------------- figures


def _prediction(run: RunFiles, models: list[str]) -> Figure | None:
    ex = run.examples
    candidates = order_models(models + [k[: -len(".mean")] for k in ex if k.endswith(".mean")])
    grid = next((ex[k].shape for k in ("truth", "obs", "x") if k in ex and ex[k].ndim == 1), None)
    predictions = {}
    for m in candidates:
        mean, std = ex.get(f"{m}.mean"), ex.get(f"{m}.std")
        if mean is None or std is None or mean.ndim != 1 or mean.shape != std.shape:
            continue
        if grid is not None and mean.shape != grid:
            continue
        grid = mean.shape
        predictions[m] = (mean, std)
    if not predictions:
        return None

    def same_grid(key: str) -> np.ndarray | None:
        value = ex.get(key)
        return value if value is not None and value.shape == grid else None

    x = same_grid("x")
    x = x if x is not None else np.arange(grid[0], dtype=np.float64)
    cells = real_number(run.section("curves").get("cells"))
    fig = plots.prediction_figure(
        x,
        predictions,
        truth=same_grid("truth"),
        obs=same_grid("obs"),
        input_last=same_grid("input_last"),
        cells=int(cells) if cells is not None and cells.is_integer() else None,
    )
    return Figure(
        "prediction",
        "Next-frame prediction on one test sample",
        "The coloured line is each model's predictive mean and the shaded band mean ± 2σ "
        "(about 95% of points should fall inside if the Gaussian is calibrated). Black is the "
        "clean next frame, grey dots the noisy observation it was scored against, the dashed "
        "grey line the last input frame. Faint vertical lines separate the patches of the "
        "grid owned by each cell. A good model follows the black line with a band that is "
        "narrow yet still covers the dots.",
        plots.figure_png(fig),
    )


def _rollout(run: RunFiles) -> Figure | None:
    raw = run.section("curves").get("rollout_nrmse")
    if not isinstance(raw, dict):
        return None
    curves = {m: v for m in order_models(list(raw)) if (v := _float_list(raw[m])) is not None}
    if not curves:
        return None
    return Figure(
        "rollout_nrmse",
        "Rollout error",
        "nRMSE (‖prediction − truth‖₂ / ‖truth‖₂ per sample, averaged over the test set) when "
        "each model is fed its own predictions for k steps; log scale, lower is better. The "
        "slope shows how quickly errors compound; a model below the persistence line has "
        "learned the dynamics.",
        plots.figure_png(plots.rollout_figure(curves)),
    )


def _calibration(run: RunFiles, models: dict[str, dict[str, Any]]) -> Figure | None:
    raw = run.section("curves").get("calibration")
    if not isinstance(raw, dict):
        return None
    levels = _float_list(raw.get("levels"))
    if levels is None:
        return None
    observed = {
        m: v
        for m in order_models([k for k in raw if k != "levels"])
        if (v := _float_list(raw[m])) is not None and v.shape == levels.shape
    }
    if not observed:
        return None
    areas = {}
    for m in observed:
        area = real_number(models.get(m, {}).get("miscalibration_area"))
        if area is not None:
            areas[m] = area
    fig = plots.calibration_figure(levels, observed, areas=areas)
    return Figure(
        "calibration",
        "Calibration of the predictive intervals",
        "Fraction of test points that fall inside the central predictive interval, against "
        "the interval's nominal level. The dashed diagonal is perfect calibration; a curve "
        "below it means over-confidence (intervals too narrow), above it under-confidence. "
        "The legend gives the miscalibration area between curve and diagonal (0 is perfect, "
        "0.5 the worst).",
        plots.figure_png(fig),
    )


def _residual(run: RunFiles) -> Figure | None:
    residuals = _float_list(run.section("curves").get("residual_per_round"))
    if residuals is None:
        return None
    return Figure(
        "residual_per_round",
        "Convergence of the message rounds",
        "Relative change of the orchestra's joint state from one round to the next, "
        "‖S^(r+1) − S^r‖ / ‖S^r‖, on a log scale. A steadily "
        "falling line means the rounds contract towards a fixed point (the cells agree); "
        "a plateau means further rounds change little.",
        plots.figure_png(plots.residual_figure(residuals)),
    )


def _attention(run: RunFiles) -> Figure | None:
    raw = run.section("curves").get("attention")
    if raw is None:
        return None
    try:
        a = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):  # ragged or non-numeric: nothing sensible to draw
        return None
    if a.ndim < 2 or a.shape[-1] != a.shape[-2] or a.shape[-1] == 0 or a.size == 0:
        return None
    title = "Attention between cells"
    if a.ndim > 2:  # e.g. per round or per head: show the mean
        a = a.reshape(-1, *a.shape[-2:]).mean(axis=0)
        title += " (mean over leading axes)"
    return Figure(
        "attention",
        "Who listens to whom",
        "Attention weight α_ij: row i is the receiving cell, "
        "column j the sender. Each row is a softmax over the senders that cell i can hear, "
        "so bright off-diagonal entries show which neighbours a cell relies on.",
        plots.figure_png(plots.attention_figure(a, title=title)),
    )


def _training(run: RunFiles) -> Figure | None:
    if not run.log:
        return None
    log = {m: run.log[m] for m in order_models(list(run.log))}
    fig = plots.training_figure(log)
    if fig is None:
        return None
    caption = (
        "Training loss (Gaussian NLL) against optimiser step for each model: thin lines are "
        "the raw values, thick lines a moving average; dots are the validation NLL where it "
        "was logged. For long runs the vertical range ignores the first 5% of steps so that "
        "early large values do not flatten the rest."
    )
    if any("residual" in r for records in log.values() for r in records):
        caption += (
            " Right: the orchestra's final-round residual, which should fall as the cells "
            "learn to agree."
        )
    return Figure("train_curves", "Training", caption, plots.figure_png(fig))


def _spacetime(run: RunFiles, models: list[str]) -> Figure | None:
    ex = run.examples
    truth = ex.get("rollout.truth")
    if truth is None or truth.ndim != 2 or truth.shape[0] == 0:
        return None
    candidates = order_models(
        models + [k[: -len(".rollout_mean")] for k in ex if k.endswith(".rollout_mean")]
    )
    # The persistence rollout is a flat copy of the input: show it only when alone.
    candidates = [m for m in candidates if m != "persistence"] + ["persistence"]
    model = next(
        (
            m
            for m in candidates
            if getattr(ex.get(f"{m}.rollout_mean"), "shape", None) == truth.shape
        ),
        None,
    )
    if model is None:
        return None
    x = ex.get("x")
    if x is None or x.shape != truth.shape[1:]:
        x = np.arange(truth.shape[1], dtype=np.float64)
    fig = plots.spacetime_figure(x, truth, ex[f"{model}.rollout_mean"], model=model)
    return Figure(
        "rollout_spacetime",
        f"Rollout in space and time ({model})",
        f"One test trajectory rolled out autoregressively: space on the horizontal axis, "
        f"rollout step upwards. Left the clean truth, middle the {model} mean on the same "
        f"colour scale, right the absolute error on its own scale; error that grows upward "
        f"is error compounding over the rollout.",
        plots.figure_png(fig),
    )


def _rho(run: RunFiles) -> Figure | None:
    rho = _float_list(run.section("curves").get("rho"))
    if rho is None:
        return None
    return Figure(
        "rho",
        "Contraction at the fixed point",
        "Histogram over the test samples of the contraction factor ρ of the orchestra's "
        "round map F at each sample's fixed point, ρ ≈ ‖∂F/∂S‖₂ (power iteration). Left of "
        "the red line (ρ < 1) F contracts locally: the fixed point is attracting and the "
        "rounds approach it geometrically, the faster the smaller ρ. Samples right of the "
        "line are where the equilibrium is fragile.",
        plots.figure_png(plots.rho_figure(rho)),
    )


def _iterations(run: RunFiles) -> Figure | None:
    iterations = _float_list(run.section("curves").get("iterations"))
    if iterations is None or not np.isfinite(iterations).any():
        return None
    return Figure(
        "iterations",
        "Forward solver iterations",
        "Histogram over the test samples of the evaluations of the round map the forward "
        "solver needed to meet its tolerance; samples that never converged sit at the "
        "iteration cap. A narrow peak at a small count means the equilibrium is cheap and "
        "reached uniformly; a long tail shows the inputs that are hard to settle.",
        plots.figure_png(plots.iterations_figure(iterations)),
    )


def _solver_training(run: RunFiles) -> Figure | None:
    if not run.log:
        return None
    log = {m: run.log[m] for m in order_models(list(run.log))}
    fig = plots.solver_training_figure(log)
    if fig is None:
        return None
    caption = (
        "Mean solver iterations per batch against optimiser step: solid the forward "
        "fixed-point solve, dashed the adjoint solve of the implicit backward pass (thick "
        "lines a moving average for long runs). Rising counts mean the equilibrium is "
        "getting harder to reach as the model trains."
    )
    if any("rho" in r for records in log.values() for r in records):
        caption += (
            " Right: the mean contraction factor ρ where it was measured; it should stay "
            "below the red line at 1."
        )
    return Figure("solver_training", "Solver during training", caption, plots.figure_png(fig))


def _ood(run: RunFiles) -> Figure | None:
    per_model = {m: _ood_rows(e) for m, e in _robustness(run, "ood").items()}
    conditions = list(
        dict.fromkeys(c for rows in per_model.values() for c in rows if c != _IN_DISTRIBUTION)
    )

    def column(rows: Mapping[str, Mapping[str, Any]], key: str) -> np.ndarray:
        values = [real_number(rows.get(c, {}).get(key)) for c in conditions]
        return np.asarray([math.nan if v is None else v for v in values], dtype=np.float64)

    ratios = {
        m: (column(rows, "nrmse_ratio"), column(rows, "std_ratio")) for m, rows in per_model.items()
    }
    ratios = {m: r for m, r in ratios.items() if np.isfinite(np.concatenate(r)).any()}
    if not conditions or not ratios:
        return None
    return Figure(
        "ood",
        "Out of distribution",
        "Bars: nRMSE on each shifted test set divided by the in-distribution nRMSE, drawn "
        "from the line at 1 (above: worse than on the test set). Diamonds: the same ratio "
        "for the mean predicted σ̂. A well-behaved model raises σ̂ where its error grows, "
        "so its diamonds sit above 1 next to tall bars.",
        plots.figure_png(plots.ood_figure(conditions, ratios)),
    )


def _adversarial(run: RunFiles) -> Figure | None:
    curves: dict[str, dict[str, tuple[list[float], list[float], list[float]]]] = {}
    for m, entry in _robustness(run, "adversarial").items():
        methods: dict[str, tuple[list[float], list[float], list[float]]] = {}
        for (method, eps), r in _adversarial_rows(entry).items():
            if method not in _METHOD_ORDER:
                continue
            nrmse, cov = real_number(r.get("nrmse")), real_number(r.get("coverage_90"))
            if nrmse is None and cov is None:
                continue
            eps_list, nrmse_list, cov_list = methods.setdefault(method, ([], [], []))
            eps_list.append(eps)
            nrmse_list.append(math.nan if nrmse is None else nrmse)
            cov_list.append(math.nan if cov is None else cov)
        if methods:
            curves[m] = methods
    if not curves:
        return None
    return Figure(
        "adversarial",
        "Adversarial inputs",
        "nRMSE (left) and coverage of the 90% interval (right) when every input window is "
        "perturbed by at most ε times its RMS to maximise the loss: dashed FGSM (one "
        "signed-gradient step), solid PGD (several projected steps, the stronger attack); the "
        "star at ε = 0 is the clean score. A robust model's error grows slowly with ε, and a "
        "calibrated one keeps its coverage near the dotted 0.9 by widening σ̂.",
        plots.figure_png(plots.adversarial_figure(curves)),
    )


def _recall_distance(run: RunFiles) -> Figure | None:
    """Recall runs (``task: recall``): test accuracy against the query distance, in
    attention windows; None for every other task."""
    if run.metrics.get("task") != "recall":
        return None
    rows = run.metrics.get("models") or {}
    chance = (run.metrics.get("data") or {}).get("chance_accuracy")
    fig = plots.new_figure(5.0, 3.0)
    ax = fig.add_subplot(1, 1, 1)
    drawn = False
    for name, row in rows.items():
        acc = row.get("accuracy") if isinstance(row, dict) else None
        if not isinstance(acc, dict) or not acc:
            continue
        try:
            pts = sorted((float(k), float(v)) for k, v in acc.items())
        except (TypeError, ValueError):
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        drawn = True
    if not drawn:
        return None
    if isinstance(chance, int | float):
        ax.axhline(float(chance), color="0.5", ls="--", lw=0.8, label="chance")
    ax.set_xlabel("distance of the answer (attention windows W)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    caption = (
        "Accuracy of recalling a value seen this many windows before the query. Sliding "
        "attention cannot see past its layers·(W−1) steps; a test-time memory can."
    )
    return Figure("recall_distance", "Recall against distance", caption, plots.figure_png(fig))


# --------------------------------------------------------------------------- page


def _html(
    run: RunFiles,
    figures: list[Figure],
    *,
    equilibrium: Sequence[Figure] = (),
    robustness: Sequence[Figure] = (),
) -> str:
    recipe = run.metrics.get("recipe")
    title = f"tertulia report: {recipe}" if recipe is not None else "tertulia report"
    parts = [f"<h1>{escape(title)}</h1>"]
    description = run.metrics.get("description")
    if description:
        parts.append(f"<p class='description'>{escape(description)}</p>")
    parts.append(f"<p class='note'>Run directory: <code>{escape(run.root.name)}</code></p>")

    parts.append("<section><h2>Metrics</h2>")
    parts.append(_metrics_table(run.models()))
    parts.append("</section>")

    params = run.section("params")
    if params:
        names = order_models(list(params))
        parts.append("<section><h2>Parameters</h2>")
        parts.append(key_value_table({m: params[m] for m in names}, css="params", count=True))
        parts.append("</section>")

    data = run.section("data")
    if data:
        parts.append("<section><h2>Data</h2>")
        parts.append(key_value_table(data, css="data"))
        parts.append("</section>")

    train = training_table(run.section("train"))
    if train or run.log_bad_lines:
        parts.append("<section><h2>Training</h2>")
        parts.append(train)
        if run.log_bad_lines:
            parts.append(
                f"<p class='note'>{run.log_bad_lines} unreadable line(s) of "
                f"{TRAIN_LOG_FILE} were skipped.</p>"
            )
        parts.append("</section>")

    if figures:
        parts.append("<section><h2>Figures</h2>")
        parts.extend(figure_html(f) for f in figures)
        parts.append("</section>")

    table = _equilibrium_table(run)
    if table or equilibrium:
        parts.append("<section id='equilibrium'><h2>Equilibrium</h2>")
        parts.append(table)
        parts.extend(figure_html(f) for f in equilibrium)
        parts.append("</section>")

    tables = _ood_tables(run) + _adversarial_table(run)
    if tables or robustness:
        parts.append("<section id='robustness'><h2>Robustness</h2>")
        parts.append(tables)
        parts.extend(figure_html(f) for f in robustness)
        parts.append("</section>")

    compression = run.metrics.get("compression")
    if isinstance(compression, dict) and compression:
        parts.append(compression_section(run.root, compression))

    return document(title, parts)


def build_forecast_report(run: RunFiles) -> Path:
    """Write the figures (PNG) and ``report.html`` of the forecast page into the run
    directory; return the page's path."""
    models = run.models()
    names = order_models(list(models))
    figures = [
        fig
        for fig in (
            _prediction(run, names),
            _rollout(run),
            _calibration(run, models),
            _residual(run),
            _attention(run),
            _training(run),
            _spacetime(run, names),
            _recall_distance(run),
        )
        if fig is not None
    ]
    equilibrium = [f for f in (_rho(run), _iterations(run), _solver_training(run)) if f is not None]
    robustness = [f for f in (_ood(run), _adversarial(run)) if f is not None]
    for fig in (*figures, *equilibrium, *robustness):
        atomic_write_bytes(run.root / f"{fig.name}.png", fig.png)
    html = _html(run, figures, equilibrium=equilibrium, robustness=robustness)
    return atomic_write_text(run.root / REPORT_FILE, html)
