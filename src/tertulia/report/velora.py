"""Report page of the VELORA recipe (``task: velora``).

Inputs, read from the run directory by :func:`tertulia.report.html._load_run`:

    metrics.json      models.velora (the issue's contract), experts.{math,
                      math_extrapolation, language}, phases.{router,finetune}.{test,val},
                      arithmetic (per op unit: W_add, W_mul, gate), explanations
                      [{domain, routed, probs, ambiguous, tokens [[piece, score]]}]
    train_log.jsonl   per phase: loss, task_loss, route_loss, router_acc, val_nll …

Every section is skipped when its data is missing (a run stopped after phase 1
has no system metrics). All text is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._io import atomic_write_bytes, atomic_write_text
from . import html as page
from . import plots
from .classical import _table

OPS = ("add", "sub", "mul", "div")


def _pct(v: Any) -> str:
    return f"{100 * v:.2f} %" if isinstance(v, (int, float)) else "—"


def _rows_table(rows: Mapping[str, Mapping[str, Any]], title: str, fmt=_pct) -> str:
    return _table(rows, title, fmt)


def _contract(row: Mapping[str, Any]) -> str:
    flat: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, dict):
            flat.update({f"{k}.{op}": x for op, x in v.items()})
        else:
            flat[k] = v
    return _rows_table({"velora": flat}, "the system on the held-out sets")


def _math_rows(s: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "op accuracy": s.get("op_accuracy"),
        "order accuracy": s.get("order_accuracy"),
        "within 1 %": s.get("within_1pct"),
    }
    for op, v in (s.get("within_1pct_by_op") or {}).items():
        out[f"within 1 %: {op}"] = v
    return out


def _number(v: Any) -> str:
    return page._format_value(v) if isinstance(v, (int, float)) else "—"


def _experts(m: Mapping[str, Any]) -> str:
    ex = m.get("experts")
    if not isinstance(ex, dict):
        return ""
    parts = ["<section><h2>Experts</h2>"]
    cols = {
        name: _math_rows(ex[key])
        for key, name in (("math", "in range"), ("math_extrapolation", "operands 10× beyond"))
        if isinstance(ex.get(key), dict)
    }
    if cols:
        parts.append(_rows_table(cols, "math expert (its own test sets)"))
        extra = {
            name: {"MSE": ex[key].get("mse"), "ms per item": ex[key].get("ms_per_item")}
            for key, name in (("math", "in range"), ("math_extrapolation", "operands 10× beyond"))
            if isinstance(ex.get(key), dict)
        }
        parts.append(_rows_table(extra, "math expert: error and speed", fmt=_number))
    lang = ex.get("language")
    if isinstance(lang, dict):
        row = {"accuracy": lang.get("accuracy"), "macro-F1": lang.get("macro_f1")}
        row.update({f"F1 {k}": v for k, v in (lang.get("f1") or {}).items()})
        parts.append(_rows_table({"language expert": row}, "language expert (query type)"))
        parts.append(
            f"<p class='note'>{page._e(_number(lang.get('ms_per_item')))} ms per item.</p>"
        )
    parts.append("</section>")
    return "".join(parts)


def _system(m: Mapping[str, Any]) -> str:
    phases = m.get("phases")
    if not isinstance(phases, dict) or not phases:
        return ""
    cols: dict[str, dict[str, Any]] = {}
    for name, label in (
        ("router", "phase 2: router + fusion"),
        ("finetune", "phase 3: fine-tuned"),
    ):
        test = (phases.get(name) or {}).get("test")
        if not isinstance(test, dict):
            continue
        row = {
            "mixed score": test.get("mixed_score"),
            "oracle routing": test.get("oracle_mixed_score"),
            "router accuracy": test.get("router_accuracy"),
            "router accuracy, ambiguous items": test.get("router_accuracy_ambiguous"),
        }
        for group in (
            "router_accuracy_by_domain",
            "router_accuracy_by_op",
            "router_accuracy_by_type",
        ):
            row.update({f"router accuracy: {k}": v for k, v in (test.get(group) or {}).items()})
        row.update({f"load: {k}": v for k, v in (test.get("load") or {}).items()})
        cols[label] = row
    if not cols:
        return ""
    return (
        "<section><h2>System</h2>"
        + _rows_table(cols, "mixed test set (math and language items, balanced)")
        + "<p class='note'>Mixed score: a math item counts when the routed answer is within "
        "1 % of the truth, a language item when the query type is right. Oracle routing "
        "sends every item to the expert of its true domain. Load is the share of items "
        "each expert received.</p></section>"
    )


def _arithmetic(m: Mapping[str, Any]) -> str:
    arith = m.get("arithmetic")
    if not isinstance(arith, dict):
        return ""

    def fmt(v: Any) -> str:
        if isinstance(v, list):
            return "[" + ", ".join(f"{x:+.3f}" for x in v) + "]"
        return f"{v:.3f}" if isinstance(v, (int, float)) else "—"

    rows = {
        op: {k: fmt(v) for k, v in unit.items()}
        for op, unit in arith.items()
        if isinstance(unit, dict)
    }
    return (
        "<section><h2>What the arithmetic unit learned</h2>"
        + _rows_table(rows, "NALU bank: one unit per op", fmt=lambda v: str(v) if v else "—")
        + "<p class='note'>Each unit computes g·(W_add·x) + (1 − g)·exp(W_mul·log|x|)·sign. "
        "Addition and subtraction should end with the gate g → 1 and W_add → (1, ±1); "
        "multiplication and division with g → 0 and W_mul → (1, ±1). Exact weights are what "
        "carries the answers to operands ten times beyond the training range.</p></section>"
    )


def _explanations(m: Mapping[str, Any]) -> str:
    items = m.get("explanations")
    if not isinstance(items, list) or not items:
        return ""
    parts = [
        "<section><h2>Why the router chose</h2><p class='note'>Gradient × input of the routed "
        "expert's logit with respect to the router's token embeddings: red pushes toward the "
        "chosen expert, blue against; colour strength relative to each text's largest "
        "|attribution|.</p><ul class='explain'>"
    ]
    for item in items:
        if not isinstance(item, dict):
            continue
        pieces = [p for p in item.get("tokens", []) if isinstance(p, list) and len(p) == 2]
        scale = max((abs(float(s)) for _, s in pieces), default=0.0) or 1.0
        spans = []
        for text, score in pieces:
            a = min(abs(float(score)) / scale, 1.0)
            rgb = "220,50,47" if float(score) > 0 else "38,139,210"
            spans.append(
                f"<span style='background:rgba({rgb},{0.85 * a:.2f})' "
                f"title='{float(score):+.3g}'>{page._e(text)}</span>"
            )
        probs = ", ".join(
            f"{page._e(k)} {100 * float(v):.1f} %" for k, v in (item.get("probs") or {}).items()
        )
        flag = " · ambiguous" if item.get("ambiguous") else ""
        wrong = "" if item.get("domain") == item.get("routed") else " · <b>misrouted</b>"
        parts.append(
            f"<li><code>{''.join(spans)}</code><br><small>true: {page._e(item.get('domain'))}"
            f" · routed: {page._e(item.get('routed'))} ({probs}){flag}{wrong}</small></li>"
        )
    parts.append("</ul></section>")
    return "".join(parts)


def _within_figure(m: Mapping[str, Any]) -> page._Figure | None:
    ex = m.get("experts")
    if not isinstance(ex, dict):
        return None
    sets = [
        (label, (ex.get(key) or {}).get("within_1pct_by_op"))
        for key, label in (("math", "in range"), ("math_extrapolation", "10× beyond"))
    ]
    sets = [(label, v) for label, v in sets if isinstance(v, dict)]
    if not sets:
        return None
    fig = plots._new_figure(6.0, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(OPS))
    width = 0.8 / len(sets)
    for i, (label, v) in enumerate(sets):
        vals = [100 * float(v.get(op) or 0.0) for op in OPS]
        ax.bar(x + (i - (len(sets) - 1) / 2) * width, vals, width, label=label)
    ax.axhline(95, color="k", lw=0.8, ls="--", label="target in range (95 %)")
    ax.axhline(80, color="grey", lw=0.8, ls=":", label="target beyond (80 %)")
    ax.set_xticks(x, OPS)
    ax.set_ylim(0, 105)
    ax.set_ylabel("answers within 1 % (%)")
    ax.legend(fontsize=7, loc="lower left")
    caption = (
        "Share of the math expert's answers within 1 % relative error, by operation, on "
        "operands in the training range and ten times beyond it."
    )
    return page._Figure("velora_within", "Arithmetic accuracy", caption, plots.figure_png(fig))


def _training_figure(run: page._Run) -> page._Figure | None:
    if not run.log:
        return None
    records = {}
    for name, recs in run.log.items():
        key = "loss" if any("loss" in r for r in recs) else "task_loss"
        rows = [
            {"step": r["step"], "loss": r.get(key, r.get("task_loss"))}
            for r in recs
            if isinstance(r.get("step"), (int, float))
            and isinstance(r.get(key, r.get("task_loss")), (int, float))
        ]
        rows += [r for r in recs if "val_nll" in r and isinstance(r.get("step"), (int, float))]
        if rows:
            records[name] = rows
    fig = plots.training_figure(records) if records else None
    if fig is None:
        return None
    caption = (
        "Training loss against step in each phase (math and language experts alone, then "
        "router + fusion, then fine-tuning); dots are the validation score that picks each "
        "phase's best checkpoint (a loss for the experts, 1 − mixed score for the system)."
    )
    return page._Figure("train_curves", "Training", caption, plots.figure_png(fig))


def _html(run: page._Run, figures: list[page._Figure]) -> str:
    m = run.metrics
    title = f"tertulia report: {m.get('recipe', '')}"
    parts = [f"<h1>{page._e(title)}</h1>"]
    if m.get("description"):
        parts.append(f"<p class='description'>{page._e(m['description'])}</p>")
    done = ", ".join(str(p) for p in m.get("phases_done") or []) or "none"
    parts.append(
        f"<p class='note'>Run directory: <code>{page._e(run.root.name)}</code> · phases done: "
        f"{page._e(done)}</p>"
    )
    row = run.models().get("velora")
    if row:
        parts.append("<section><h2>Metrics</h2>" + _contract(row) + "</section>")
    parts.append(_experts(m))
    parts.append(_system(m))
    parts.append(_arithmetic(m))
    parts.append(_explanations(m))
    train = page._training_table(run.section("train"))
    if train:
        parts.append("<section><h2>Training</h2>" + train + "</section>")
    data = run.section("data")
    if data:
        parts.append(
            "<section><h2>Data</h2>" + page._key_value_table(data, css="data") + "</section>"
        )
    if figures:
        parts.append("<section><h2>Figures</h2>")
        parts.extend(page._figure_html(f) for f in figures)
        parts.append("</section>")
    parts.append("<footer>Rebuilt from the run directory by tertulia.report.</footer>")
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{page._e(title)}</title>\n<style>{page._CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{chr(10).join(p for p in parts if p)}\n</main>\n</body>\n</html>\n"
    )


def build_velora_report(run: page._Run):
    """Write the figures and ``report.html`` of a VELORA run; return the page's path."""
    figures = [f for f in (_within_figure(run.metrics), _training_figure(run)) if f is not None]
    for fig in figures:
        atomic_write_bytes(run.root / f"{fig.name}.png", fig.png)
    return atomic_write_text(run.root / page.REPORT_FILE, _html(run, figures))
