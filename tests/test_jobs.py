"""The job registry: every recipe task has a job, and every job's run evaluates and loads.

``eval`` re-judges a run from its checkpoints without training (the same numbers
as the run itself), and :func:`tertulia.load_run` gives back the trained models
of every job that trains networks.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tertulia import jobs, load_run
from tertulia.cli import app
from tertulia.config import load_recipe, shipped_recipes
from tertulia.errors import ConfigError, RunDirError

runner = CliRunner()

LM = [
    "models={transformer: {d: 16, layers: 1, heads: 2}, hope: {d: 16, layers: 1, "
    "periods: [1, 2], chunk: 4}}",
    "train.steps=6",
    "data.context=32",
]
RECALL = [
    "models={sliding_attention: {d: 16, layers: 1, heads: 2}}",
    "data.window=8",
    "data.n_test=20",
    "train.steps=4",
]
CONTINUAL = [
    "data.grid=16", "data.frames=8", "data.n_train=4", "data.n_test=2", "data.window=2",
    "nus=[0.2, 0.05]", "model.d=8", "model.hidden=8", "train.steps=8", "eval_every=4",
]  # fmt: skip
SEQUENCE = [
    "model.d_model=8", "model.d_state=8", "model.layers=1", "train.steps=6",
    "train.batch_size=16", "train.checkpoint_every=3",
]  # fmt: skip


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def run(recipe, out, sets):
    args = ["run", recipe, "--out", out]
    for s in sets:
        args += ["--set", s]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


def test_every_shipped_recipe_has_a_job():
    for name in shipped_recipes():
        recipe = load_recipe(name)
        assert recipe.task in jobs.job_for(recipe).tasks


def test_a_phase_on_a_single_phase_recipe_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="staged recipes"):
        jobs.run(load_recipe("smoke"), tmp_path / "x", phase="router")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("recipe", "sets", "key"),
    [
        ("hope-lm", LM, "bpc"),
        ("recall", RECALL, "accuracy_4x"),
        ("seq-digits", SEQUENCE, "accuracy"),
    ],
    ids=["lm", "recall", "sequence"],
)
def test_eval_rejudges_a_run_and_load_run_gives_its_models(tmp_path, recipe, sets, key):
    out = tmp_path / "r"
    before = run(recipe, out, sets)
    log = (out / "train_log.jsonl").read_text()
    result = invoke("eval", out)
    assert result.exit_code == 0, result.output
    after = json.loads((out / "metrics.json").read_text())
    for name, row in before["models"].items():
        assert after["models"][name][key] == pytest.approx(row[key], rel=1e-6, abs=1e-9)
        assert after["train"][name]["steps"] == before["train"][name]["steps"]
    assert (out / "train_log.jsonl").read_text() == log  # nothing was trained
    loaded = load_run(out)
    assert set(loaded.models) == set(before["models"])
    for name, model in loaded.models.items():
        assert not model.training
        assert loaded.summaries[name]["steps"] == before["train"][name]["steps"]


def test_a_continual_run_keeps_its_final_networks_and_eval_rejudges_them(tmp_path):
    out = tmp_path / "c"
    before = run("continual", out, CONTINUAL)
    loaded = load_run(out)
    assert set(loaded.models) == set(before["models"])
    x = torch.randn(3, 2, 16)
    assert loaded.models["cms"](x).shape == (3, 16)
    result = invoke("eval", out)
    assert result.exit_code == 0, result.output
    after = json.loads((out / "metrics.json").read_text())
    for name, row in before["models"].items():
        for got, want in zip(after["models"][name]["R"], row["R"], strict=True):
            assert got == pytest.approx(want, rel=1e-6)
        assert after["models"][name]["forgetting"] == pytest.approx(row["forgetting"], rel=1e-5)


def test_a_sequence_run_exports_to_onnx_and_an_unexportable_model_is_one_line(tmp_path):
    out = tmp_path / "m"
    run("compress-mnist", out, ["train.steps=4", "compress.sparsities=[]"])
    result = invoke("export", out, "--onnx")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (out / "onnx").glob("*.onnx")] == ["mlp.onnx"]
    s4d = tmp_path / "s"
    run("seq-digits", s4d, SEQUENCE)  # complex-valued S4D kernels: no ONNX operator
    result = invoke("export", s4d, "--onnx")
    assert result.exit_code == 2 and "cannot be exported to ONNX" in result.output
    assert "Traceback" not in result.output


def test_a_classical_run_has_no_models_to_load_and_says_so(tmp_path):
    out = tmp_path / "n"
    run("nile", out, [])
    with pytest.raises(RunDirError, match="fitted parameters are in metrics.json"):
        load_run(out)
    assert invoke("eval", out).exit_code == 0  # fitted again in place
