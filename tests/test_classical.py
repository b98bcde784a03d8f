"""The classical recipes end to end: island, nile, lynx (run directory, contract, report)."""

from __future__ import annotations

import json
import math

import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from tertulia import jobs
from tertulia.cli import app
from tertulia.config import ConfigError, IslandRecipe, SeriesRecipe, load_recipe
from tertulia.errors import RunDirError

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def island_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "island"
    result = invoke("run", "island", "--out", out, "--set", "island.steps=200")
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def nile_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "nile"
    result = invoke("run", "nile", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_island_eigenvalues_are_the_analytic_ones(island_run):
    out, printed = island_run
    metrics = json.loads((out / "metrics.json").read_text())
    # tr A = 0.45, det A = 0.375: λ = 0.225 ± i √(0.375 − 0.45²/4)
    im = math.sqrt(0.375 - 0.45**2 / 4)
    modes = sorted(metrics["open_loop_modes"], key=lambda m: -m["imag"])
    assert [(m["real"], m["imag"]) for m in modes] == [
        pytest.approx((0.225, im), abs=1e-12),
        pytest.approx((0.225, -im), abs=1e-12),
    ]
    assert modes[0]["period"] == pytest.approx(2 * math.pi / im, rel=1e-12)
    assert modes[0]["kind"] == "growing oscillation"
    assert "0.2250 +0.5695i" in printed
    assert metrics["stability"] == {"open_loop": "unstable", "closed_loop": "stable"}
    assert all(m["real"] < 0 for m in metrics["closed_loop_modes"])


def test_island_diverges_free_and_converges_under_lqr(island_run):
    out, _ = island_run
    models = json.loads((out / "metrics.json").read_text())["models"]
    assert models["free"]["final_over_start"] > 20  # 200 steps of dt 0.1: e^{0.225·20} ≈ 90
    assert models["lqr"]["final_over_start"] < 0.3
    assert models["lqg"]["final_over_start"] < 0.5  # acting on the Kalman estimate
    # the filter beats inverting the sensors one step at a time, the smoother beats the filter
    for state in ("fish", "pelicans"):
        key = f"rmse_{state}"
        assert models["smoother"][key] < models["filter"][key] < models["lstsq"][key]
    assert 0.75 < models["filter"]["coverage_90"] <= 1.0


def test_island_report_has_its_figures(island_run):
    out, _ = island_run
    page = (out / "report.html").read_text()
    for name in ("control", "kalman", "eigenvalues"):
        assert (out / f"{name}.png").is_file()
        assert f"fig-{name}" in page
    ex = load_file(str(out / "examples.safetensors"))
    assert ex["free.states"].shape == (200, 2) and ex["sensors"].shape == (200, 4)


def test_nile_contract_and_reference_values(nile_run):
    metrics = json.loads((nile_run / "metrics.json").read_text())
    ll = metrics["models"]["local_level"]
    for key in ("sigma2_eps", "sigma2_eta", "loglik", "fit_seconds"):
        assert isinstance(ll[key], float), key
    assert ll["sigma2_eps"] == pytest.approx(15098.5, rel=1e-3)
    assert ll["sigma2_eta"] == pytest.approx(1469.2, rel=1e-3)
    assert ll["loglik"] == pytest.approx(-632.5456, abs=0.01)
    assert ll["loglik_filter"] == pytest.approx(ll["loglik"], abs=1e-6)
    assert ll["ljung_box_p"] > 0.05  # D&K: the local level leaves white residuals
    ex = load_file(str(nile_run / "examples.safetensors"))
    assert ex["local_level.smoothed.mean"].shape == (100,)
    assert ex["local_level.forecast.mean"].shape == (10,)
    lo, hi = ex["local_level.forecast.lo"], ex["local_level.forecast.hi"]
    assert ((hi - lo)[1:] > (hi - lo)[:-1]).all()  # forecast bands widen
    for name in ("series", "diagnostics"):
        assert (nile_run / f"{name}.png").is_file()


def test_eval_refits_a_classical_run(nile_run):
    before = json.loads((nile_run / "metrics.json").read_text())["models"]["local_level"]
    result = invoke("eval", nile_run)
    assert result.exit_code == 0, result.output
    after = json.loads((nile_run / "metrics.json").read_text())["models"]["local_level"]
    assert after["sigma2_eps"] == pytest.approx(before["sigma2_eps"], rel=1e-12)
    with pytest.raises(RunDirError, match="no trained models"):
        jobs.load_run(nile_run)


def test_nile_with_missing_values(tmp_path):
    out = tmp_path / "gaps"
    result = invoke("run", "nile", "--out", out, "--set", "data.missing=[20, 21, 22, 60]")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["observed"] == 96
    ex = load_file(str(out / "examples.safetensors"))
    assert math.isnan(float(ex["y"][21])) and math.isfinite(
        float(ex["local_level.smoothed.mean"][21])
    )


def test_lynx_finds_the_ten_year_cycle(tmp_path):
    out = tmp_path / "lynx"
    result = invoke("run", "lynx", "--out", out, "--set", "models.em_iters=15")
    assert result.exit_code == 0, result.output
    models = json.loads((out / "metrics.json").read_text())["models"]
    assert 8.0 < models["n4sid"]["period"] < 11.5
    assert 8.0 < models["em"]["period"] < 11.5
    assert models["em"]["loglik_never_decreased"] == 1.0
    assert models["em"]["loglik"] >= models["n4sid"]["loglik"] - 1e-6  # EM refines N4SID


def test_classical_recipes_validate():
    assert isinstance(load_recipe("island"), IslandRecipe)
    assert isinstance(load_recipe("nile"), SeriesRecipe)
    with pytest.raises(ConfigError, match="unknown key 'island.stepz'"):
        load_recipe("island", ["island.stepz=3"])
    with pytest.raises(ConfigError, match="4 positive"):
        load_recipe("island", ["island.sensor_noise=[0.1]"])
    with pytest.raises(ConfigError, match="data.path"):
        load_recipe("nile", ["data.source=csv"])
    with pytest.raises(ConfigError, match="model.d must be even"):
        load_recipe("burgers", ["model.cell=kalman", "model.d=33"])


@pytest.mark.parametrize(
    "sets, piece",
    [
        (["data.name=Nilee"], "no item 'Nilee'"),
        (["data.source=csv", "data.path=/no/such.csv"], "does not exist"),
        (["data.missing=[999]"], "outside the series"),
    ],
)
def test_bad_series_input_is_one_line_exit_2(tmp_path, sets, piece):
    args = ["run", "nile", "--out", tmp_path / "x"]
    for s in sets:
        args += ["--set", s]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert piece in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()  # bad data fails before anything is written
