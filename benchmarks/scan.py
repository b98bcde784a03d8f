"""Benchmark of the selective scan: forward + backward on the CPU.

Times (median over repeats, after warm-up) of one forward and one backward
(gradients w.r.t. u, Δ, A, Bm, Cm, Dskip) at B=8, L=1024, D=64, N=16 float32:

* ``fast``        tertulia's default path (numba kernel; chunked if numba is absent)
* ``chunked``     tertulia's pure-PyTorch two-level scan (a rejected candidate)
* ``sequential``  tertulia's reference loop over t
* ``mambapy``     mambapy's parallel-scan selective scan (materialise deltaA and
                  BX (B, L, D, N), ``mambapy.pscan.pscan``, y = hs @ C + D u);
                  null if mambapy does not import

Memory floor: the scan must at least read u, Δ, Bm, Cm and write y (forward),
then read u, Δ, Bm, Cm, dy and write du, dΔ, dBm, dCm (backward): E elements.
The floor is the time of ``x * 1.0001`` (out of place, float32) on a flat
tensor of E/2 elements — it reads and writes E/2, i.e. moves the same bytes.
``ratio_to_memory_floor`` = fast / floor.

Usage: ``python benchmarks/scan.py [--json] [--threads 2] [--repeats 10]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from tertulia.nn.scan import _numba_available, _scan_chunked, selective_scan


def _inputs(b: int, l: int, d: int, n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(b, l, d, generator=g)
    delta = torch.nn.functional.softplus(torch.randn(b, l, d, generator=g) - 2.0)
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)
    Bm = torch.randn(b, l, n, generator=g)
    Cm = torch.randn(b, l, n, generator=g)
    Ds = torch.ones(d)
    return [x.requires_grad_() for x in (u, delta, A, Bm, Cm, Ds)]


def _time(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def _mambapy_scan() -> Callable[..., torch.Tensor] | None:
    try:
        from mambapy.pscan import pscan
    except Exception:
        return None

    def scan(u, delta, A, Bm, Cm, Ds):  # type: ignore[no-untyped-def]
        deltaA = torch.exp(delta.unsqueeze(-1) * A)
        BX = delta.unsqueeze(-1) * Bm.unsqueeze(2) * u.unsqueeze(-1)
        hs = pscan(deltaA, BX)
        return (hs @ Cm.unsqueeze(-1)).squeeze(3) + Ds * u

    return scan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("-B", type=int, default=8)
    p.add_argument("-L", type=int, default=1024)
    p.add_argument("-D", type=int, default=64)
    p.add_argument("-N", type=int, default=16)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    xs = _inputs(a.B, a.L, a.D, a.N)
    gy = torch.randn(a.B, a.L, a.D)

    def run(f: Callable[..., torch.Tensor]) -> Callable[[], object]:
        return lambda: torch.autograd.grad(f(*xs), xs, gy)

    t0 = time.perf_counter()
    run(selective_scan)()  # first call: JIT compile (or load from the disk cache)
    first_call_s = time.perf_counter() - t0

    def chunked(u, delta, A, Bm, Cm, Ds):  # type: ignore[no-untyped-def]
        return _scan_chunked(u, delta, A, Bm, Cm) + Ds * u

    res: dict[str, object] = {
        "shape": {"B": a.B, "L": a.L, "D": a.D, "N": a.N},
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
        "fast_impl": "numba" if _numba_available() else "chunked",
        "first_call_incl_jit_s": round(first_call_s, 3),
    }
    ms = {
        "fast": _time(run(selective_scan), a.repeats, a.warmup),
        "chunked": _time(run(chunked), max(3, a.repeats // 3), 1),
        "sequential": _time(
            run(lambda *x: selective_scan(*x, impl="sequential")), max(3, a.repeats // 3), 1
        ),
    }
    mp = _mambapy_scan()
    ms["mambapy"] = None if mp is None else _time(run(mp), max(3, a.repeats // 2), 1)
    if mp is None:
        res["mambapy_note"] = "mambapy not importable: mambapy timing is null"
    # fwd reads u, Δ, Bm, Cm, writes y: 3BLD + 2BLN; bwd reads u, Δ, dy, Bm, Cm,
    # writes du, dΔ, dBm, dCm: 5BLD + 4BLN
    e = a.B * a.L * (8 * a.D + 6 * a.N)
    big = torch.randn(e // 2)
    ms["memory_floor"] = _time(lambda: big * 1.0001, 50, 5)
    res["memory_floor_def"] = (
        "x*1.0001 out of place on E/2 float32 elements, E = elements read+written by "
        "fwd (u,delta,Bm,Cm -> y) + bwd (u,delta,Bm,Cm,dy -> du,ddelta,dBm,dCm)"
    )
    res["ms"] = {k: None if v is None else round(v, 3) for k, v in ms.items()}
    res["speedup_vs_sequential"] = round(ms["sequential"] / ms["fast"], 2)
    res["speedup_vs_chunked"] = round(ms["chunked"] / ms["fast"], 2)
    res["speedup_vs_mambapy"] = (
        None if ms["mambapy"] is None else round(ms["mambapy"] / ms["fast"], 2)
    )
    res["ratio_to_memory_floor"] = round(ms["fast"] / ms["memory_floor"], 2)
    if a.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:>24}: {v}")


if __name__ == "__main__":
    main()
