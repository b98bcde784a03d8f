"""Sweeps on Ray Tune (local mode): grid parsing, trials, failed trials reported, summary."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tertulia.cli import app
from tertulia.errors import ConfigError
from tertulia.sweep import parse_grid, trial_sets

from .conftest import TINY


def test_grid_is_crossed_and_repeated_with_seeds():
    grid = parse_grid(["model.d=8,16", "train.lr=1e-3, 3e-3"])
    assert grid == {"model.d": ["8", "16"], "train.lr": ["1e-3", "3e-3"]}
    sets = trial_sets(grid, 2, seed=5)
    assert len(sets) == 8
    assert sets[0] == ["model.d=8", "train.lr=1e-3", "seed=5"]
    assert sets[1] == ["model.d=8", "train.lr=1e-3", "seed=6"]
    with pytest.raises(ConfigError, match="KEY=V1"):
        parse_grid(["model.d"])
    with pytest.raises(ConfigError, match="twice"):
        parse_grid(["model.d=8", "model.d=16"])


def test_a_four_trial_sweep_in_local_mode_writes_the_summary(tmp_path, monkeypatch):
    # a recipe file with the tiny settings; a data file that does not exist fails at run time
    import yaml

    from tertulia.config import load_recipe

    recipe = load_recipe("smoke", TINY)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    out = tmp_path / "sweep"
    result = CliRunner().invoke(
        app,
        [
            "sweep",
            str(path),
            "--grid",
            "data.path=null,/nonexistent/data.npz",
            "--grid",
            "train.lr=1e-3,3e-3",
            "--cpus",
            "2",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "sweep.json").read_text())
    assert len(summary["rows"]) == 4 and summary["failed"] == 2
    ok = [r for r in summary["rows"] if "error" not in r]
    assert all("data.path=null" in r["sets"] for r in ok)
    assert all(0 < r["metric"] < 10 for r in ok)
    assert all("nonexistent" in r["error"] for r in summary["rows"] if "error" in r)
    assert summary["best"]["trial"] in {r["trial"] for r in ok}
    assert (out / "report.html").is_file() and (out / "sweep.png").is_file()
    assert (out / "trial-000" / "metrics.json").is_file()
    bad = CliRunner().invoke(app, ["sweep", str(path), "--grid", "model.nope=1"])
    assert bad.exit_code == 2


def test_a_sweep_whose_every_trial_fails_exits_2_after_writing_its_summary(tmp_path):
    out = tmp_path / "sweep"
    result = CliRunner().invoke(
        app,
        [
            "sweep", "smoke", "--grid", "data.path=/nonexistent/a.npz,/nonexistent/b.npz",
            "--cpus", "2", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "no trial of the sweep finished (2 failed)" in result.output
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["failed"] == 2 and summary["best"] is None


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("models.orchestra.bogus", "write no 'bogus' per model; the keys are: nrmse_1step"),
        ("models.fno.nrmse_1step", "no model 'fno'; its models are: orchestra, mlp, persistence"),
        ("nrmse_1step", "expected models.MODEL.KEY, e.g. models.orchestra.nrmse_1step"),
    ],
)
def test_a_metric_the_trials_do_not_write_is_refused_before_any_trial(tmp_path, metric, expected):
    out = tmp_path / "sweep"
    result = CliRunner().invoke(
        app, ["sweep", "smoke", "--grid", "train.lr=1e-3", "--metric", metric, "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert not out.exists()  # no trial started, nothing written


def test_a_metric_of_a_model_a_grid_point_drops_is_refused(tmp_path):
    result = CliRunner().invoke(
        app,
        ["sweep", "smoke", "--grid", "baselines.mlp=true,false", "--metric", "models.mlp.nll"],
    )
    assert result.exit_code == 2 and "no model 'mlp'" in result.output
