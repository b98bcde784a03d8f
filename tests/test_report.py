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
    "rho",
    "iterations",
    "solver_training",
    "ood",
    "adversarial",
)
G, K, CELLS = 32, 6, 4
SOLVER_METRICS = {
    "iterations_mean": 11.5,
    "converged_fraction": 0.97,
    "rho_mean": 0.82,
    "rho_max": 1.07,
    "rho_below_1": 0.9375,
}
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
        metrics |= SOLVER_METRICS
    return metrics


def _ood_scores(scale: float) -> dict:
    return {
        "samples": 512,
        "nrmse": 0.05 * scale,
        "rmse": 0.01 * scale,
        "nll": -2.0 + scale,
        "coverage_90": 0.9 - 0.01 * scale,
        "std_pred": 0.02 * scale,
        "std_true": 0.02,
        "spearman_std_error": 0.4,
    }


def _ood_condition(name: str, shift: dict, error: float, sigma: float, base: float) -> dict:
    """A condition whose error grows by ``error`` and σ̂ by ``sigma`` over a model of scale base."""
    return {
        "name": name,
        "shift": shift,
        **_ood_scores(base * error),
        "std_pred": 0.02 * base * sigma,
        "nrmse_ratio": error,
        "rmse_ratio": error,
        "std_ratio": sigma,
        "error_grows": error > 1,
        "sigma_grows": sigma > 1,
        "sigma_follows_error": error <= 1 or sigma > 1,
    }


def _robustness() -> dict:
    ood = {}
    for model, base, ratios, rho in [
        ("orchestra", 1.0, [(1.234567, 1.5), (3.0, 0.8), (0.9, 1.1)], 0.612345),
        ("mlp", 2.0, [(2.0, 2.5), (5.0, 1.2), (1.1, 0.7)], None),
    ]:
        names = [("nu=0.02", {"nu": 0.02}), ("amplitude=2", {"amplitude": 2.0}),
                 ("noise×3", {"noise": 3.0})]  # fmt: skip
        ood[model] = {
            "in_distribution": _ood_scores(base),
            "conditions": [
                _ood_condition(n, shift, e, sg, base)
                for (n, shift), (e, sg) in zip(names, ratios, strict=True)
            ],
            "spearman_std_error": rho,
            "skipped": {"nu=0.001": "3 of 8 trajectories break the maximum principle"},
        }
    adversarial = {}
    for model, base in [("orchestra", 1.0), ("mlp", 2.0)]:
        rows = [{"method": "none", "eps": 0.0, "nrmse": 0.05 * base, "rmse": 0.01 * base,
                 "nll": -2.0, "coverage_90": 0.9, "std_pred": 0.02, "nrmse_ratio": 1.0,
                 "nll_delta": 0.0}]  # fmt: skip
        for method, strength in [("fgsm", 1.0), ("pgd", 1.5)]:
            for eps in (0.01, 0.05):
                growth = 1 + strength * eps * 40 * base
                rows.append({"method": method, "eps": eps, "nrmse": 0.05 * base * growth,
                             "rmse": 0.01 * base * growth, "nll": -2.0 + growth,
                             "coverage_90": 0.9 / growth, "std_pred": 0.02,
                             "nrmse_ratio": growth, "nll_delta": growth})  # fmt: skip
        adversarial[model] = {"rows": rows, "samples": 256}
    # Coverage: the mlp is closest to nominal on amplitude=2 although it is not the largest.
    ood["mlp"]["conditions"][1]["coverage_90"] = 0.9001
    ood["orchestra"]["conditions"][1]["coverage_90"] = 0.95
    return {"ood": ood, "adversarial": adversarial}


