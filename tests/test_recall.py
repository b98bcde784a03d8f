"""Associative recall at a distance: the data's geometry and the sliding-attention baseline."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tertulia.cli import app
from tertulia.data.recall import RecallVocab, recall_set
from tertulia.errors import DataError


@pytest.mark.parametrize("distance", [8, 20, 57])
def test_the_queried_value_sits_exactly_at_its_distance(distance):
    v = RecallVocab(keys=6, values=5, fillers=3)
    data = recall_set(40, distance=distance, pairs=4, vocab=v, seed=3)
    last = data.tokens.shape[1] - 1
    assert (data.tokens[:, -2] == v.query).all()
    for s in range(len(data)):
        row = data.tokens[s]
        key = int(row[-1])
        pos = int((row[:-1] == key).nonzero()[0])  # the key's one appearance before the query
        assert int(row[pos + 1]) == int(data.label[s])  # its value follows it
        assert last - (pos + 1) == distance
        keys = row[:-2][row[:-2] < v.keys]
        assert len(keys) == 4 and len(set(keys.tolist())) == 4  # distinct keys, shown once
        assert ((row >= v.keys + v.values) & (row < v.query)).sum() == row.numel() - 10


def test_bad_recall_settings_are_clear_errors():
    with pytest.raises(DataError, match="distance"):
        recall_set(2, distance=3, pairs=4)
    with pytest.raises(DataError, match="pairs"):
        recall_set(2, distance=40, pairs=40)


def test_recall_run_with_sliding_attention_fills_the_contract(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "run",
            "recall",
            "--out",
            str(tmp_path / "r"),
            "--set",
            "models={sliding_attention: {d: 16, layers: 1, heads: 2}}",
            "--set",
            "data.window=8",
            "--set",
            "data.n_test=20",
            "--set",
            "train.steps=4",
        ],
    )
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    row = m["models"]["sliding_attention"]
    assert 0.0 <= row["accuracy_4x"] <= 1.0
    assert set(row["accuracy"]) == {"1.0", "2.0", "4.0"}
    assert m["data"]["distances"]["4.0"] == 32
    torch.testing.assert_close(torch.tensor(m["data"]["chance_accuracy"]), torch.tensor(1 / 16))
    assert (tmp_path / "r" / "recall_distance.png").is_file()
