r"""Report page of the VELORA recipe (``task: velora``).

Inputs, read from the run directory by :func:`tertulia.report.page.load_run_files`:

    metrics.json      task, recipe, description, phases_done, data, params, train,
                      models.velora (the issue's contract: fractions in [0, 1]),
                      experts.{math, math_extrapolation}: op_accuracy[_by_op],
                          order_accuracy, mse, within_1pct[_by_op], ms_per_item
                      experts.language: accuracy, macro_f1, f1.{type}, confusion
                          (true × predicted), ms_per_item
                      phases.{router, finetune}.{test, val}: mixed_score,
                          oracle_mixed_score, router_accuracy[_by_domain|_by_op|
                          _by_type|_ambiguous], router_confusion (true × routed),
                          load, mean_probs, balance, mixed_score_by_domain
                      arithmetic.{op}: gate, W_add, W_mul (one NALU unit per op)
                      explanations [{domain, routed, probs, ambiguous,
                          tokens [[piece, score]]}]
    train_log.jsonl   records with model ∈ {math, language, router, finetune}, step,
                      losses (loss, ce, bce, arith, task_loss, route_loss, z_loss, …),
                      router_acc and val_nll (the phase's validation score)

Every section and figure is skipped when its data is missing or malformed (a run
stopped after phase 1 has no ``phases`` and no ``explanations``). Fractions are
shown as percentages; all text from the run is HTML-escaped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes, atomic_write_text
from . import page, plots

OPS = ("add", "sub", "mul", "div")
EXPERTS = ("math", "language")
TYPES = ("question", "command", "statement")
PHASES = (("router", "phase 2: router + fusion"), ("finetune", "phase 3: fine-tuned"))
MATH_SETS = (("math", "in range"), ("math_extrapolation", "operands 10× beyond"))
TARGET_IN_RANGE, TARGET_BEYOND = 0.95, 0.80

# Loss-like keys of the train log, in legend order; router_acc gets its own axis.
_LOSS_KEYS = (
    "loss",
    "task_loss",
    "ce",
    "bce",
    "arith",
    "math_loss",
    "language_loss",
    "math_fused_loss",
    "language_fused_loss",
    "route_loss",
    "z_loss",
)
_PHASE_TITLES = {
    "math": "phase 1: math expert",
    "language": "phase 1: language expert",
    "router": "phase 2: router + fusion",
    "finetune": "phase 3: fine-tuning",
}

_EXTRA_CSS = """
ul.explain { list-style: none; padding-left: 0; }
ul.explain li { background: white; border: 1px solid #e3e3e3; padding: 0.5rem 0.8rem;
                margin: 0.5rem 0; }
.tokens { font-family: ui-monospace, 'SF Mono', Menlo, Consolas, monospace;
          white-space: pre-wrap; line-height: 1.9; }
.tokens span { border-radius: 2px; }
.badge { display: inline-block; font-size: 0.8em; padding: 0 0.4em; border-radius: 3px;
         margin-left: 0.3em; }
