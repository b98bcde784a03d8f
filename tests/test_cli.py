"""The CLI end to end on tiny recipes, its files, and its answers to bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from tertulia.cli import app

from .conftest import TINY

runner = CliRunner()
CONTRACT = {
    "nrmse_1step",
    "nrmse_rollout",
    "rmse",
    "nll",
    "crps",
    "coverage_50",
    "coverage_90",
    "coverage_95",
    "miscalibration_area",
    "sigma_rel_error",
}


def _sets(extra=()):
    out = []
    for s in [*TINY, *extra]:
        out += ["--set", s]
    return out


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = invoke("run", "burgers", "--out", out, *_sets())
    assert result.exit_code == 0, result.output
    return out


def test_run_writes_the_run_directory(tiny_run):
    for name in (
        "config.yaml",
        "command.txt",
        "metrics.json",
        "report.html",
        "train_log.jsonl",
        "examples.safetensors",
    ):
        assert (tiny_run / name).is_file(), name
    for model in ("orchestra", "mlp"):
        assert (tiny_run / "checkpoint" / model / "latest.json").is_file()
    assert list(tiny_run.glob("*.png"))
    assert "tertulia run burgers" in (tiny_run / "command.txt").read_text()
    assert "d: 8" in (tiny_run / "config.yaml").read_text()


def test_metrics_json_contract(tiny_run):
    m = json.loads((tiny_run / "metrics.json").read_text())
    assert m["recipe"] == "burgers"
    assert set(m["models"]) == {"orchestra", "mlp", "persistence"}
    assert m["params"]["orchestra"] > 0 and m["params"]["persistence"] == 0
    for model, vals in m["models"].items():
        assert CONTRACT <= set(vals), model
        assert all(np.isfinite(v) for v in vals.values())
    orch = m["models"]["orchestra"]
    assert {"rounds_mean", "residual_final", "messages_per_prediction"} <= set(orch)
    # ring of 4 cells: 8 directed edges, d_msg=4 floats, 2 rounds
    assert orch["messages_per_prediction"] == orch["rounds_mean"] * 8 * 4


def test_eval_reproduces_metrics(tiny_run):
    before = json.loads((tiny_run / "metrics.json").read_text())
    result = invoke("eval", tiny_run)
    assert result.exit_code == 0, result.output
    after = json.loads((tiny_run / "metrics.json").read_text())
    for model, vals in before["models"].items():
        for key, v in vals.items():
            assert after["models"][model][key] == pytest.approx(v, rel=1e-6, abs=1e-9)


def test_report_rebuilds(tiny_run):
    (tiny_run / "report.html").unlink()
    result = invoke("report", tiny_run)
    assert result.exit_code == 0, result.output
    html = (tiny_run / "report.html").read_text()
    assert "nrmse_1step" in html and "data:image/png;base64," in html


def test_resume_of_a_finished_run_only_reevaluates(tiny_run):
    result = invoke("run", "--resume", tiny_run)
    assert result.exit_code == 0, result.output
    m = json.loads((tiny_run / "metrics.json").read_text())
    assert m["train"]["orchestra"]["resumed_from"] == m["train"]["orchestra"]["steps"]


def test_recipes_lists_shipped_recipes():
    result = invoke("recipes")
    assert result.exit_code == 0
    for name in ("burgers", "heat", "advection", "smoke"):
        assert name in result.output


@pytest.mark.parametrize("command", [[], ["run"], ["recipes"], ["eval"], ["report"]])
def test_help_everywhere(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _bad_data_file(tmp_path, kind):
    y = np.random.default_rng(0).normal(size=(11, 8, 32)).astype(np.float32)
    if kind == "nan":
        y[2, 3, 4] = np.nan
        return _write_npz(tmp_path / "nan.npz", y=y)
    if kind == "inf":
        y[0, 0, 0] = np.inf
        return _write_npz(tmp_path / "inf.npz", y=y)
    if kind == "empty":
        return _write_npz(tmp_path / "empty.npz", y=y[:0])
    if kind == "nokey":
        return _write_npz(tmp_path / "nokey.npz", z=y)
    if kind == "grid":
        return _write_npz(tmp_path / "grid.npz", y=np.zeros((11, 8, 30), np.float32) + 1)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "args, piece",
    [
        (["run", "burgr"], "unknown recipe 'burgr'"),
        (["run", "missing.yaml"], "does not exist"),
        (["run", "burgers", "--set", "model.dd=4"], "did you mean 'd'"),
        (["run", "burgers", "--set", "train.steps=many"], "train.steps"),
        (["run", "burgers", "--set", "data.grid=30"], "not divisible by model.cells=4"),
        (
            [
                "run",
                "burgers",
                "--set",
                "model.graph.kind=explicit",
                "--set",
                "model.graph.edges=[[0, 4]]",
            ],
            "names cell 4",
        ),
        (["run", "--resume", "{tmp}"], "not a run directory"),
        (["eval", "{tmp}/nowhere"], "does not exist"),
        (["report", "{tmp}"], "no metrics.json"),
        (["run", "burgers", "--set", "data.path={tmp}/none.npz"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, piece):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert piece in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "kind, piece",
    [("nan", "NaN"), ("inf", "Inf"), ("empty", "empty"), ("nokey", "'y'"), ("grid", "grid")],
)
def test_bad_data_files(tmp_path, kind, piece):
    path = _bad_data_file(tmp_path, kind)
    result = invoke("run", "burgers", "--out", tmp_path / "r", *_sets([f"data.path={path}"]))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and piece in result.output, result.output
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_user_data_file_trains(tmp_path):
    from tertulia.config import load_recipe
    from tertulia.data import load_dataset

    data = load_dataset(load_recipe("burgers", TINY).data)
    u = np.concatenate([data[s].u for s in ("train", "val", "test")])
    y = np.concatenate([data[s].y for s in ("train", "val", "test")])
    path = _write_npz(tmp_path / "mine.npz", u=u, y=y)
    result = invoke("run", "burgers", "--out", tmp_path / "r", *_sets([f"data.path={path}"]))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    # no true σ in the file: σ-recovery is not scored rather than scored against zeros
    assert "sigma_rel_error" not in metrics["models"]["orchestra"]
    assert "nrmse_1step" in metrics["models"]["orchestra"]


def test_existing_run_is_never_overwritten(tiny_run):
    before = (tiny_run / "metrics.json").read_bytes()
    result = invoke("run", "burgers", "--out", tiny_run, *_sets())
    assert result.exit_code == 2 and "holds a run" in result.output
    assert (tiny_run / "metrics.json").read_bytes() == before


def test_resume_refuses_changes(tiny_run):
    result = invoke("run", "burgers", "--resume", tiny_run, "--set", "model.d=4")
    assert result.exit_code == 2 and "cannot change a run on --resume" in result.output
    result = invoke("run", "heat", "--resume", tiny_run)
    assert result.exit_code == 2 and "recipe 'burgers'" in result.output


def test_real_process_exit_codes_and_debug(tmp_path):
    bad = [sys.executable, "-m", "tertulia", "run", "burgers", "--set", "model.dd=1"]
    proc = subprocess.run(bad, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    proc = subprocess.run(bad + ["--debug"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_default_out_dir_never_clobbers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        result = invoke("run", "burgers", *_sets(["train.steps=2", "baselines.mlp=false"]))
        assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "burgers" / "metrics.json").is_file()
    assert (tmp_path / "runs" / "burgers-2" / "metrics.json").is_file()


def test_divergence_stops_with_exit_2_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "r"
    result = invoke(
        "run",
        "burgers",
        "--out",
        out,
        *_sets(
            [
                "train.lr=1e30",
                "train.clip=1e30",
                "train.warmup=0",
                "train.steps=40",
                "train.nan_patience=5",
                "train.checkpoint_every=1",
            ]
        ),
    )
    assert result.exit_code == 2, result.output
    assert "diverged" in result.output and "last good checkpoint" in result.output
    from tertulia.train import load_checkpoint

    groups, meta = load_checkpoint(out / "checkpoint" / "orchestra")
    assert all(bool(t.isfinite().all()) for t in groups["model"].values())
    assert not (out / "metrics.json").exists()


def test_ctrl_c_names_the_resume_command(tmp_path):
    import signal
    import time

    out = tmp_path / "r"
    cmd = [
        sys.executable,
        "-X",
        "faulthandler",  # a hang below dumps every thread's stack (SIGABRT)
        "-m",
        "tertulia",
        "run",
        "smoke",
        "--out",
        str(out),
        "--set",
        "train.steps=5000",
        "--set",
        "train.checkpoint_every=10",
        "--set",
        "train.threads=1",
    ]
    # A shell's background job starts with SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: give the child the default disposition, as a terminal would.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    pointer = out / "checkpoint" / "orchestra" / "latest.json"
    deadline = time.time() + 120
    while not pointer.exists() and time.time() < deadline:
        time.sleep(0.01)
    if not pointer.exists():
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"no checkpoint within 120 s; stderr:\n{err[-3000:]}")
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate()
        pytest.fail(f"no exit 60 s after Ctrl-C; stacks:\n{err[-6000:]}")
    assert proc.returncode == 130
    assert f"tertulia run smoke --resume {out}" in err
    assert "Traceback" not in err


def test_show_prints_the_resolved_recipe():
    import yaml

    result = invoke("show", "burgers", "--set", "model.d=32")
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["model"]["d"] == 32 and shown["train"]["steps"] == 5000
    result = invoke("show", "burgers", "--set", "model.q=1")
    assert result.exit_code == 2 and "unknown key 'model.q'" in result.output


def test_load_run_gives_trained_models(tiny_run, tmp_path):
    import torch

    from tertulia import load_run
    from tertulia.errors import RunDirError

    run = load_run(tiny_run)
    assert set(run.models) == {"orchestra", "mlp"} and run.recipe.model.d == 8
    assert run.summaries["orchestra"]["steps"] == 6
    orch = run.models["orchestra"]
    assert not orch.training and float(orch.scale) != 1.0  # the data scale came back
    with torch.no_grad():
        pred = orch(torch.randn(3, 2, 32))
    assert pred.mean.shape == (3, 32) and torch.isfinite(pred.std).all()
    (tmp_path / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    with pytest.raises(RunDirError, match="no checkpoint for orchestra"):
        load_run(tmp_path)
