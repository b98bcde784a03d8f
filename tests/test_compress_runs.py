"""``tertulia compress`` on every kind of run, and the ``compress-mnist`` recipe."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tertulia.cli import app
from tertulia.compress import load_compressed
from tertulia.config import load_recipe
from tertulia.data.sequences import read_mnist_dir
from tertulia.jobs.sequence import build_sequence_model, load_splits
from tertulia.nn.mlp import MLPClassifier

from .test_data_sequences import MNIST
from .test_velora import _sets as velora_sets

runner = CliRunner()
FAST = ["--set", "train.steps=40", "--set", "compress.finetune_steps=30"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_the_seeds_mlp_has_its_parameter_count_and_dropout_place():
    model = MLPClassifier(784, 10, (128, 64), dropout=0.3)
    assert sum(p.numel() for p in model.parameters()) == 109_386
    kinds = [type(m).__name__ for m in model.net]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Linear"]
    assert model(torch.zeros(3, 28, 28)).shape == (3, 10)


def test_compress_mnist_on_the_embedded_digits_prunes_stores_and_reports(tmp_path):
    run = tmp_path / "cm"
    result = invoke(
        "run", "compress-mnist", "--out", run, *FAST, "--set", "compress.sparsities=[0.0, 0.7]"
    )
    assert result.exit_code == 0, result.output
    assert "compression" in result.output
    m = json.loads((run / "metrics.json").read_text())
    assert m["params"]["mlp"] == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    entry = m["compression"]["mlp"]
    assert [r["target"] for r in entry["rows"]] == [0.0, 0.7]
    zero, seventy = entry["rows"]
    assert zero["nonzero"] == entry["dense"]["nonzero"]
    assert seventy["sparsity"] == pytest.approx(0.7, abs=0.005)
    assert seventy["bytes"] < 0.3 * entry["dense"]["bytes"]  # fp16 values + a bitmask
    # the stored file is what was judged: reload it and score it again
    recipe = load_recipe(run / "config.yaml")
    splits = load_splits(recipe)
    model = build_sequence_model(recipe, 1, 10, "legs", steps=64)
    model.load_state_dict(
        load_compressed(run / "checkpoint" / "compressed" / "mlp.s70.safetensors")
    )
    model.eval()
    with torch.no_grad():
        acc = float((model(splits["test"].x).argmax(-1) == splits["test"].y).float().mean())
    assert acc == pytest.approx(seventy["metric"])
    html = (run / "report.html").read_text()
    assert "Compression" in html and (run / "hist_mlp.png").is_file()


def test_compress_mnist_reads_real_mnist_from_data_dir(tmp_path):
    run = tmp_path / "mn"
    result = invoke(
        "run",
        "compress-mnist",
        "--data-dir",
        MNIST,
        "--out",
        run,
        "--set",
        "train.steps=20",
        "--set",
        "compress.sparsities=[0.9]",
        "--set",
        "compress.finetune_steps=10",
    )
    assert result.exit_code == 0, result.output
    m = json.loads((run / "metrics.json").read_text())
    assert m["params"]["mlp"] == 109_386  # the seed's 784-128-Dropout(0.3)-64-10
    assert m["data"]["n_test"] == 2000
    assert "--data-dir" in (run / "command.txt").read_text()
    assert m["compression"]["mlp"]["rows"][0]["bytes_ratio"] < 0.15


def test_data_dir_is_refused_where_it_has_no_meaning(tmp_path):
    result = invoke("run", "burgers", "--data-dir", tmp_path, "--out", tmp_path / "r")
    assert result.exit_code == 2 and "--data-dir" in result.output
    result = invoke("run", "compress-mnist", "--data-dir", tmp_path / "nope")
    assert result.exit_code == 2 and "not a directory" in result.output
    assert not (tmp_path / "r").exists()


def _idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_a_full_mnist_directory_uses_the_official_split(tmp_path):
    rng = np.random.default_rng(0)
    _idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (30, 28, 28)))
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 30))
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (12, 28, 28)))
    _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 12))
    splits = read_mnist_dir(tmp_path)
    assert len(splits["train"]) == 30 and len(splits["test"]) == 12
    assert splits["train"].x.shape == (30, 28, 28)


def test_compress_command_on_a_sequence_run(tmp_path):
    run = tmp_path / "seq"
    sets = ["--set", "train.steps=30", "--set", "compress.sparsities=[]"]
    assert invoke("run", "compress-mnist", "--out", run, *sets).exit_code == 0
    out = tmp_path / "seq-small"
    result = invoke("compress", run, "--sparsity", "0.5", "--finetune-steps", "10", "--out", out)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["main"] == "mlp" and m["metric"] == "accuracy"
    assert m["compressed"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert 0.0 <= m["compressed"]["metric"] <= 1.0
    assert "accuracy" in (out / "report.html").read_text()
    bad = invoke("compress", run, "--model", "nope", "--out", tmp_path / "x")
    assert bad.exit_code == 2 and "mlp" in bad.output and "nope" in bad.output


def test_compress_command_on_a_velora_run(tmp_path):
    run = tmp_path / "v"
    assert invoke("run", "velora", "--out", run, *velora_sets()).exit_code == 0
    out = tmp_path / "v-small"
    result = invoke("compress", run, "--sparsity", "0.6", "--finetune-steps", "4", "--out", out)
    assert result.exit_code == 0, result.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["main"] == "velora" and m["metric"] == "mixed_score"
    assert m["compressed"]["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert 0.0 <= m["compressed"]["metric"] <= 1.0


def test_compress_command_refuses_runs_without_networks(tmp_path):
    run = tmp_path / "nile"
    assert invoke("run", "nile", "--out", run).exit_code == 0
    result = invoke("compress", run, "--out", tmp_path / "x")
    assert result.exit_code == 2 and "no trained network" in result.output
    assert not (tmp_path / "x").exists()