RHO = [0.6 + 0.005 * i for i in range(60)] + [1.02, 1.04, 1.05, 1.07]  # 60 of 64 below 1
ITERATIONS = [8, 9, 9, 10, 10, 10, 11, 11, 12, 30] * 4


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
            "rho": RHO,
            "iterations": ITERATIONS,
        },
        "train": {
            "orchestra": {
                "steps": 1200,
                "skipped_steps": 2,
                "seconds": 61.5,
                "unconverged_fraction": 0.0125,
                "forward_iterations_mean": 12.25,
                "backward_iterations_mean": 8.5,
                "peak_activation_mb": 153.6,
                "mode": "deq",
                "backward": "implicit",
            },
            "mlp": {"steps": 1200, "skipped_steps": 0, "seconds": 12.25},
        },
        "robustness": _robustness(),
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
                     "lr": 1e-3, "residual": 0.1 / (1 + step), "iterations": 10 + step / 20,
                     "backward_iterations": 6 + step / 40, "unconverged": 0.0,
                     "activation_mb": 150.0, "block": step // 40}  # fmt: skip
        if step % 20 == 0:
            orchestra["val_nll"] = 1.2 / (1 + step)
            orchestra["rho"] = 0.7 + step / 1000
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


def _section(html: str, title: str) -> str:
    match = re.search(rf"<h2>{re.escape(title)}</h2>(.*?)</section>", html, re.S)
    assert match, f"no section {title!r}"
    return match.group(1)


def _table(html: str, css: str) -> str:
    match = re.search(rf"<table class='{css}'>(.*?)</table>", html, re.S)
    assert match, f"no table {css!r}"
    return match.group(1)


def _cells(row: str) -> list[str]:
    return re.findall(r"<td[^>]*>.*?</td>", row)


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
    metrics["curves"]["rho"] = "nope"
    metrics["curves"]["iterations"] = [10, None, 12]
    metrics["robustness"] = {"ood": ["nope"], "adversarial": {"orchestra": {"rows": "nope"}}}
    examples = _examples(("orchestra",))
    examples["orchestra.std"] = np.ones(G + 1, dtype=np.float32)  # wrong shape: no panel
    log = _train_log()
    run = make_run(tmp_path / "run", metrics=metrics, examples=examples, log=log)
    with (run / "train_log.jsonl").open("a") as fh:
        fh.write('{"model": "orchestra", "step": 1')  # torn last line
    html = build_report(run).read_text()
    names = re.findall(r"id='fig-(\w+)'", html)
    assert names == [
        "rollout_nrmse",
        "calibration",
        "train_curves",
        "rollout_spacetime",
        "solver_training",
    ]
    assert "1 unreadable line(s)" in html
    assert "<h2>Robustness</h2>" not in html
    assert "<th>mlp</th>" not in html.split("Parameters")[0]


def test_examples_without_rollout_and_model_without_rounds(tmp_path):
    metrics = _full_metrics()
    del metrics["models"]["orchestra"], metrics["curves"]["residual_per_round"]
    del metrics["curves"]["attention"], metrics["curves"]["rho"], metrics["curves"]["iterations"]
    del metrics["robustness"]
    examples = {k: v for k, v in _examples(("mlp",)).items() if "rollout" not in k}
    run = make_run(tmp_path / "run", metrics=metrics, examples=examples)
    html = build_report(run).read_text()
    assert re.findall(r"id='fig-(\w+)'", html) == ["prediction", "rollout_nrmse", "calibration"]
    assert "rounds_mean" not in html and "rho_mean" not in html
    # The training summary alone still gives the orchestra an equilibrium row.
    assert "<th scope='row'>orchestra</th><td>deq / implicit</td>" in _section(html, "Equilibrium")


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


# --------------------------------------------------------------------------- equilibrium


def test_equilibrium_section_holds_its_table_and_figures(full_report):
    _, html = full_report
    section = _section(html, "Equilibrium")
    assert re.findall(r"id='fig-(\w+)'", section) == ["rho", "iterations", "solver_training"]
    assert "id='fig-rho'" not in _section(html, "Figures")
    # the residual per round stays with the other figures
    assert "id='fig-residual_per_round'" in _section(html, "Figures")
    table = _table(section, "equilibrium")
    row = _row(table, "orchestra")
    texts = [re.sub(r"<[^>]+>", "", c) for c in _cells(row)]
    assert texts == ["deq / implicit", "11.5", "0.97", "0.82", "1.07", "0.9375", "12.25", "8.5",
                     "0.0125", "153.6"]  # fmt: skip
    assert "<th>fraction ρ &lt; 1</th>" in table and "<th>peak activation MB</th>" in table
    assert "<b>" not in table
    # mlp and persistence have no solver diagnostics: no row
    assert "<th scope='row'>mlp</th>" not in table
    assert "<th scope='row'>persistence</th>" not in table


