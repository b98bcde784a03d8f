"""Batched cell kernel vs the per-cell reference loop, forward + backward.

Both paths compute the same function (tests/test_nn.py holds them equal in
float64); this script measures what stacking the cells' weights into one
kernel buys. Default: n=16 cells, d=64, batch 64, 6 synchronous rounds,
grid 128, window 4.

    python benchmarks/orchestra_speed.py            # table
    python benchmarks/orchestra_speed.py --json     # {"ratio_batched_vs_loop": …, …}
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from tertulia.nn import Orchestra, make_graph
from tertulia.solvers import Unrolled


def build(kernel: str, *, cells: int, d: int, rounds: int, grid: int, window: int) -> Orchestra:
    torch.manual_seed(0)
    return Orchestra(
        grid=grid,
        window=window,
        graph=make_graph("ring", cells),
        d=d,
        kernel=kernel,
        solver=Unrolled(rounds),
    )


def time_fwd_bwd(
    model: Orchestra, x: torch.Tensor, *, repeats: int, warmup: int = 3
) -> list[float]:
    def once() -> None:
        model.zero_grad(set_to_none=True)
        pred = model(x)
        (pred.mean.square().mean() + pred.log_var.mean()).backward()

    for _ in range(warmup):
        once()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cells", type=int, default=16)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--grid", type=int, default=128)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    shape = dict(cells=args.cells, d=args.d, rounds=args.rounds, grid=args.grid, window=args.window)
    batched, loop = build("batched", **shape), build("loop", **shape)
    loop.load_state_dict(batched.state_dict())
    x = torch.randn(args.batch, args.window, args.grid)
    with torch.no_grad():
        gap = (batched(x).mean - loop(x).mean).abs().max().item()
    # interleave to share any drift in machine load fairly
    t_b, t_l = [], []
    for _ in range(2):
        t_b += time_fwd_bwd(batched, x, repeats=args.repeats // 2)
        t_l += time_fwd_bwd(loop, x, repeats=args.repeats // 2)
    mb, ml = statistics.median(t_b), statistics.median(t_l)
    result = {
        "cells": args.cells,
        "d": args.d,
        "batch": args.batch,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "batched_ms": round(mb * 1e3, 3),
        "loop_ms": round(ml * 1e3, 3),
        "ratio_batched_vs_loop": round(ml / mb, 3),
        "max_abs_output_gap": gap,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"orchestra forward+backward, n={args.cells} cells, d={args.d}, batch {args.batch}, "
        f"{args.rounds} rounds, {result['threads']} threads (median of {len(t_b)})"
    )
    print(f"{'kernel':<10}{'ms/step':>10}")
    print(f"{'batched':<10}{result['batched_ms']:>10.2f}")
    print(f"{'loop':<10}{result['loop_ms']:>10.2f}")
    print(
        f"ratio loop/batched: {result['ratio_batched_vs_loop']:.2f}x   (max |output gap| {gap:.1e})"
    )


if __name__ == "__main__":
    main()
