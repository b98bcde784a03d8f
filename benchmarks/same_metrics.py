"""Behaviour check for refactors: tiny runs of every job, their metrics.json compared.

``python benchmarks/same_metrics.py snapshot FILE`` runs a tiny version of every
job (forecast, DEQ forecast, island, series, sequence, compress-mnist, velora,
continual, lm, recall), then ``eval`` and ``compress`` on a forecast run, through
the real CLI, and writes every ``metrics.json`` (minus wall-clock timings) to
FILE. ``python benchmarks/same_metrics.py compare BEFORE AFTER`` prints one line
per run and exits 1 when any number differs.

Run ``snapshot`` on the commit before a refactor and on the one after it: a
behaviour-preserving change prints ``identical`` for every run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

FORECAST_TINY = [
    "data.grid=32", "data.frames=8", "data.n_train=6", "data.n_val=2", "data.n_test=3",
    "data.window=2", "model.d=8", "model.d_msg=4", "model.d_key=4", "model.rounds=2",
    "model.halo=1", "train.steps=6", "train.batch_size=8", "train.warmup=2",
    "train.checkpoint_every=3", "train.log_every=2", "eval.rollout_steps=3",
    "eval.ood.n=2", "eval.ood.nu=[0.1]", "eval.adversarial.samples=16",
    "eval.adversarial.pgd_steps=2", "eval.rho_iters=5",
]  # fmt: skip
SEQUENCE_TINY = [
    "model.d_model=8", "model.d_state=8", "model.layers=1", "train.steps=12",
    "train.batch_size=16", "train.warmup=2", "train.checkpoint_every=6", "train.log_every=3",
]  # fmt: skip
VELORA_TINY = [
    "data.n_math=240", "data.n_language=240", "data.n_extrapolation=40", "math.d_model=16",
    "math.layers=1", "math.d_state=8", "language.d_model=16", "language.layers=1",
    "language.d_state=8", "router.d_model=8", "math.train.steps=8", "language.train.steps=8",
    "phase2.steps=8", "finetune.train.steps=8", "math.train.checkpoint_every=4",
    "language.train.checkpoint_every=4", "phase2.checkpoint_every=4",
    "finetune.train.checkpoint_every=4",
    "finetune.schedule=[{groups: [router, fusion], start: 0}, "
    "{groups: [math.heads, language.head], start: 4, lr_mult: 0.5}]",
    "explain=4",
]  # fmt: skip

# (run name, recipe, --set assignments)
RUNS: list[tuple[str, str, list[str]]] = [
    ("burgers", "burgers", FORECAST_TINY),
    ("burgers-deq", "burgers-deq", FORECAST_TINY),
    ("island", "island", ["island.steps=200"]),
    ("nile", "nile", []),
    ("lynx", "lynx", ["models.em_iters=15"]),
    ("seq-digits", "seq-digits", SEQUENCE_TINY),
    ("compress-mnist", "compress-mnist",
     ["train.steps=40", "compress.finetune_steps=30", "compress.sparsities=[0.0, 0.7]"]),
    ("velora", "velora", VELORA_TINY),
    ("continual", "continual",
     ["data.grid=16", "data.frames=8", "data.n_train=4", "data.n_test=2", "data.window=2",
      "nus=[0.2, 0.05]", "model.d=8", "model.hidden=8", "train.steps=8", "eval_every=4"]),
    ("hope-lm", "hope-lm",
     ["models={transformer: {d: 16, layers: 1, heads: 2}, mamba: {d: 16, layers: 1}, "
      "hope: {d: 16, layers: 1, periods: [1, 2], chunk: 4}}", "train.steps=6",
      "data.context=32"]),
    ("recall", "recall",
     ["models={sliding_attention: {d: 16, layers: 1, heads: 2}}", "data.window=8",
      "data.n_test=20", "train.steps=4"]),
]  # fmt: skip

# wall-clock numbers differ between any two runs; everything else must not
TIMING = re.compile(r"(seconds|_ms$|^ms_|per_s|_per_second|throughput|latency|wall)")


# every snapshot runs in its own temporary folder: paths inside it are compared without it
TMP_PATH = re.compile(re.escape(tempfile.gettempdir()) + r"/tmp[^/]+")


def strip_timings(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip_timings(v) for k, v in obj.items() if not TIMING.search(str(k))}
    if isinstance(obj, list):
        return [strip_timings(v) for v in obj]
    if isinstance(obj, str):
        return TMP_PATH.sub("$TMP", obj)
    return obj


def tertulia(*args: str, env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "tertulia", *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-2000:]}")


def snapshot(path: Path) -> None:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TERTULIA_CACHE": str(Path(tmp) / "cache")}
        for name, recipe, sets in RUNS:
            out = Path(tmp) / name
            args = ["run", recipe, "--out", str(out)]
            for s in sets:
                args += ["--set", s]
            tertulia(*args, env=env)
            results[name] = json.loads((out / "metrics.json").read_text())
            print(f"ran {name}", flush=True)
        burgers = Path(tmp) / "burgers"
        tertulia("eval", str(burgers), env=env)
        results["burgers eval"] = json.loads((burgers / "metrics.json").read_text())
        comp = Path(tmp) / "burgers-compressed"
        tertulia("compress", str(burgers), "--sparsity", "0.5", "--finetune-steps", "4",
                 "--out", str(comp), env=env)  # fmt: skip
        results["burgers compress"] = json.loads((comp / "metrics.json").read_text())
        print("ran eval and compress", flush=True)
    path.write_text(json.dumps(strip_timings(results), indent=1, sort_keys=True))


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}.{k}: only in one" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += differences(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} items"]
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += differences(x, y, f"{where}[{i}]")
        return out
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def compare(before: Path, after: Path) -> int:
    a = strip_timings(json.loads(before.read_text()))
    b = strip_timings(json.loads(after.read_text()))
    bad = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"{name:18s} missing in {'before' if name not in a else 'after'}")
            bad += 1
            continue
        diff = differences(a[name], b[name])
        print(f"{name:18s} {'identical' if not diff else f'{len(diff)} differences'}")
        for line in diff[:10]:
            print("    " + line)
        bad += bool(diff)
    return 1 if bad else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("snapshot", help="run every job tiny, write their metrics")
    s.add_argument("file", type=Path)
    c = sub.add_parser("compare", help="compare two snapshots")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.cmd == "snapshot":
        snapshot(args.file)
    else:
        raise SystemExit(compare(args.before, args.after))


if __name__ == "__main__":
    main()