def test_solver_metrics_are_listed_but_never_ranked(tmp_path):
    deq = {**SOLVER_METRICS, "rmse": 0.01, "rho_error": 0.3}
    bptt = {**SOLVER_METRICS, "rmse": 0.02, "rho_error": 0.1}
    bptt |= {"iterations_mean": 4.0, "converged_fraction": 0.5, "rho_mean": 0.2, "rho_max": 0.3}
    bptt["rho_below_1"] = 1.0
    metrics = {"models": {"orchestra": deq, "orchestra_bptt": bptt}}
    html = build_report(make_run(tmp_path / "run", metrics=metrics)).read_text()
    metrics_table = _table(html, "metrics")
    for key in (*SOLVER_METRICS, "rho_error"):
        row = _row(metrics_table, key)
        assert "<b>" not in row, key
        assert "<td class='better'></td>" in row, key
    assert "<b>0.01</b>" in _row(metrics_table, "rmse")  # ranking still works for errors
    # both models in the equilibrium table, nothing bold there either
    table = _table(_section(html, "Equilibrium"), "equilibrium")
    assert "<th scope='row'>orchestra_bptt</th>" in table and "<b>" not in table
    assert "training mode" not in table  # no train summary: no mode column
    assert "backward iterations" not in table  # columns nobody has are dropped
    assert _png_names(html) == 0


def test_training_table_shows_the_solver_summary(full_report):
    _, html = full_report
    table = _table(_section(html, "Training"), "train")
    for key in ("unconverged_fraction", "forward_iterations_mean", "backward_iterations_mean",
                "peak_activation_mb", "mode", "backward"):  # fmt: skip
        assert f"<th>{key}</th>" in table, key
    orchestra = [re.sub(r"<[^>]+>", "", c) for c in _cells(_row(table, "orchestra"))]
    assert orchestra == ["1,200", "2", "61.5", "0.0125", "12.25", "8.5", "153.6", "deq",
                         "implicit"]  # fmt: skip
    assert _row(table, "mlp").count("—") == 6


def test_solver_figures_from_minimal_inputs(tmp_path):
    metrics = {"curves": {"rho": [0.5, 0.9, 1.5, 2.0], "iterations": [3, 3, 4, 50]}}
    log = [{"model": "orchestra", "step": s, "backward_iterations": 5} for s in range(5)]
    run = make_run(tmp_path / "run", metrics=metrics, log=log)
    html = build_report(run).read_text()
    assert re.findall(r"id='fig-(\w+)'", html) == ["rho", "iterations", "solver_training"]
    assert "<table class='equilibrium'>" not in html
    assert "Right: the mean contraction factor" not in html  # no rho logged
    for name in ("rho", "iterations", "solver_training"):
        assert (run / f"{name}.png").read_bytes().startswith(PNG_MAGIC)


def test_malformed_solver_inputs_are_skipped(tmp_path):
    metrics = {
        "models": {"orchestra": {"iterations_mean": "many", "rho_mean": None, "rmse": 0.1}},
        "train": {"orchestra": {"mode": 3, "backward": None, "peak_activation_mb": [1]}},
        "curves": {"rho": [], "iterations": {"a": 1}},
    }
    log = [
        {"model": "orchestra", "step": 0, "iterations": "x", "rho": None},
        {"model": "orchestra", "step": "one", "iterations": 3},
        {"model": "orchestra", "step": 1, "loss": 0.5},
    ]
    run = make_run(tmp_path / "run", metrics=metrics, log=log)
    html = build_report(run).read_text()
    assert "<h2>Equilibrium</h2>" not in html
    assert re.findall(r"id='fig-(\w+)'", html) == ["train_curves"]
    assert not (run / "rho.png").exists() and not (run / "solver_training.png").exists()


