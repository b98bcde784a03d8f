"""Data-parallel throughput: the Burgers recipe's orchestra trained by 1 and by 2 processes.

Both settings train the recipe's orchestra (``tertulia.build``) with the shared
trainer for ``--steps`` steps at the same *global* batch (``train.batch_size``);
with 2 processes each rank computes half of it and DistributedDataParallel
(gloo) averages the gradients. Throughput is training examples per second of
wall time after a ``--warmup`` of steps (process start, data and the first steps
are excluded). On this 2-core machine each process gets one thread, so the ideal
ratio is ≤ 2× and communication and the halved per-rank batch take their share.

The row "1 process, 2 threads" is context: the same two cores used by one process's
intra-op threads instead of two processes.

Usage: ``python benchmarks/ddp.py [--json] [--steps 60] [--warmup 10] [--batch 64]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _train(steps: int, warmup: int, recipe_name: str, batch: int) -> float:
    """Examples per second of the timed steps (this process's view of the global batch)."""
    from tertulia.config import load_recipe
    from tertulia.data import load_dataset
    from tertulia.jobs.forecast import build_models, make_task
    from tertulia.train import Trainer

    recipe = load_recipe(recipe_name, [f"train.batch_size={batch}"])
    splits = load_dataset(recipe.data)
    torch.manual_seed(recipe.seed)
    model = build_models(recipe, splits)["orchestra"]
    task = make_task(recipe, model, splits)
    cfg = recipe.train.model_copy(update={"steps": warmup + steps, "checkpoint_every": 10**9})
    marks: dict[int, float] = {}

    def on_step(step: int, total: int, logs: dict) -> None:
        if step in (warmup, warmup + steps):
            if dist.is_initialized():
                dist.barrier()
            marks[step] = time.perf_counter()

    Trainer(task, cfg, seed=1, on_step=on_step).fit()
    seconds = marks[warmup + steps] - marks[warmup]
    return steps * recipe.train.batch_size / seconds


def _worker(rank: int, world: int, store: str, args: argparse.Namespace, result: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        rate = _train(args.steps, args.warmup, args.recipe, args.batch)
        if rank == 0:
            Path(result).write_text(json.dumps(rate))
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--recipe", default="burgers")
    p.add_argument("--batch", type=int, default=64, help="global batch (the recipe's: 64)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    res: dict[str, Any] = {"recipe": args.recipe, "steps": args.steps, "batch": args.batch}
    res["examples_per_s_1"] = _train(args.steps, args.warmup, args.recipe, args.batch)
    torch.set_num_threads(2)  # context: one process may also use both cores itself
    res["examples_per_s_1_two_threads"] = _train(args.steps, args.warmup, args.recipe, args.batch)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = str(Path(tmp) / "rate.json")
        mp.spawn(_worker, args=(2, str(Path(tmp) / "store"), args, result), nprocs=2, join=True)
        res["examples_per_s_2"] = json.loads(Path(result).read_text())
    res["throughput_ratio_2_vs_1"] = res["examples_per_s_2"] / res["examples_per_s_1"]
    if args.json:
        print(json.dumps(res, indent=2))
        return res
    print(
        f"{args.recipe}: orchestra, global batch {args.batch}, {args.steps} timed steps, "
        "one thread per process"
    )
    print(f"{'setting':<26}{'examples/s':>12}")
    print(f"{'1 process':<26}{res['examples_per_s_1']:>12.1f}")
    print(f"{'2 processes (DDP, gloo)':<26}{res['examples_per_s_2']:>12.1f}")
    print(f"{'1 process, 2 threads':<26}{res['examples_per_s_1_two_threads']:>12.1f}")
    print(f"throughput_ratio_2_vs_1 {res['throughput_ratio_2_vs_1']:.2f}")
    return res


if __name__ == "__main__":
    main()
