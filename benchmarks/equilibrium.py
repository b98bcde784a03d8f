"""Equilibrium training on the Burgers recipe: DEQ vs BPTT, solvers, contractivity.

Every training runs in its own process (``--worker``), so its peak resident
memory is its own. The parent then loads the trained orchestras and measures:

1. ``deq_nrmse_over_bptt`` and ``deq_memory_over_bptt``: test nRMSE and peak
   training memory of DEQ (implicit backward) over unrolled BPTT at R rounds.
   Memory is the peak of malloc's bytes in use during training minus their
   level just before training (model and data built, code warmed up on a batch
   of 2), sampled every half millisecond; the resident-set growth is printed
   too, but free heap pages left by data loading hide activations from it. The
   autograd activation bytes per step (``SavedTensorMeter``) are printed beside.
2. ``anderson_iters_over_picard``: on the trained DEQ model, mean per-sample
   iterations to relative residual 1e-4 (Broyden printed too).
3. ``time_over_torchdeq``: the same map F from the same start solved by our
   Anderson and by torchdeq's (same memory m, ridge λ, mixing 1, stop on the
   max over the batch of ‖F(x) − x‖/‖F(x)‖ < 1e-4), median wall time; and the
   largest relative difference between the two fixed points.
4. ``rho_below_1_fraction``: with spectral normalisation on, the fraction of
   test samples whose contraction factor ρ = ‖∂F/∂S‖₂ at S* is below 1.
5. ``jacreg_iters_reduction``: 1 − (mean forward iterations with the Jacobian
   regulariser) / (without), on the test split.
6. The cheaper backward modes against BPTT: phantom gradients (5 damped
   rounds from S*) and truncated backprop through the last round only (TRM's
   1-step gradient): ``phantom_nrmse_over_bptt``, ``truncated1_nrmse_over_bptt``.

Usage::

    python benchmarks/equilibrium.py [--steps 5000] [--rounds 16] [--json]

Needs the ``bench`` extra (torchdeq) for item 3; without it that row is
reported as missing.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch.nn.utils import parametrize

from tertulia import build
from tertulia.config import load_recipe
from tertulia.data import load_dataset
from tertulia.jobs.forecast import build_models, check_splits, make_task
from tertulia.solvers import SolverSpec
from tertulia.train import Trainer, load_checkpoint
from tertulia.train.tasks import Split

TOL = 1e-4
COMMON = [
    "model.skip=input",
    "baselines.mlp=false",
    "eval.ood.enabled=false",
    "eval.adversarial.enabled=false",
]


def runs(rounds: int, bound: float, jac: float) -> dict[str, list[str]]:
    """The trainings: same cells (skip=input), differing in how they are trained."""
    deq = ["train.mode=deq", "model.rounds=40", f"model.tol={TOL}"]
    return {
        "bptt": ["train.mode=bptt", f"model.rounds={rounds}", "model.tol=0"],
        "deq": deq,
        "deq_sn": [*deq, f"model.spectral_norm={bound}"],
        "deq_jacreg": [*deq, f"train.jac_reg={jac}"],
        # the backward mode matters (TRM's 1-step gradient finding): measure the cheap ones too
        "deq_phantom": [*deq, "train.deq.backward=phantom"],
        "truncated1": ["train.mode=truncated", f"model.rounds={rounds}", "train.grad_rounds=1"],
    }


# ---------------------------------------------------------------------- worker


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = _MallInfo2


def heap_bytes() -> int:
    """Bytes malloc has handed out and not taken back (heap in use + mmapped chunks).

    Unlike the resident set size this is not hidden by free heap pages left
    over from earlier work (data loading), so it shows activations as they
    come and go. CPU tensors are allocated with malloc.
    """
    info = _libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


class PeakMemory:
    """Samples heap-in-use and resident size in a thread while training runs."""

    def __init__(self, period: float = 0.0005):
        self.period, self._stop = period, threading.Event()

    def __enter__(self) -> PeakMemory:
        self.base_heap, self.base_rss = heap_bytes(), rss_bytes()
        self.peak_heap, self.peak_rss = self.base_heap, self.base_rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        self.peak_heap = max(self.peak_heap, heap_bytes())
        self.peak_rss = max(self.peak_rss, rss_bytes())

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.period)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def worker(overrides: list[str], out: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    recipe = load_recipe("burgers", [*COMMON, *overrides, f"train.threads={threads}"])
    splits = load_dataset(recipe.data)
    check_splits(splits, recipe)
    model = build_models(recipe, splits)["orchestra"]
    task = make_task(recipe, model, splits)
    torch.manual_seed(recipe.seed + 100)
    trainer = Trainer(
        task, recipe.train, name="orchestra", seed=recipe.seed + 1000, checkpoint_dir=out
    )
    # Warm-up on a batch of 2: code pages loaded on first use (solvers, LAPACK) are
    # not counted as training memory, while the activation buffers of a real batch
    # have not been allocated yet (a full-size warm-up would leave them in the heap
    # and hide them from the peak).
    split = task.splits["train"]
    loss, _ = task.loss(split.batch(torch.arange(2)))
    loss.backward()
    model.zero_grad(set_to_none=True)
    with PeakMemory() as mem:
        summary = trainer.fit()
    trainer.load_ema_into_model()
    metrics = task.evaluate("test", recipe.eval)["metrics"]
    return {
        "overrides": overrides,
        "nrmse": metrics["nrmse_1step"],
        "iterations_mean": metrics.get("iterations_mean"),
        "converged_fraction": metrics.get("converged_fraction"),
        "rho_below_1": metrics.get("rho_below_1"),
        "rho_mean": metrics.get("rho_mean"),
        "peak_heap_mb": (mem.peak_heap - mem.base_heap) / 2**20,
        "peak_rss_mb": (mem.peak_rss - mem.base_rss) / 2**20,
        "activation_mb": summary.stats.get("peak_activation_mb"),
        "seconds": summary.seconds,
        "train": summary.stats,
    }


# ---------------------------------------------------------------------- parent


def load_orchestra(overrides: list[str], folder: Path):
    recipe = load_recipe("burgers", [*COMMON, *overrides])
    splits = load_dataset(recipe.data)
    model = build.build_orchestra(recipe)
    groups, _ = load_checkpoint(folder)
    model.load_state_dict(groups["ema"])
    return model.eval(), recipe, splits


def test_batch(recipe, splits, n: int) -> torch.Tensor:
    split = Split(splits["test"], recipe.data.window)
    g = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(split), generator=g)[:n]
    return split.batch(rows).x


class Counted:
    """F with a call counter: evaluations of F are the machine-independent cost."""

    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, z):
        self.calls += 1
        return self.f(z)


def solver_comparison(model, x: torch.Tensor, memory: int, lam: float, repeats: int) -> dict:
    out: dict = {}
    with torch.no_grad(), parametrize.cached():
        f, s0 = model.fixed_point_problem(x)
        for kind in ("picard", "anderson", "broyden"):
            spec = SolverSpec(kind, tol=TOL, max_iter=1000, memory=memory, lam=lam)
            res = spec(f, s0)
            out[kind] = {
                "iterations_mean": float(res.iterations.double().mean()),
                "converged": float(res.converged.double().mean()),
            }
        try:
            from torchdeq.solver import anderson_solver
        except ImportError:
            out["torchdeq"] = None
            return out
        spec = SolverSpec("anderson", tol=TOL, max_iter=1000, memory=memory, lam=lam)
        counted = Counted(f)
        ours = spec(counted, s0)
        theirs_f = Counted(f)
        z, _, _ = anderson_solver(
            theirs_f, s0, max_iter=1000, tol=TOL, stop_mode="rel", m=memory, lam=lam, tau=1.0
        )
        t_ours, t_theirs = [], []
        for _ in range(repeats):  # interleaved, so drifts in machine load hit both
            t = time.perf_counter()
            spec(f, s0)
            t_ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            anderson_solver(
                f, s0, max_iter=1000, tol=TOL, stop_mode="rel", m=memory, lam=lam, tau=1.0
            )
            t_theirs.append(time.perf_counter() - t)
        diff = (ours.x - z).flatten(1).norm(dim=1) / z.flatten(1).norm(dim=1)
        out["ours_time"] = statistics.median(t_ours)
        out["torchdeq_time"] = statistics.median(t_theirs)
        out["torchdeq"] = {
            "fixed_point_rel_diff_max": float(diff.max()),
            "ours_evaluations": counted.calls,
            "torchdeq_evaluations": theirs_f.calls,
        }
    return out


def _num(v: float | None) -> float:
    return float("nan") if v is None else v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5000, help="training steps of every run")
    ap.add_argument("--rounds", type=int, default=16, help="BPTT rounds R")
    ap.add_argument("--bound", type=float, default=0.8, help="spectral-norm bound")
    ap.add_argument("--jac", type=float, default=1.0, help="Jacobian regulariser weight")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    ap.add_argument("--parallel", type=int, default=2, help="training processes at once")
    ap.add_argument("--batch", type=int, default=512, help="test samples for solver timing")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--worker", nargs=2, metavar=("OVERRIDES_JSON", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        result = worker(json.loads(args.worker[0]), Path(args.worker[1]), args.threads)
        print(json.dumps(result))
        return

    root = args.out or Path(tempfile.mkdtemp(prefix="tertulia-eq-"))
    plan = {
        name: [*ov, f"train.steps={args.steps}"]
        for name, ov in runs(args.rounds, args.bound, args.jac).items()
    }
    results: dict[str, dict] = {}
    pending = list(plan.items())
    active: list[tuple[str, subprocess.Popen]] = []
    while pending or active:
        while pending and len(active) < args.parallel:
            name, ov = pending.pop(0)
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--worker"]
            cmd += [json.dumps(ov), str(root / name)]
            active.append((name, subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)))
        time.sleep(1.0)
        for name, proc in list(active):
            if proc.poll() is not None:
                out, _ = proc.communicate()
                if proc.returncode:
                    sys.exit(f"training run {name} failed (exit {proc.returncode})")
                results[name] = json.loads(out.strip().splitlines()[-1])
                active.remove((name, proc))

    torch.set_num_threads(2)
    model, recipe, splits = load_orchestra(plan["deq"], root / "deq")
    x = test_batch(recipe, splits, args.batch)
    solvers = solver_comparison(
        model, x, recipe.model.solver.memory, recipe.model.solver.lam, args.repeats
    )

    bptt, deq, jr, sn = (results[k] for k in ("bptt", "deq", "deq_jacreg", "deq_sn"))
    summary = {
        "deq_nrmse_over_bptt": deq["nrmse"] / bptt["nrmse"],
        "deq_memory_over_bptt": deq["peak_heap_mb"] / bptt["peak_heap_mb"],
        "deq_rss_over_bptt": deq["peak_rss_mb"] / max(bptt["peak_rss_mb"], 1e-9),
        "deq_activation_over_bptt": deq["activation_mb"] / bptt["activation_mb"],
        "anderson_iters_over_picard": solvers["anderson"]["iterations_mean"]
        / solvers["picard"]["iterations_mean"],
        "broyden_iters_over_picard": solvers["broyden"]["iterations_mean"]
        / solvers["picard"]["iterations_mean"],
        "time_over_torchdeq": (
            solvers["ours_time"] / solvers["torchdeq_time"] if solvers.get("torchdeq") else None
        ),
        "fixed_point_rel_diff_vs_torchdeq": (
            solvers["torchdeq"]["fixed_point_rel_diff_max"] if solvers.get("torchdeq") else None
        ),
        "rho_below_1_fraction": sn["rho_below_1"],
        "jacreg_iters_reduction": 1 - jr["iterations_mean"] / deq["iterations_mean"],
        "phantom_nrmse_over_bptt": results["deq_phantom"]["nrmse"] / bptt["nrmse"],
        "truncated1_nrmse_over_bptt": results["truncated1"]["nrmse"] / bptt["nrmse"],
        "steps": args.steps,
        "rounds": args.rounds,
        "bound": args.bound,
        "runs": results,
        "solvers": solvers,
    }
    if args.json:
        print(json.dumps(summary))
        return
    print(
        f"Burgers recipe, {args.steps} steps per run, BPTT at R={args.rounds}, "
        f"skip=input, deq_sn: spectral bound {args.bound}, deq_jacreg: weight {args.jac}; "
        f"runs in {root}"
    )
    print(
        f"{'run':12} {'nRMSE':>8} {'heap MB':>8} {'RSS MB':>7} {'activ. MB':>10} "
        f"{'fwd it':>7} {'bwd it':>7} {'ρ<1':>6} {'s':>6}"
    )
    for name, r in results.items():
        it = _num(r["iterations_mean"])
        print(
            f"{name:12} {r['nrmse']:8.4f} {r['peak_heap_mb']:8.1f} {r['peak_rss_mb']:7.1f} "
            f"{r['activation_mb']:10.2f} {it:7.2f} "
            f"{r['train'].get('backward_iterations_mean', float('nan')):7.2f} "
            f"{_num(r['rho_below_1']):6.3f} {r['seconds']:6.0f}"
        )
    print(
        f"\nsolvers on the trained DEQ model, no spectral norm "
        f"({args.batch} test samples, tol {TOL}):"
    )
    for kind in ("picard", "anderson", "broyden"):
        s = solvers[kind]
        print(f"  {kind:9} {s['iterations_mean']:7.2f} iterations, converged {s['converged']:.3f}")
    if solvers.get("torchdeq"):
        print(
            f"  anderson ours {solvers['ours_time'] * 1e3:.1f} ms vs torchdeq "
            f"{solvers['torchdeq_time'] * 1e3:.1f} ms; fixed points differ by "
            f"{solvers['torchdeq']['fixed_point_rel_diff_max']:.1e} (relative, max)"
        )
    print()
    for k, v in summary.items():
        if isinstance(v, float):
            print(f"{k:34} {v:.3f}")


if __name__ == "__main__":
    main()