def test_solver_plots_mark_rho_one_and_the_fraction_below():
    from tertulia.report import plots

    fig = plots.rho_figure(RHO)
    ax = fig.axes[0]
    assert ax.get_title() == "Contraction factor per test sample: 93.8% below 1"
    assert any(list(line.get_xdata()) == [1.0, 1.0] for line in ax.get_lines())
    # non-finite ρ counts as not below 1
    assert "50.0% below 1" in plots.rho_figure([0.5, float("inf")]).axes[0].get_title()
    # integer counts over a short range: one bin per count
    patches = plots.iterations_figure(ITERATIONS).axes[0].patches
    assert len(patches) == 30 - 8 + 1
    assert plots.solver_training_figure({"mlp": [{"step": 1, "loss": 1.0}]}) is None
    both = plots.solver_training_figure({"orchestra": _train_log()[::2]})
    assert len(both.axes) == 2
    styles = [line.get_linestyle() for line in both.axes[0].get_lines()]
    assert "-" in styles and "--" in styles


# --------------------------------------------------------------------------- robustness


def test_ood_table(full_report):
    _, html = full_report
    section = _section(html, "Robustness")
    table = _table(section, "ood")
    assert "<th colspan='6'>orchestra</th><th colspan='6'>mlp</th>" in table
    assert table.count("<th>σ̂ follows error</th>") == 2
    heads = re.findall(r"<th scope='row'>([^<]*)</th>", table)
    assert heads == ["in distribution", "nu=0.02", "amplitude=2", "noise×3"]
    cells = [re.sub(r"<[^>]+>", "", c) for c in _cells(_row(table, "nu=0.02"))]
    # orchestra: nRMSE, ratio (4 significant digits), NLL, coverage, σ ratio, follows
    assert cells[:6] == ["0.06173", "1.235", "-0.7654", "0.8877", "1.5", "✓"]
    assert cells[6:] == ["0.2", "2", "2", "0.86", "2.5", "✓"]
    # σ̂ shrinks while the error triples: ✗, in red
    amplitude = _cells(_row(table, "amplitude=2"))
    assert amplitude[5] == "<td class='no'>✗</td>" and amplitude[11] == "<td class='yes'>✓</td>"
    # best per condition: lowest nRMSE and NLL, coverage closest to 0.9
    assert amplitude[0].startswith("<td class='best'><b>") and "<b>" not in amplitude[6]
    assert "<b>0.9001</b>" in amplitude[9] and "<b>" not in amplitude[3]
    # the in-distribution row has no ratios
    assert _row(table, "in distribution").count("—") == 6


def test_ood_skipped_conditions_and_spearman(full_report):
    _, html = full_report
    section = _section(html, "Robustness")
    assert "<li><b>nu=0.001</b>: 3 of 8 trajectories break the maximum principle</li>" in section
    assert "orchestra 0.6123, mlp — (undefined)." in section
    assert "0.612345" not in section


def test_adversarial_table(full_report):
    _, html = full_report
    table = _table(_section(html, "Robustness"), "adversarial")
    heads = re.findall(r"<tr><th scope='row'>([^<]*)</th><th scope='row'>([^<]*)</th>", table)
    assert heads == [("clean", "0"), ("FGSM", "0.01"), ("FGSM", "0.05"), ("PGD", "0.01"),
                     ("PGD", "0.05")]  # fmt: skip
    assert "<th colspan='4'>orchestra</th><th colspan='4'>mlp</th>" in table
    pgd = re.search(r"<th scope='row'>PGD</th><th scope='row'>0.01</th>(.*?)</tr>", table)
    cells = [re.sub(r"<[^>]+>", "", c) for c in _cells(pgd.group(1))]
    assert cells == ["0.08", "1.6", "-0.4", "0.5625", "0.22", "2.2", "0.2", "0.4091"]
    assert "on 256 test samples" in _section(html, "Robustness")


def test_robustness_figures_follow_the_tables(full_report):
    _, html = full_report
    section = _section(html, "Robustness")
    assert re.findall(r"id='fig-(\w+)'", section) == ["ood", "adversarial"]
    assert section.index("<table class='adversarial'>") < section.index("id='fig-ood'")


