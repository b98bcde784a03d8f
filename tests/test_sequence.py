"""The sequence-classification job end to end on tiny settings."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tertulia.cli import app
from tertulia.config import ConfigError, load_recipe
from tertulia.jobs.sequence import build_sequence_model, load_splits
from tertulia.train.groups import parameter_groups

from .test_data_sequences import MNIST

runner = CliRunner()
TINY = [
    "model.d_model=8",
    "model.d_state=8",
    "model.layers=1",
    "train.steps=12",
    "train.batch_size=16",
    "train.warmup=2",
    "train.checkpoint_every=6",
    "train.log_every=3",
]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _sets(extra=()):
    out = []
    for s in [*TINY, *extra]:
        out += ["--set", s]
    return out


def test_seq_digits_trains_both_inits_and_eval_rescores(tmp_path):
    out = tmp_path / "sd"
    result = invoke("run", "seq-digits", "--out", out, *_sets())
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"s4d_legs", "s4d_random"}
    assert metrics["params"]["s4d_legs"] == metrics["params"]["s4d_random"]  # equal budget
    for scores in metrics["models"].values():
        assert 0.0 <= scores["accuracy"] <= 1.0 and scores["nll"] > 0
    assert (out / "report.html").is_file()
    again = invoke("eval", out)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "metrics.json").read_text())["models"] == metrics["models"]


def test_delay_recall(tmp_path):
    extra = ["data.delay=20", "data.n_train=64", "data.n_test=32", "model.compare_init=none"]
    result = invoke("run", "delay-recall", "--out", tmp_path / "dr", *_sets(extra))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "dr" / "metrics.json").read_text())
    assert list(metrics["models"]) == ["hippo_legs"]
    assert metrics["data"]["steps"] == 22 and metrics["data"]["chance_accuracy"] == 1 / 8


def test_ssm_parameters_get_their_own_learning_rate():
    recipe = load_recipe("seq-digits", ["model.ssm_lr=1e-4", *TINY])
    splits = load_splits(recipe)
    model = build_sequence_model(recipe, 1, 10, "legs")
    groups = parameter_groups(model, 0.01)
    own = [g for g in groups if g.get("lr") == 1e-4]
    assert len(own) == 1 and own[0]["weight_decay"] == 0.0
    assert len(own[0]["params"]) == 3  # log_dt, log(−Re Λ), Im Λ of the one layer
    assert splits["val"].x.shape[1:] == (64, 1)


def test_mnist_rows_need_a_directory():
    with pytest.raises(ConfigError, match="data.path"):
        load_recipe("seq-digits", ["data.kind=mnist"])
    recipe = load_recipe("seq-digits", ["data.kind=mnist", f"data.path={MNIST}"])
    splits = load_splits(recipe)
    assert splits["train"].x.shape[1:] == (28, 28) and len(splits["test"]) == 2000


def test_mamba_stack_trains(tmp_path):
    extra = ["data.delay=20", "data.n_train=64", "data.n_test=32", "model.kind=mamba"]
    result = invoke("run", "delay-recall", "--out", tmp_path / "m", *_sets(extra))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert list(metrics["models"]) == ["mamba"]
