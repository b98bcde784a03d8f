"""Smoke test of benchmarks/ddp.py with a minuscule budget (1 vs 2 gloo processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ddp.py"


def test_ddp_benchmark_smoke():
    # a subprocess: torch.multiprocessing must import the script's worker by its module path
    args = ["--json", "--recipe", "smoke", "--steps", "3", "--warmup", "1", "--batch", "8"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert res["throughput_ratio_2_vs_1"] > 0
    assert res["throughput_ratio_2_vs_1"] == res["examples_per_s_2"] / res["examples_per_s_1"]
