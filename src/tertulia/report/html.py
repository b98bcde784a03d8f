r"""Rebuild a self-contained HTML report from a run directory alone.

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

import base64
import html
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes, atomic_write_text
from ..errors import RunDirError
from . import plots

__all__ = ["build_report"]

METRICS_FILE = "metrics.json"
EXAMPLES_FILE = "examples.safetensors"
TRAIN_LOG_FILE = "train_log.jsonl"
REPORT_FILE = "report.html"

# Models that usually exist come first, in this order; others follow as found.
_CANONICAL_ORDER = ("orchestra", "mlp", "persistence")
_LOWER_IS_BETTER_TOKENS = frozenset(
    {"nrmse", "rmse", "mse", "mae", "nll", "crps", "error", "miscalibration"}
)
# Solver diagnostics describe cost and stability, not accuracy: never ranked, even
# when a name also holds a token above (e.g. "rho_error").
_UNRANKED_TOKENS = frozenset({"iterations", "converged", "unconverged", "rho", "activation"})
_COVERAGE_KEY = re.compile(r"^coverage_(\d+)$")


# --------------------------------------------------------------------------- loading


@dataclass
class _Run:
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
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

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


def _load_run(run_dir: Path) -> _Run:
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a run directory: it does not exist")
    metrics = _load_metrics(run_dir)
    log, bad = _load_train_log(run_dir)
    return _Run(run_dir, metrics, _load_examples(run_dir), log, bad)


# --------------------------------------------------------------------------- helpers


def _order_models(names: Sequence[str]) -> list[str]:
    unique = list(dict.fromkeys(names))
    known = [m for m in _CANONICAL_ORDER if m in unique]
    return known + [m for m in unique if m not in _CANONICAL_ORDER]


def _number(value: Any) -> float | None:
    """A float for real numbers (bools excluded), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _float_list(value: Any) -> np.ndarray | None:
    """A finite-length 1-D float array, or None when ``value`` is not a list of numbers."""
    if not isinstance(value, list) or not value:
        return None
    numbers = [_number(v) for v in value]
    if any(v is None for v in numbers):
        return None
    return np.asarray(numbers, dtype=np.float64)


def _format_value(value: Any) -> str:
    number = _number(value)
    if number is not None:
        return f"{number:.4g}"
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    text = json.dumps(value, separators=(", ", ": "))
    return text if len(text) <= 200 else text[:199] + "…"