.badge.ambiguous { background: #fff3cd; color: #7a5b00; }
.badge.misrouted { background: #fde2e1; color: #b3261e; }
"""


# ------------------------------------------------------------------------- helpers


def _num(v: Any) -> float | None:
    """A finite float for real numbers (bools excluded), else None."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _pct(v: Any) -> str:
    x = _num(v)
    return "—" if x is None else f"{100 * x:.2f} %"


def _plain(v: Any) -> str:
    return "—" if _num(v) is None else page.format_value(v)


def _ms(v: Any) -> str:
    x = _num(v)
    return "—" if x is None else f"{x:.3g} ms"


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _cells(rows: Mapping[str, Mapping[str, str]], title: str) -> str:
    """page.table over cells that are already formatted strings."""
    return page.table(rows, title, fmt=lambda v: "—" if v is None else str(v))


def _phase_tests(m: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{column label: test metrics} for the system phases that were run."""
    phases = _dict(m.get("phases"))
    out = {}
    for key, label in PHASES:
        test = _dict(_dict(phases.get(key)).get("test"))
        if test:
            out[label] = test
    return out


def _matrix(v: Any, k: int | None = None) -> np.ndarray | None:
    """A square numeric matrix (k × k when ``k`` is given), else None."""
    if not isinstance(v, list) or not v or not all(isinstance(r, list) for r in v):
        return None
    if any(len(r) != len(v) for r in v) or (k is not None and len(v) != k):
        return None
    if any(_num(x) is None for r in v for x in r):
        return None
    return np.asarray(v, dtype=np.float64)


def _heatmap(ax: Any, a: np.ndarray, rows: Sequence[str], cols: Sequence[str]) -> None:
    """Counts with row shares as colour (each true class sums to 1)."""
    share = a / np.maximum(a.sum(axis=1, keepdims=True), 1.0)
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            color = "white" if share[i, j] > 0.6 else "black"
            text = f"{int(a[i, j])}\n{100 * share[i, j]:.0f} %"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(len(cols)), list(cols), fontsize=8)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=8)


# ------------------------------------------------------------------------- tables


_CONTRACT_LABELS = {
    "router_accuracy": "router accuracy (mixed test)",
    "language_accuracy": "language expert accuracy",
    "math_op_accuracy": "math expert op accuracy",
    "math_within_1pct": "math expert within 1 %",
    "math_extrapolation_within_1pct": "math expert within 1 %, operands 10× beyond",
    "mixed_score": "mixed score",
    "oracle_mixed_score": "mixed score, oracle routing",
    "mixed_score_phase2": "mixed score after phase 2",
    "mixed_score_phase3": "mixed score after phase 3",
}


def _contract(row: Mapping[str, Any]) -> str:
    items: dict[str, str] = {}
    for k, v in row.items():
        label = _CONTRACT_LABELS.get(k, k)
        if isinstance(v, dict):
            for op, x in v.items():
                items[f"{label}: {op}"] = _pct(x)
        else:
            items[label] = _pct(v)
    if not items:
        return ""
    body = "".join(
        f"<tr><th scope='row'>{page.escape(k)}</th><td>{page.escape(v)}</td></tr>"
        for k, v in items.items()
    )
    return (
        "<section><h2>Metrics</h2><table class='metrics'><caption>models.velora: the "
        f"system on the held-out test sets</caption><tbody>{body}</tbody></table>"
        "<p class='note'>Targets: within 1 % ≥ 95 % per op in range and ≥ 80 % ten times "
        "beyond; the mixed score should approach the oracle's.</p></section>"
    )


def _math_column(s: Mapping[str, Any]) -> dict[str, str]:
    col = {"items": page.format_count(s.get("items")) if "items" in s else "—"}
    col["op accuracy"] = _pct(s.get("op_accuracy"))
    for op, v in _dict(s.get("op_accuracy_by_op")).items():
        col[f"op accuracy: {op}"] = _pct(v)
    col["order accuracy"] = _pct(s.get("order_accuracy"))
    col["MSE"] = _plain(s.get("mse"))
    col["within 1 %"] = _pct(s.get("within_1pct"))
    for op, v in _dict(s.get("within_1pct_by_op")).items():
        col[f"within 1 %: {op}"] = _pct(v)
    col["time per item"] = _ms(s.get("ms_per_item"))
    return col


def _experts(m: Mapping[str, Any], figures: Mapping[str, page.Figure]) -> str:
    ex = _dict(m.get("experts"))
    if not ex:
        return ""
    parts = ["<section><h2>Experts</h2>"]
    cols = {label: _math_column(ex[key]) for key, label in MATH_SETS if _dict(ex.get(key))}
    if cols:
        parts.append(_cells(cols, "math expert, alone, on its own test sets"))
    if "velora_within" in figures:
        parts.append(page.figure_html(figures["velora_within"]))
    lang = _dict(ex.get("language"))
    if lang:
        col = {
            "items": page.format_count(lang.get("items")) if "items" in lang else "—",
            "accuracy": _pct(lang.get("accuracy")),
            "macro-F1": _pct(lang.get("macro_f1")),
        }
        col.update({f"F1: {k}": _pct(v) for k, v in _dict(lang.get("f1")).items()})
        col["time per item"] = _ms(lang.get("ms_per_item"))
        parts.append(_cells({"language expert": col}, "language expert (query type), alone"))
    if "velora_language_confusion" in figures:
        parts.append(page.figure_html(figures["velora_language_confusion"]))
    parts.append("</section>")
    return "".join(parts)


def _system(m: Mapping[str, Any], figures: Mapping[str, page.Figure]) -> str:
    tests = _phase_tests(m)
    if not tests:
        return ""
    cols: dict[str, dict[str, str]] = {}
    for label, t in tests.items():
        col = {
            "items": page.format_count(t.get("items")) if "items" in t else "—",
            "mixed score": _pct(t.get("mixed_score")),
            "mixed score, oracle routing": _pct(t.get("oracle_mixed_score")),
        }
        for k, v in _dict(t.get("mixed_score_by_domain")).items():
            col[f"mixed score: {k}"] = _pct(v)
        col["router accuracy"] = _pct(t.get("router_accuracy"))
        col["router accuracy: ambiguous items"] = _pct(t.get("router_accuracy_ambiguous"))
        for group in ("by_domain", "by_op", "by_type"):
            for k, v in _dict(t.get(f"router_accuracy_{group}")).items():
                col[f"router accuracy: {k}"] = _pct(v)
        for k, v in _dict(t.get("load")).items():
            col[f"load: {k}"] = _pct(v)
        for k, v in _dict(t.get("mean_probs")).items():
            col[f"mean routing probability: {k}"] = _pct(v)
        col["balance E·Σ f·P"] = _plain(t.get("balance"))
        cols[label] = col
    parts = [
        "<section><h2>System</h2>",
        _cells(cols, "mixed test set (math and language items), phase 2 against phase 3"),
        "<p class='note'>Mixed score: a math item counts when the routed answer is within "
        "1 % of the truth, a language item when the query type is right. Oracle routing "
        "sends every item to the expert of its true domain. Router accuracy by op and by "
        "query type is over the math and the language items of that kind. Load is the "
        "share of items each expert received (top-1); balance = E·Σ_e f_e·P_e is 1 for an "
        "even split.</p>",
    ]
    for name in ("velora_router_confusion", "velora_load"):
        if name in figures:
            parts.append(page.figure_html(figures[name]))
    parts.append("</section>")
    return "".join(parts)


def _vector(v: Any) -> str:
    if isinstance(v, list) and v and all(_num(x) is not None for x in v):
        return "(" + ", ".join(f"{float(x):+.3f}" for x in v) + ")"
    x = _num(v)
    return "—" if x is None else f"{x:.3f}"


def _arithmetic(m: Mapping[str, Any]) -> str:
    arith = _dict(m.get("arithmetic"))
    rows = {
        op: {
            k: _vector(u.get(key))
            for k, key in (("gate g", "gate"), ("W_add", "W_add"), ("W_mul", "W_mul"))
        }
        for op, u in arith.items()
        if isinstance(u, dict)
    }
    if not rows:
        return ""
    return (
        "<section><h2>What the arithmetic unit learned</h2>"
        + _cells(rows, "NALU bank: one unit per op (columns)")
        + "<p class='note'>Each unit computes g·(W_add·x) + (1 − g)·exp(W_mul·log|x|)·sign "
        "on the two operands x. Addition and subtraction should end with the gate g → 1 and "
        "W_add → (1, ±1); multiplication and division with g → 0 and W_mul → (1, ±1). "
        "Exact weights are what carry the answers to operands ten times beyond the training "
        "range.</p></section>"
    )


def _explanation(item: Mapping[str, Any]) -> str:
    pieces = [
        (str(p[0]), float(p[1]))
        for p in item.get("tokens") or []
        if isinstance(p, list | tuple) and len(p) == 2 and _num(p[1]) is not None
    ]
    scale = max((abs(s) for _, s in pieces), default=0.0) or 1.0
    spans = []
    for text, score in pieces:
        alpha = 0.85 * min(abs(score) / scale, 1.0)
        rgb = "220,50,47" if score > 0 else "38,139,210"
        spans.append(
            f"<span style='background:rgba({rgb},{alpha:.2f})' title='{score:+.3g}'>"
            f"{page.escape(text)}</span>"
        )
    probs = ", ".join(
        f"{page.escape(k)} {page.escape(_pct(v))}" for k, v in _dict(item.get("probs")).items()
    )
    domain, routed = item.get("domain"), item.get("routed")
    badges = ""
    if item.get("ambiguous"):
        badges += "<span class='badge ambiguous'>ambiguous</span>"
    if domain is not None and routed is not None and domain != routed:
        badges += "<span class='badge misrouted'>misrouted</span>"
    return (
        f"<li><div class='tokens'>{''.join(spans)}</div><small>true domain: "
        f"<b>{page.escape(domain if domain is not None else '—')}</b> · routed to: "
        f"<b>{page.escape(routed if routed is not None else '—')}</b> · routing "
        f"probabilities: {probs or '—'}{badges}</small></li>"
    )


def _explanations(m: Mapping[str, Any]) -> str:
    items = [i for i in m.get("explanations") or [] if isinstance(i, dict)]
    if not items:
        return ""
    return (
        "<section><h2>Why the router chose</h2><p class='note'>Gradient × input of the "
        "routed expert's logit with respect to the router's input embeddings, summed over "
        "the bytes of each piece (numbers are one piece): <span style='background:"
        "rgba(220,50,47,0.6)'>red</span> pushes toward the routed expert, <span "
        "style='background:rgba(38,139,210,0.6)'>blue</span> against; colour strength is "
        "relative to the largest |attribution| of each text (hover for the value). "
        "Ambiguous items mix the vocabulary of both domains.</p><ul class='explain'>"
        + "".join(_explanation(i) for i in items)
        + "</ul></section>"
    )


# ------------------------------------------------------------------------- figures


def _within_figure(m: Mapping[str, Any]) -> page.Figure | None:
    ex = _dict(m.get("experts"))
    sets = [
        (label, _dict(_dict(ex.get(key)).get("within_1pct_by_op")))
        for key, label in (("math", "in range"), ("math_extrapolation", "10× beyond"))
    ]
    sets = [(label, v) for label, v in sets if any(_num(v.get(op)) is not None for op in OPS)]
    if not sets:
        return None
    fig = plots.new_figure(6.4, 4.0)
    ax = fig.subplots()
    x = np.arange(len(OPS))
    width = 0.8 / len(sets)
    for i, (label, v) in enumerate(sets):
        vals = [100 * x_ if (x_ := _num(v.get(op))) is not None else np.nan for op in OPS]
        color = ("#1f77b4", "#ff7f0e")[i % 2]
        ax.bar(x + (i - (len(sets) - 1) / 2) * width, vals, width * 0.9, color=color,
               label=label)  # fmt: skip
    ax.axhline(100 * TARGET_IN_RANGE, color="#1f77b4", lw=1.0, ls="--",
               label=f"target in range ({100 * TARGET_IN_RANGE:.0f} %)")  # fmt: skip
    ax.axhline(100 * TARGET_BEYOND, color="#ff7f0e", lw=1.0, ls=":",
               label=f"target 10× beyond ({100 * TARGET_BEYOND:.0f} %)")  # fmt: skip
    ax.set_xticks(x, list(OPS))
    ax.set_ylim(0, 105)
    ax.set_ylabel("answers within 1 % (%)")
    ax.grid(alpha=0.3, axis="y")
    fig.legend(fontsize=7, loc="outside lower center", ncols=2)
    return page.Figure(
        "velora_within",
        "Math expert: answers within 1 % by operation",
        "Share of the math expert's answers within 1 % relative error, on operands in the "
        "training range and ten times beyond it (the extrapolation test); dashed and dotted "
        "lines are the targets.",
        plots.figure_png(fig),
    )


def _language_confusion_figure(m: Mapping[str, Any]) -> page.Figure | None:
    lang = _dict(_dict(m.get("experts")).get("language"))
    a = _matrix(lang.get("confusion"))
    if a is None:
        return None
    f1 = list(_dict(lang.get("f1")))
    labels = f1 if len(f1) == a.shape[0] else list(TYPES) if a.shape[0] == 3 else None
    labels = labels or [str(i) for i in range(a.shape[0])]
    fig = plots.new_figure(1.6 + 1.0 * a.shape[0], 1.2 + 0.9 * a.shape[0])
    ax = fig.subplots()
    _heatmap(ax, a, labels, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return page.Figure(
        "velora_language_confusion",
        "Language expert: confusion matrix",
        "Test items by true (rows) and predicted (columns) query type: counts, and the "
        "share of each true type as colour.",
        plots.figure_png(fig),
    )


def _router_confusion_figure(m: Mapping[str, Any]) -> page.Figure | None:
    mats = [
        (label, a)
        for label, t in _phase_tests(m).items()
        if (a := _matrix(t.get("router_confusion"), 2)) is not None
    ]
    if not mats:
        return None
    fig = plots.new_figure(0.6 + 3.0 * len(mats), 3.0)
    axes = fig.subplots(1, len(mats), squeeze=False)[0]
    for ax, (label, a) in zip(axes, mats, strict=True):
        _heatmap(ax, a, EXPERTS, EXPERTS)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("routed to")
    axes[0].set_ylabel("true domain")
    return page.Figure(
        "velora_router_confusion",
        "Router: true domain against routed expert",
        "Items of the mixed test set by true domain (rows) and the expert the router chose "
        "(columns), after each system phase.",
        plots.figure_png(fig),
    )


def _load_figure(m: Mapping[str, Any]) -> page.Figure | None:
    tests = {
        label: t for label, t in _phase_tests(m).items() if any(
            _num(_dict(t.get("load")).get(e)) is not None for e in EXPERTS)
    }  # fmt: skip
    if not tests:
        return None
    fig = plots.new_figure(6.0, 3.4)
    ax = fig.subplots()
    x = np.arange(len(EXPERTS))
    width = 0.8 / len(tests)
    colors = ("#9467bd", "#2ca02c")
    for i, (label, t) in enumerate(tests.items()):
        load, probs = _dict(t.get("load")), _dict(t.get("mean_probs"))
        pos = x + (i - (len(tests) - 1) / 2) * width
        vals = [100 * v if (v := _num(load.get(e))) is not None else np.nan for e in EXPERTS]
        ax.bar(pos, vals, width * 0.9, color=colors[i % 2], alpha=0.85, label=f"{label}: load")
        mp = [100 * v if (v := _num(probs.get(e))) is not None else np.nan for e in EXPERTS]
        if any(np.isfinite(mp)):
            ax.plot(pos, mp, "D", color=colors[i % 2], mec="black", ms=6,
                    label=f"{label}: mean probability")  # fmt: skip
    ax.axhline(100 / len(EXPERTS), color="0.4", lw=1.0, ls="--", label="even split")
    ax.set_xticks(x, list(EXPERTS))
    ax.set_ylim(0, 135)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("share of test items (%)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper center", ncols=2, framealpha=0.9)
    return page.Figure(
        "velora_load",
        "Expert load",
        "Share of the mixed test items each expert received (bars) and its mean routing "
        "probability (diamonds); the test set holds as many math as language items, so "
        "an even split is what a right router gives.",
        plots.figure_png(fig),
    )


def _training_figure(run: page.RunFiles) -> page.Figure | None:
    names = [n for n in _PHASE_TITLES if n in run.log] + [
        n for n in run.log if n not in _PHASE_TITLES
    ]
    panels = []
    for name in names:
        records = run.log[name]
        losses = [(k, s) for k in _LOSS_KEYS if (s := plots.step_series(records, k))[0].size]
        val = plots.step_series(records, "val_nll")
        acc = plots.step_series(records, "router_acc")
        if losses or val[0].size or acc[0].size:
            panels.append((name, losses, val, acc))
    if not panels:
        return None
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig = plots.new_figure(5.6 * cols, 3.4 * rows)
    grid = fig.subplots(rows, cols, squeeze=False)
    palette = plots.OTHER_COLORS + ("#1f77b4", "#ff7f0e", "#7f7f7f", "#000000")
    for ax, (name, losses, val, acc) in zip(grid.ravel(), panels, strict=False):
        shown = []
        for i, (key, (steps, v)) in enumerate(losses):
            plots.plot_steps(ax, steps, v, color=palette[i % len(palette)], ls="-", label=key)
            shown.append(v)
        if val[0].size:
            ax.plot(*val, "o", color="white", mec="black", mew=0.9, ms=5, label="validation")
            shown.append(val[1])
        values = np.concatenate(shown) if shown else np.empty(0)
        values = values[np.isfinite(values)]
        if values.size and np.all(values > 0) and values.max() / values.min() > 30:
            ax.set_yscale("log")
            plots.plain_log_labels(ax)
        ax.set_title(_PHASE_TITLES.get(name, name), fontsize=10)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if acc[0].size:
            twin = ax.twinx()
            twin.plot(*acc, color="black", lw=1.4, ls="--", marker="x", label="router_acc")
            twin.set_ylim(-0.02, 1.02)
            twin.set_ylabel("router accuracy")
            h2, l2 = twin.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        if handles:
            ax.legend(handles, labels, fontsize=7, loc="upper right", framealpha=0.85)
    for ax in grid.ravel()[len(panels) :]:
        ax.set_visible(False)
    return page.Figure(
        "train_curves",
        "Training, phase by phase",
        "Loss terms against optimiser step in each phase (math and language experts alone, "
        "then router + fusion with the experts frozen, then fine-tuning with staged "
        "unfreezing); long runs show the raw values faintly under a moving average. Open "
        "dots are the validation score that picks each phase's best checkpoint (lower is "
        "better); the dashed black line (right axis) is the router's accuracy on its "
        "training batches.",
        plots.figure_png(fig),
    )


# ------------------------------------------------------------------------- page


def _html(run: page.RunFiles, figures: Mapping[str, page.Figure]) -> str:
    m = run.metrics
    recipe = m.get("recipe")
    title = f"tertulia report: {recipe}" if recipe is not None else "tertulia report"
    parts = [f"<h1>{page.escape(title)}</h1>"]
    if m.get("description"):
        parts.append(f"<p class='description'>{page.escape(m['description'])}</p>")
    done = m.get("phases_done")
    done_text = ", ".join(str(p) for p in done) if isinstance(done, list) and done else "—"
    parts.append(
        f"<p class='note'>Run directory: <code>{page.escape(run.root.name)}</code> · phases "
        f"done: {page.escape(done_text)}</p>"
    )
    row = run.models().get("velora")
    if row:
        parts.append(_contract(row))
    parts.append(_experts(m, figures))
    parts.append(_system(m, figures))
    parts.append(_arithmetic(m))
    parts.append(_explanations(m))
    train = page.training_table(run.section("train"))
    if train or "train_curves" in figures or run.log_bad_lines:
        parts.append("<section><h2>Training</h2>" + train)
        if "train_curves" in figures:
            parts.append(page.figure_html(figures["train_curves"]))
        if run.log_bad_lines:
            parts.append(
                f"<p class='note'>{run.log_bad_lines} unreadable line(s) of "
                f"{page.TRAIN_LOG_FILE} were skipped.</p>"
            )
        parts.append("</section>")
    params = run.section("params")
    if params:
        parts.append(
            "<section><h2>Parameters</h2>"
            + page.key_value_table(params, css="params", count=True)
            + "</section>"
        )
    data = run.section("data")
    if data:
        parts.append(
            "<section><h2>Data</h2>" + page.key_value_table(data, css="data") + "</section>"
        )
    return page.document(title, parts, css=_EXTRA_CSS)


_FIGURES: tuple[Callable[[Mapping[str, Any]], page.Figure | None], ...] = (
    _within_figure,
    _language_confusion_figure,
    _router_confusion_figure,
    _load_figure,
)


def build_velora_report(run: page.RunFiles) -> Path:
    """Write the figures and ``report.html`` of a VELORA run; return the page's path."""
    figures = [f(run.metrics) for f in _FIGURES] + [_training_figure(run)]
    by_name = {f.name: f for f in figures if f is not None}
    for fig in by_name.values():
        atomic_write_bytes(run.root / f"{fig.name}.png", fig.png)
    return atomic_write_text(run.root / page.REPORT_FILE, _html(run, by_name))
