"""Tests for tertulia.report: a synthetic run directory in, one HTML page and PNGs out."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tertulia.errors import RunDirError
from tertulia.report import build_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG_TAG = '<img src="data:image/png;base64,'
ALL_FIGURES = (
    "prediction",
    "rollout_nrmse",
    "calibration",
    "residual_per_round",
    "attention",
    "train_curves",
    "rollout_spacetime",
)
G, K, CELLS = 32, 6, 4
LEVELS = [0.1, 0.3, 0.5, 0.7, 0.9]


def _model_metrics(scale: float, *, rounds: bool) -> dict:
    metrics = {
        "nrmse_1step": 0.05 * scale,
        "nrmse_rollout": 0.2 * scale,
        "rmse": 0.01 * scale,
        "nll": -2.0 / scale,
        "crps": 0.004 * scale,
        "coverage_50": 0.5 - 0.02 * scale,
        "coverage_90": 0.9 - 0.03 * scale,
        "coverage_95": 0.95 - 0.01 * scale,
        "miscalibration_area": 0.01 * scale,
        "sigma_rel_error": 0.1 * scale,
    }
    if rounds:
        metrics |= {"rounds_mean": 7.5, "residual_final": 3.2e-4, "messages_per_prediction": 96.0}
    return metrics


def _full_metrics() -> dict:
    models = {
        "orchestra": _model_metrics(1.0, rounds=True),
        "mlp": _model_metrics(2.0, rounds=False),
        "persistence": _model_metrics(4.0, rounds=False),
    }
    # Coverage: the mlp is closest to nominal on coverage_90 although it is not the lowest.
    models["mlp"]["coverage_90"] = 0.905
    models["persistence"]["coverage_90"] = 0.5
    attention = np.full((CELLS, CELLS), 0.1)
    np.fill_diagonal(attention, 0.7)
    return {
        "recipe": "burgers",
        "description": "Viscous Burgers <nu=0.1> & friends",
        "params": {"orchestra": 52000, "mlp": 51000, "persistence": 0},
        "models": models,
        "curves": {
            "rollout_nrmse": {
                m: [0.01 * s * (k + 1) for k in range(K)]
                for m, s in [("orchestra", 1), ("mlp", 2), ("persistence", 4)]
            },
            "calibration": {
                "levels": LEVELS,
                "orchestra": [lv - 0.01 for lv in LEVELS],
                "mlp": [lv * 0.8 for lv in LEVELS],
                "persistence": [lv * 0.5 for lv in LEVELS],
            },
            "residual_per_round": [0.5 * 0.4**r for r in range(8)],
            "attention": attention.tolist(),
            "cells": CELLS,
        },
        "train": {
            "orchestra": {"steps": 1200, "skipped_steps": 2, "seconds": 61.5},
            "mlp": {"steps": 1200, "skipped_steps": 0, "seconds": 12.25},
        },
        "data": {"equation": "burgers", "grid": G, "nu": 0.1, "n_test": 64, "extra": [1, 2]},
        "unknown_section": {"anything": True},
    }


def _examples(models: tuple[str, ...] = ("orchestra", "mlp", "persistence")) -> dict:
    x = np.linspace(0, 1, G, endpoint=False, dtype=np.float32)
    truth = np.sin(2 * np.pi * x).astype(np.float32)
    rng = np.random.default_rng(0)
    out = {
        "x": x,
        "input_last": np.sin(2 * np.pi * (x - 0.02)).astype(np.float32),
        "truth": truth,
        "obs": (truth + 0.05 * rng.standard_normal(G)).astype(np.float32),
        "rollout.truth": np.stack([np.sin(2 * np.pi * (x - 0.02 * k)) for k in range(K)]).astype(
            np.float32
        ),
    }
    for i, m in enumerate(models):
        out[f"{m}.mean"] = (truth + 0.02 * (i + 1) * rng.standard_normal(G)).astype(np.float32)
        out[f"{m}.std"] = np.full(G, 0.05 * (i + 1), dtype=np.float32)
        out[f"{m}.rollout_mean"] = (
            out["rollout.truth"] + 0.01 * (i + 1) * rng.standard_normal((K, G))
        ).astype(np.float32)
    return out


def _train_log() -> list[dict]:
    records = []
    for step in range(0, 120, 2):
        orchestra = {"model": "orchestra", "step": step, "loss": 1.0 / (1 + step), "nll": 0.1,
                     "lr": 1e-3, "residual": 0.1 / (1 + step)}  # fmt: skip
        if step % 20 == 0:
            orchestra["val_nll"] = 1.2 / (1 + step)
        records.append(orchestra)
        records.append({"model": "mlp", "step": step, "loss": 2.0 / (1 + step), "lr": 1e-3})
    return records


def make_run(
    root: Path,
    *,
    metrics: dict | None = None,
    examples: dict | None = None,
    log: list[dict] | None = None,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "metrics.json").write_text(json.dumps(metrics if metrics is not None else {}))
    if examples is not None:
        save_file(examples, str(root / "examples.safetensors"))
    if log is not None:
        (root / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    return root


def _png_names(html: str) -> int:
    return html.count(IMG_TAG)


def _row(html: str, key: str) -> str:
    match = re.search(rf"<tr><th scope='row'>{re.escape(key)}</th>(.*?)</tr>", html)
    assert match, f"no table row {key!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[Path, str]:
    run = make_run(
        tmp_path_factory.mktemp("full") / "run",
        metrics=_full_metrics(),
        examples=_examples(),
        log=_train_log(),
    )
    path = build_report(run)
    return run, path.read_text(encoding="utf-8")


def test_full_report_embeds_every_figure(full_report):
    run, html = full_report
    assert (run / "report.html").is_file()
    assert _png_names(html) == len(ALL_FIGURES)
    for name in ALL_FIGURES:
        assert f"id='fig-{name}'" in html
        data = (run / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 10_000, name  # a real plot, not an empty canvas


def test_full_report_is_self_contained(full_report):
    _, html = full_report
    assert "<script" not in html
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html
    # every resource is inline
    sources = re.findall(r"(?:src|href)=[\"']([^\"']*)", html)
    assert len(sources) == len(ALL_FIGURES)
    assert all(s.startswith("data:image/png;base64,iVBORw0KGgo") for s in sources)


def test_full_report_title_and_escaping(full_report):
    _, html = full_report
    assert "<title>tertulia report: burgers</title>" in html
    assert "Viscous Burgers &lt;nu=0.1&gt; &amp; friends" in html
    assert "<nu=0.1>" not in html


def test_metrics_table_lists_every_metric_with_4_significant_digits(full_report):
    _, html = full_report
    for key in _model_metrics(1.0, rounds=True):
        assert f"<th scope='row'>{key}</th>" in html
    assert "<th>orchestra</th><th>mlp</th><th>persistence</th>" in html
    row = _row(html, "nrmse_rollout")
    assert ">0.2<" in row and ">0.4<" in row and ">0.8<" in row
    assert ">0.0001234<" not in row
    assert "<td>0.0003200</td>" not in _row(html, "residual_final")
    assert "0.00032" in _row(html, "residual_final")
    # models without rounds show a dash
    assert _row(html, "rounds_mean").count("—") == 2


def test_metrics_table_bolds_the_best(full_report):
    _, html = full_report
    # lower is better: orchestra everywhere (scale 1)
    for key in ("nrmse_1step", "rmse", "nll", "crps", "miscalibration_area", "sigma_rel_error"):
        cells = re.findall(r"<td[^>]*>.*?</td>", _row(html, key))
        assert cells[0].startswith("<td class='best'><b>"), key
        assert all("<b>" not in c for c in cells[1:3]), key
    # coverage: closest to nominal, not the largest / smallest
    cells = re.findall(r"<td[^>]*>.*?</td>", _row(html, "coverage_90"))
    assert "<b>0.905</b>" in cells[1]
    assert "<b>" not in cells[0] and "<b>" not in cells[2]
    # no ranking where "best" is undefined
    assert "<b>" not in _row(html, "rounds_mean")


def test_parameter_data_and_training_summaries(full_report):
    _, html = full_report
    assert "52,000" in html and "51,000" in html
    assert "<th scope='row'>equation</th><td>burgers</td>" in html
    assert "<th scope='row'>nu</th><td>0.1</td>" in html
    assert "<th>steps</th><th>skipped_steps</th><th>seconds</th>" in html
    assert "1,200" in html and "61.5" in html


def test_only_persistence_no_examples_no_log(tmp_path):
    metrics = {
        "recipe": "heat",
        "models": {"persistence": _model_metrics(1.0, rounds=False)},
        "curves": {
            "rollout_nrmse": {"persistence": [0.1, 0.2, 0.3]},
            "calibration": {"levels": LEVELS, "persistence": LEVELS},
        },
    }
    run = make_run(tmp_path / "run", metrics=metrics)
    html = build_report(run).read_text()
    assert _png_names(html) == 2
    assert "id='fig-rollout_nrmse'" in html and "id='fig-calibration'" in html
    assert not (run / "prediction.png").exists()
    assert "<th>persistence</th>" in html
    assert "<b>" not in _row(html, "nrmse_1step")  # one model: nothing to rank


def test_empty_metrics_gives_a_page_without_figures(tmp_path):
    run = make_run(tmp_path / "run", metrics={})
    html = build_report(run).read_text()
    assert _png_names(html) == 0
    assert "No model metrics" in html


def test_malformed_sections_are_skipped(tmp_path):
    metrics = _full_metrics()
    metrics["models"]["mlp"] = "not a dict"
    metrics["curves"]["attention"] = [[1.0, 2.0], [3.0]]  # ragged
    metrics["curves"]["rollout_nrmse"]["mlp"] = ["a", "b"]
    metrics["curves"]["calibration"]["persistence"] = [0.5]  # wrong length
    metrics["curves"]["residual_per_round"] = "nope"
    metrics["train"] = ["nope"]
    examples = _examples(("orchestra",))
    examples["orchestra.std"] = np.ones(G + 1, dtype=np.float32)  # wrong shape: no panel
    log = _train_log()
    run = make_run(tmp_path / "run", metrics=metrics, examples=examples, log=log)
    with (run / "train_log.jsonl").open("a") as fh:
        fh.write('{"model": "orchestra", "step": 1')  # torn last line
    html = build_report(run).read_text()
    names = re.findall(r"id='fig-(\w+)'", html)
    assert names == ["rollout_nrmse", "calibration", "train_curves", "rollout_spacetime"]
    assert "1 unreadable line(s)" in html
    assert "<th>mlp</th>" not in html.split("Parameters")[0]


def test_examples_without_rollout_and_model_without_rounds(tmp_path):
    metrics = _full_metrics()
    del metrics["models"]["orchestra"], metrics["curves"]["residual_per_round"]
    del metrics["curves"]["attention"]
    examples = {k: v for k, v in _examples(("mlp",)).items() if "rollout" not in k}
    run = make_run(tmp_path / "run", metrics=metrics, examples=examples)
    html = build_report(run).read_text()
    assert re.findall(r"id='fig-(\w+)'", html) == ["prediction", "rollout_nrmse", "calibration"]
    assert "rounds_mean" not in html


def test_attention_with_leading_axes_is_averaged(tmp_path):
    per_round = np.stack([np.eye(3), np.full((3, 3), 1 / 3)]).tolist()
    run = make_run(tmp_path / "run", metrics={"curves": {"attention": per_round}})
    html = build_report(run).read_text()
    assert re.findall(r"id='fig-(\w+)'", html) == ["attention"]


def test_missing_metrics_json_raises(tmp_path):
    with pytest.raises(RunDirError, match="is not a run directory: no metrics.json"):
        build_report(tmp_path)
    with pytest.raises(RunDirError, match="is not a run directory"):
        build_report(tmp_path / "does-not-exist")


def test_invalid_metrics_json_raises_one_line(tmp_path):
    (tmp_path / "metrics.json").write_text('{"models": {')
    with pytest.raises(RunDirError, match="not valid JSON") as info:
        build_report(tmp_path)
    assert "\n" not in str(info.value)
    (tmp_path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(RunDirError, match="JSON object"):
        build_report(tmp_path)


def test_corrupt_examples_raise(tmp_path):
    run = make_run(tmp_path / "run", metrics=_full_metrics())
    (run / "examples.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(RunDirError, match="safetensors"):
        build_report(run)


def test_rebuild_overwrites_and_leaves_no_temporary_files(tmp_path):
    run = make_run(tmp_path / "run", metrics={"models": {"mlp": {"rmse": 1.0}}})
    first = build_report(run).read_text()
    second = build_report(run).read_text()
    assert first == second
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_importing_tertulia_report_selects_no_pyplot(tmp_path):
    import subprocess
    import sys

    code = "import sys, tertulia.report; print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