def _format_count(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    number = _number(value)
    if number is not None and number.is_integer():
        return f"{int(number):,}"
    return _format_value(value)


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
        number = _number(value)
        if number is not None and math.isfinite(number):
            scores[model] = score(number)
    if len(scores) < 2:
        return set(), word
    best = min(scores.values())
    return {m for m, s in scores.items() if math.isclose(s, best, rel_tol=1e-12, abs_tol=0)}, word


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


# --------------------------------------------------------------------------- tables


def _metrics_table(models: dict[str, dict[str, Any]]) -> str:
    names = _order_models(list(models))
    keys = list(dict.fromkeys(k for m in names for k in models[m]))
    if not names or not keys:
        return "<p class='note'>No model metrics were recorded.</p>"
    head = "".join(f"<th>{_e(m)}</th>" for m in names)
    rows = []
    for key in keys:
        row = {m: models[m].get(key) for m in names}
        best, word = _best_models(key, row)
        cells = []
        for m in names:
            text = _e(_format_value(row[m])) if key in models[m] else "—"
            cells.append(
                f"<td class='best'><b>{text}</b></td>" if m in best else f"<td>{text}</td>"
            )
        better = f"<td class='better'>{_e(word)}</td>"
        rows.append(f"<tr><th scope='row'>{_e(key)}</th>{''.join(cells)}{better}</tr>")
    return (
        "<table class='metrics'><thead><tr><th>metric</th>"
        f"{head}<th class='better'>better</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        "<p class='note'>Values to 4 significant digits, on the test split. "
        "<b>Bold</b>: best among the models where “better” is defined.</p>"
    )


def _key_value_table(items: Mapping[str, Any], *, css: str, count: bool = False) -> str:
    fmt = _format_count if count else _format_value
    rows = "".join(
        f"<tr><th scope='row'>{_e(k)}</th><td>{_e(fmt(v))}</td></tr>" for k, v in items.items()
    )
    return f"<table class='{css}'><tbody>{rows}</tbody></table>"


def _training_table(train: Mapping[str, Any]) -> str:
    runs = {m: v for m, v in train.items() if isinstance(v, dict)}
    names = _order_models(list(runs))
    keys = list(dict.fromkeys(k for m in names for k in runs[m]))
    if not names or not keys:
        return ""
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    rows = []
    for m in names:
        cells = "".join(
            f"<td>{_e(_format_count(runs[m][k]) if k in runs[m] else '—')}</td>" for k in keys
        )
        rows.append(f"<tr><th scope='row'>{_e(m)}</th>{cells}</tr>")
    return (
        f"<table class='train'><thead><tr><th>model</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


# --------------------------------------------------------------------------- figures


@dataclass
class _Figure:
    name: str  # file stem of the PNG
    title: str
    caption: str
    png: bytes


def _prediction(run: _Run, models: list[str]) -> _Figure | None:
    ex = run.examples
    candidates = _order_models(models + [k[: -len(".mean")] for k in ex if k.endswith(".mean")])
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
    cells = _number(run.section("curves").get("cells"))
    fig = plots.prediction_figure(
        x,
        predictions,
        truth=same_grid("truth"),
        obs=same_grid("obs"),
        input_last=same_grid("input_last"),
        cells=int(cells) if cells is not None and cells.is_integer() else None,
    )
    return _Figure(
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


def _rollout(run: _Run) -> _Figure | None:
    raw = run.section("curves").get("rollout_nrmse")
    if not isinstance(raw, dict):
        return None
    curves = {m: v for m in _order_models(list(raw)) if (v := _float_list(raw[m])) is not None}
    if not curves:
        return None
    return _Figure(
        "rollout_nrmse",
        "Rollout error",
        "nRMSE (‖prediction − truth‖₂ / ‖truth‖₂ per sample, averaged over the test set) when "
        "each model is fed its own predictions for k steps; log scale, lower is better. The "
        "slope shows how quickly errors compound; a model below the persistence line has "
        "learned the dynamics.",
        plots.figure_png(plots.rollout_figure(curves)),
    )


def _calibration(run: _Run, models: dict[str, dict[str, Any]]) -> _Figure | None:
    raw = run.section("curves").get("calibration")
    if not isinstance(raw, dict):
        return None
    levels = _float_list(raw.get("levels"))
    if levels is None:
        return None
    observed = {
        m: v
        for m in _order_models([k for k in raw if k != "levels"])
        if (v := _float_list(raw[m])) is not None and v.shape == levels.shape
    }
    if not observed:
        return None
    areas = {}
    for m in observed:
        area = _number(models.get(m, {}).get("miscalibration_area"))
        if area is not None:
            areas[m] = area
    fig = plots.calibration_figure(levels, observed, areas=areas)
    return _Figure(
        "calibration",
        "Calibration of the predictive intervals",
        "Fraction of test points that fall inside the central predictive interval, against "
        "the interval's nominal level. The dashed diagonal is perfect calibration; a curve "
        "below it means over-confidence (intervals too narrow), above it under-confidence. "
        "The legend gives the miscalibration area between curve and diagonal (0 is perfect, "
        "0.5 the worst).",
        plots.figure_png(fig),
    )


def _residual(run: _Run) -> _Figure | None:
    residuals = _float_list(run.section("curves").get("residual_per_round"))
    if residuals is None:
        return None
    return _Figure(
        "residual_per_round",
        "Convergence of the message rounds",
        "Relative change of the orchestra's joint state from one round to the next, "
        "‖S^(r+1) − S^r‖ / ‖S^r‖, on a log scale. A steadily "
        "falling line means the rounds contract towards a fixed point (the cells agree); "
        "a plateau means further rounds change little.",
        plots.figure_png(plots.residual_figure(residuals)),
    )


def _attention(run: _Run) -> _Figure | None:
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
    return _Figure(
        "attention",
        "Who listens to whom",
        "Attention weight α_ij: row i is the receiving cell, "
        "column j the sender. Each row is a softmax over the senders that cell i can hear, "
        "so bright off-diagonal entries show which neighbours a cell relies on.",
        plots.figure_png(plots.attention_figure(a, title=title)),
    )


def _training(run: _Run) -> _Figure | None:
    if not run.log:
        return None
    log = {m: run.log[m] for m in _order_models(list(run.log))}
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
    return _Figure("train_curves", "Training", caption, plots.figure_png(fig))


def _spacetime(run: _Run, models: list[str]) -> _Figure | None:
    ex = run.examples
    truth = ex.get("rollout.truth")
    if truth is None or truth.ndim != 2 or truth.shape[0] == 0:
        return None
    candidates = _order_models(
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
    return _Figure(
        "rollout_spacetime",
        f"Rollout in space and time ({model})",
        f"One test trajectory rolled out autoregressively: space on the horizontal axis, "
        f"rollout step upwards. Left the clean truth, middle the {model} mean on the same "
        f"colour scale, right the absolute error on its own scale; error that grows upward "
        f"is error compounding over the rollout.",
        plots.figure_png(fig),
    )


# --------------------------------------------------------------------------- page

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
.better { color: #777; font-size: 0.85em; text-align: left; }
.note { color: #666; font-size: 0.9em; }
figure { margin: 1.5rem 0; background: white; border: 1px solid #e3e3e3; padding: 0.8rem; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: #444; font-size: 0.92em; margin-top: 0.5rem; }
figcaption b { color: #1d1d1f; }
footer { color: #888; font-size: 0.85em; margin-top: 3rem; }
"""


def _figure_html(fig: _Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (
        f"<figure id='fig-{_e(fig.name)}'><img src=\"data:image/png;base64,{data}\" "
        f"alt='{_e(fig.title)}'><figcaption><b>{_e(fig.title)}.</b> {_e(fig.caption)}"
        "</figcaption></figure>"
    )


def _page(run: _Run, figures: list[_Figure]) -> str:
    recipe = run.metrics.get("recipe")
    title = f"tertulia report: {recipe}" if recipe is not None else "tertulia report"
    parts = [f"<h1>{_e(title)}</h1>"]
    description = run.metrics.get("description")
    if description:
        parts.append(f"<p class='description'>{_e(description)}</p>")
    parts.append(f"<p class='note'>Run directory: <code>{_e(run.root.name)}</code></p>")

    parts.append("<section><h2>Metrics</h2>")
    parts.append(_metrics_table(run.models()))
    parts.append("</section>")

    params = run.section("params")
    if params:
        names = _order_models(list(params))
        parts.append("<section><h2>Parameters</h2>")
        parts.append(_key_value_table({m: params[m] for m in names}, css="params", count=True))
        parts.append("</section>")

    data = run.section("data")
    if data:
        parts.append("<section><h2>Data</h2>")
        parts.append(_key_value_table(data, css="data"))
        parts.append("</section>")

    train = _training_table(run.section("train"))
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
        parts.extend(_figure_html(f) for f in figures)
        parts.append("</section>")

    parts.append("<footer>Rebuilt from the run directory by tertulia.report.</footer>")
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def build_report(run_dir: Path) -> Path:
    """Write the figures (PNG) and ``report.html`` into ``run_dir``; return the page's path.

    Raises :class:`~tertulia.errors.RunDirError` when ``run_dir`` has no readable
    ``metrics.json`` or a corrupt ``examples.safetensors``.
    """
    run = _load_run(Path(run_dir))
    models = run.models()
    names = _order_models(list(models))
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
        )
        if fig is not None
    ]
    for fig in figures:
        atomic_write_bytes(run.root / f"{fig.name}.png", fig.png)
    return atomic_write_text(run.root / REPORT_FILE, _page(run, figures))
