"""Smoke test of benchmarks/seq_mnist.py with a minuscule budget (real MNIST if shipped)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from .test_data_sequences import MNIST

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "seq_mnist.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_seq_mnist", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seq_mnist_smoke(capsys):
    bench = _load()
    res = bench.main(
        [
            "--json",
            "--settings",
            "rows",
            "--steps",
            "3",
            "--n-train",
            "200",
            "--n-test",
            "100",
            "--d-model",
            "8",
            "--d-state",
            "8",
            "--layers",
            "1",
            "--path",
            str(MNIST),
        ]
    )
    for key in ("rows_legs_acc", "rows_random_acc", "rows_legs_minus_random", "config", "runs"):
        assert key in res
    assert {r["init"] for r in res["runs"]} == {"legs", "random"}
    assert all(r["steps"] == 3 and r["n_train"] == 200 for r in res["runs"])
    assert res["runs"][0]["params"] == res["runs"][1]["params"]
    assert '"rows_legs_acc"' in capsys.readouterr().out


def test_seq_mnist_missing_path(tmp_path, capsys):
    bench = _load()
    with pytest.raises(SystemExit) as exc:
        bench.main(["--path", str(tmp_path / "absent")])
    assert exc.value.code == 2
    assert "MNIST directory" in capsys.readouterr().err
