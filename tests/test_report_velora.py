"""The VELORA report page (``task: velora``): tables, figures, escaping, partial runs."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from tertulia.report import build_report


def _test_phase(router_acc: float, mixed: float) -> dict:
    return {
        "items": 120,
        "router_accuracy": router_acc,
        "router_accuracy_by_domain": {"math": 0.8166, "language": 0.5333},
        "router_accuracy_by_op": {"add": 0.8667, "sub": 0.8, "mul": 0.8, "div": 0.8},
        "router_accuracy_by_type": {"question": 0.45, "command": 0.4, "statement": 0.75},
        "router_accuracy_ambiguous": 0.6,
        "router_confusion": [[49, 11], [28, 32]],
        "load": {"math": 0.6417, "language": 0.3583},
        "mean_probs": {"math": 0.5258, "language": 0.4742},
        "balance": 1.0146,
        "mixed_score": mixed,
        "oracle_mixed_score": 0.1667,
        "mixed_score_by_domain": {"math": 0.0, "language": 0.4333},
    }


# A reduced copy of the metrics.json of a tiny (untrained) run.
METRICS = {
    "task": "velora",
    "recipe": "velora",
    "description": "VELORA: math + language experts, neural router, fusion; three-phase training",
    "data": {"operand_range": [1.0, 100.0], "files": {"math": "math_dataset.csv"}},
    "phases_done": ["experts", "router", "finetune"],
    "params": {"math": 50713, "language": 46403, "velora": 108798},
    "train": {
        "math": {"steps": 20, "seconds": 0.977, "best_step": 20, "best_validation": 0.9},
        "router": {"steps": 20, "seconds": 0.836, "best_step": 10, "best_validation": 0.83},
    },
    "experts": {
        "math": {
            "items": 60,
            "op_accuracy": 0.3166666626930237,
            "op_accuracy_by_op": {"add": 0.6667, "sub": 0.0667, "mul": 0.2667, "div": 0.2667},
            "order_accuracy": 0.949999988079071,
            "mse": 46341.879633954515,
            "within_1pct": 0.25,
            "within_1pct_by_op": {"add": 0.5, "sub": 0.25, "mul": 0.125, "div": 0.125},
            "ms_per_item": 0.2664633500292742,
        },
        "math_extrapolation": {
            "items": 50,
            "op_accuracy": 0.34,
            "op_accuracy_by_op": {"add": 0.7692, "sub": 0.0769, "mul": 0.1667, "div": 0.3333},
            "order_accuracy": 0.92,
            "mse": 9401285637.737402,
            "within_1pct": 0.0625,
            "within_1pct_by_op": {"add": 0.125, "sub": 0.0, "mul": 0.0, "div": None},
            "ms_per_item": 0.2645965400006389,
        },
        "language": {
            "items": 60,
            "accuracy": 0.3333333432674408,
            "macro_f1": 0.16666666666666666,
            "f1": {"question": 0.0, "command": 0.0, "statement": 0.5},
            "confusion": [[0, 0, 20], [0, 0, 20], [0, 0, 20]],
            "ms_per_item": 0.4004658833461387,
        },
    },
    "phases": {
        "router": {"test": _test_phase(0.675000011920929, 0.21666666865348816)},
        "finetune": {"test": _test_phase(0.7833333611488342, 0.18333333730697632)},
    },
    "models": {
        "velora": {
            "router_accuracy": 0.7833333611488342,
            "language_accuracy": 0.3333333432674408,
            "math_op_accuracy": 0.3166666626930237,
            "math_within_1pct": {"add": 0.5, "sub": 0.25, "mul": 0.125, "div": 0.125},
            "math_extrapolation_within_1pct": 0.0625,
            "mixed_score": 0.18333333730697632,
            "oracle_mixed_score": 0.1666666716337204,
            "mixed_score_phase2": 0.21666666865348816,
            "mixed_score_phase3": 0.18333333730697632,
        }
    },
    "explanations": [
        {
            "domain": "math",
            "routed": "language",
            "probs": {"math": 0.4, "language": 0.6},
            "ambiguous": True,
            "tokens": [["add", 0.5], [" ", 0.01], ["<script>alert(1)</script>", -0.2]],
        },
        {
            "domain": "language",
            "routed": "language",
            "probs": {"math": 0.1, "language": 0.9},
            "ambiguous": False,
            "tokens": [["Close", 0.2], [" the door & go", -0.1], ["12.5", 0.0]],
        },
    ],
    "arithmetic": {
        "add": {"W_add": [0.9876, -0.5], "W_mul": [0.1043, 0.5962], "gate": 0.4892},
        "mul": {"W_add": [0.4109, 1.0], "W_mul": [0.1275, -0.6714], "gate": 0.0123},
    },
}

TRAIN_LOG = [
    {"model": "math", "step": 10, "val_nll": 21.2},
    {"model": "math", "step": 20, "ce": 1.36, "bce": 0.25, "arith": 12.8, "lr": 0.0012},
    {"model": "language", "step": 20, "loss": 1.08, "acc": 0.34},
    {"model": "router", "step": 20, "task_loss": 1.29, "route_loss": 0.51, "router_acc": 0.83},
    {"model": "finetune", "step": 20, "task_loss": 14.8, "z_loss": 0.2, "router_acc": 0.94},
    {"model": "finetune", "step": 20, "val_nll": 0.83},
]

FIGURES = (
    "velora_within",
    "velora_language_confusion",
    "velora_router_confusion",
    "velora_load",
    "train_curves",
)


def _write_run(root: Path, metrics: dict, log: list[dict] | None = TRAIN_LOG) -> Path:
    root.mkdir()
    (root / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    if log is not None:
        lines = [json.dumps(r) for r in log]
        (root / "train_log.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _row(html: str, label: str) -> list[str]:
    """The cells of the table row headed ``label``."""
    match = re.search(rf"<th scope='row'>{re.escape(label)}</th>(.*?)</tr>", html)
    assert match, f"no row {label!r}"
    return re.findall(r"<td>(.*?)</td>", match.group(1))


def test_full_run_page(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", METRICS)
    path = build_report(run)
    assert path == run / "report.html" and path.is_file()
    html = path.read_text(encoding="utf-8")
    # the dispatch reached the VELORA page, not the generic one
    assert "What the arithmetic unit learned" in html
    assert "phases done: experts, router, finetune" in html
    # contract, fractions as percentages
    assert _row(html, "router accuracy (mixed test)") == ["78.33 %"]
    assert _row(html, "math expert within 1 %: add") == ["50.00 %"]
    assert _row(html, "math expert within 1 %, operands 10× beyond") == ["6.25 %"]
    assert _row(html, "mixed score after phase 2") == ["21.67 %"]
    assert _row(html, "mixed score after phase 3") == ["18.33 %"]
    # experts side by side; a missing value is a dash
    assert _row(html, "within 1 %: div") == ["12.50 %", "—"]
    assert _row(html, "order accuracy") == ["95.00 %", "92.00 %"]
    assert _row(html, "F1: statement") == ["50.00 %"]
    # system: phase 2 against phase 3
    assert _row(html, "router accuracy") == ["67.50 %", "78.33 %"]
    assert _row(html, "balance E·Σ f·P") == ["1.015", "1.015"]
    # arithmetic unit to 3 decimals
    assert _row(html, "gate g") == ["0.489", "0.012"]
    assert _row(html, "W_add")[0] == "(+0.988, -0.500)"
    # figures written beside the page and embedded in it
    for name in FIGURES:
        png = run / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"id='fig-{name}'" in html
    assert not list(run.glob("*.tmp*"))


def test_explanations_escaped_and_coloured(tmp_path: Path) -> None:
    html = build_report(_write_run(tmp_path / "run", METRICS)).read_text(encoding="utf-8")
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert " the door &amp; go" in html
    # largest |score| of the first item (0.5) is full-strength red; −0.2 is 40 % blue
    assert "<span style='background:rgba(220,50,47,0.85)' title='+0.5'>add</span>" in html
    assert "rgba(38,139,210,0.34)' title='-0.2'>&lt;script&gt;" in html
    first, second = re.findall(r"<li>.*?</li>", html)
    assert "ambiguous" in first and "misrouted" in first
    assert "true domain: <b>math</b>" in first and "routed to: <b>language</b>" in first
    assert "language 60.00 %" in first
    assert "ambiguous" not in second and "misrouted" not in second


def test_phase_one_only_builds(tmp_path: Path) -> None:
    metrics = copy.deepcopy(METRICS)
    for key in ("phases", "explanations", "arithmetic"):
        del metrics[key]
    metrics["phases_done"] = ["experts"]
    velora = metrics["models"]["velora"]
    for key in ("mixed_score_phase2", "mixed_score_phase3"):
        del velora[key]
    velora.update(router_accuracy=None, mixed_score=None, oracle_mixed_score=None)
    run = _write_run(tmp_path / "run", metrics, TRAIN_LOG[:3])
    html = build_report(run).read_text(encoding="utf-8")
    assert "phases done: experts" in html
    assert _row(html, "router accuracy (mixed test)") == ["—"]
    assert _row(html, "math expert op accuracy") == ["31.67 %"]
    assert "<h2>System</h2>" not in html and "Why the router chose" not in html
    assert "What the arithmetic unit learned" not in html
    for name in ("velora_within", "velora_language_confusion", "train_curves"):
        assert (run / f"{name}.png").is_file()
    for name in ("velora_router_confusion", "velora_load"):
        assert not (run / f"{name}.png").exists()


def test_bare_and_malformed_metrics_build(tmp_path: Path) -> None:
    bare = _write_run(tmp_path / "bare", {"task": "velora"}, log=None)
    html = build_report(bare).read_text(encoding="utf-8")
    assert "<h2>Metrics</h2>" not in html and "<h2>Experts</h2>" not in html
    assert not list(bare.glob("*.png"))

    metrics = copy.deepcopy(METRICS)
    metrics["experts"]["language"]["confusion"] = [[1, 2], [3]]
    metrics["phases"]["router"]["test"]["router_confusion"] = "bad"
    metrics["explanations"] = [{"tokens": [["x", "nan?"], "junk", ["<b>", 1.0]]}, "junk"]
    run = _write_run(tmp_path / "bad", metrics)
    html = build_report(run).read_text(encoding="utf-8")
    assert not (run / "velora_language_confusion.png").exists()
    assert (run / "velora_router_confusion.png").is_file()  # phase 3 is still well formed
    assert "&lt;b&gt;</span>" in html and "<b></span>" not in html