def test_malformed_robustness_is_skipped(tmp_path):
    metrics = {
        "models": {"orchestra": {"rmse": 0.1}},
        "robustness": {
            "ood": {
                "orchestra": {
                    "in_distribution": None,
                    "conditions": ["nope", {"name": 3}, {"name": "nu=0.02"}, {"nrmse": 1.0}],
                    "skipped": ["nope"],
                    "spearman_std_error": "high",
                },
                "mlp": {"conditions": "nope", "skipped": {"noise×3": None}},
                "persistence": None,
            },
            "adversarial": {
                "orchestra": {
                    "rows": [
                        "x",
                        {"method": "fgsm"},
                        {"eps": 0.1, "nrmse": 0.2},
                        {"method": "pgd", "eps": 0.1},
                        {"method": "pgd", "eps": "big", "nrmse": 0.3},
                    ],
                    "samples": "many",
                },
                "mlp": "nope",
            },
        },
    }
    run = make_run(tmp_path / "run", metrics=metrics)
    html = build_report(run).read_text()
    section = _section(html, "Robustness")
    # rows without fields show dashes; nothing numeric to draw
    assert _row(_table(section, "ood"), "nu=0.02").count("—") == 6
    pgd = re.search(r"<th scope='row'>PGD</th><th scope='row'>0.1</th>(.*?)</tr>", section)
    assert pgd and pgd.group(1).count("—") == 4
    assert section.count("<tr><th scope='row'>") == 2  # nu=0.02 and PGD 0.1 only
    assert "<li><b>noise×3</b> (mlp): —</li>" in section
    assert "Spearman" not in section
    assert "test samples when" not in section
    assert _png_names(html) == 0
    assert not (run / "ood.png").exists() and not (run / "adversarial.png").exists()


@pytest.mark.parametrize("robustness", [None, "nope", [1], {"ood": None, "adversarial": 3}, {}])
def test_robustness_missing_or_not_a_dict(tmp_path, robustness):
    metrics = {"models": {"mlp": {"rmse": 1.0}}, "robustness": robustness}
    html = build_report(make_run(tmp_path / "run", metrics=metrics)).read_text()
    assert "<h2>Robustness</h2>" not in html and "<h2>Equilibrium</h2>" not in html
    assert _png_names(html) == 0


def test_partial_robustness_draws_what_it_has(tmp_path):
    ood = _robustness()["ood"]["mlp"]
    ood["conditions"][0]["nrmse_ratio"] = None  # a hole in the bars
    adversarial = {"rows": [r for r in _robustness()["adversarial"]["mlp"]["rows"]
                            if r["method"] != "fgsm"]}  # fmt: skip
    metrics = {"robustness": {"ood": {"mlp": ood}, "adversarial": {"mlp": adversarial}}}
    run = make_run(tmp_path / "run", metrics=metrics)
    html = build_report(run).read_text()
    assert re.findall(r"id='fig-(\w+)'", html) == ["ood", "adversarial"]
    assert "FGSM" not in _table(html, "adversarial")
    assert "<th colspan='6'>mlp</th>" in html and "orchestra" not in _table(html, "ood")
    for name in ("ood", "adversarial"):
        assert (run / f"{name}.png").read_bytes().startswith(PNG_MAGIC)


def test_robustness_plots_styles():
    from tertulia.report import plots

    curves = {
        "orchestra": {
            "none": ([0.0], [0.05], [0.9]),
            "fgsm": ([0.05, 0.01], [0.2, 0.1], [0.5, 0.7]),
            "pgd": ([0.01, 0.05], [0.12, 0.3], [0.6, 0.3]),
        }
    }
    fig = plots.adversarial_figure(curves)
    err_ax, cov_ax = fig.axes
    lines = {line.get_label(): line for line in err_ax.get_lines()}
    assert lines["orchestra FGSM"].get_linestyle() == "--"
    assert lines["orchestra PGD"].get_linestyle() == "-"
    # from the clean point at ε = 0, sorted by ε
    assert list(lines["orchestra FGSM"].get_xdata()) == [0.0, 0.01, 0.05]
    assert list(lines["orchestra FGSM"].get_ydata()) == [0.05, 0.1, 0.2]
    assert err_ax.get_yscale() == "log"
    cov = {line.get_label(): line for line in cov_ax.get_lines()}
    assert list(cov["orchestra PGD"].get_ydata()) == [0.9, 0.6, 0.3]
    ood = plots.ood_figure(["a", "b"], {"mlp": ([2.0, float("nan")], [1.5, 0.5])})
    assert ood.axes[0].get_yscale() == "log"
    heights = [p.get_height() for p in ood.axes[0].patches]
    assert heights[0] == pytest.approx(1.0) and np.isnan(heights[1])  # bars drawn from 1
