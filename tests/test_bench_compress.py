"""Smoke test of benchmarks/compress.py with a minuscule budget on the shipped MNIST."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .test_data_sequences import MNIST

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compress.py"


def test_compress_benchmark_smoke(capsys):
    spec = importlib.util.spec_from_file_location("bench_compress", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(
        [
            "--json",
            "--dense-steps",
            "5",
            "--finetune-steps",
            "30",
            "--seeds",
            "2",
            "--data-dir",
            str(MNIST),
        ]
    )
    for key in (
        "dense_acc",
        "acc_70",
        "acc_90",
        "bytes_ratio_90_fp16",
        "bytes_ratio_90_int8",
        "torch_prune_acc_90",
    ):
        assert key in res
    assert abs(res["sparsity_90"] - 0.9) < 1e-3 and abs(res["sparsity_70"] - 0.7) < 1e-3
    assert res["bytes_ratio_90_int8"] < res["bytes_ratio_90_fp16"] < res["bytes_ratio_90_fp32"]
    assert '"acc_90"' in capsys.readouterr().out
    assert len(res["acc_90_per_seed"]) == 2
