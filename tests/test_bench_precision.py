"""Smoke test of benchmarks/precision.py with a minuscule budget (one model, 2 steps)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "precision.py"


def test_precision_benchmark_smoke(capsys):
    spec = importlib.util.spec_from_file_location("bench_precision", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tiny = ["data.n_train=4", "data.n_val=2", "data.n_test=2", "data.frames=8", "data.grid=32"]
    sets = [a for s in tiny for a in ("--set", s)]
    res = module.main(
        [
            *sets,
            "--json",
            "--device",
            "cpu",
            "--models",
            "orchestra",
            "--steps",
            "2",
            "--warmup",
            "1",
        ]
    )
    row = res["models"]["orchestra"]
    assert res["runtime"]["device"] == "cpu"
    assert row["throughput_ratio_bf16_vs_fp32"] == (
        row["bf16"]["examples_per_s"] / row["fp32"]["examples_per_s"]
    )
    assert abs(row["bf16"]["loss"] - row["fp32"]["loss"]) < 0.05 * abs(row["fp32"]["loss"]) + 0.05
    assert '"throughput_ratio_bf16_vs_fp32"' in capsys.readouterr().out
