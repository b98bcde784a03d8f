"""Kalman filtering and state-space fitting against the reference libraries.

Three measurements, each against a peer in the same run:

1. **Batched filter vs filterpy.** 1000 series × 100 steps of a random 4-state,
   2-observation system: one call of ``tertulia.filters.kalman_filter`` (float64,
   Joseph form, log-likelihood) vs a Python loop of filterpy's
   ``KalmanFilter.batch_filter`` over the series (also pykalman's ``filter``
   over a subset, scaled). The filtered means of both are compared.
2. **Nile MLE vs statsmodels.** The local level model on the Nile with exact
   diffuse initialisation: ``fit_local_level`` vs
   ``UnobservedComponents(y, 'local level').fit()`` (statsmodels' own default
   optimiser, exact diffuse start, burn 1): wall time (median of repeats after a
   warm-up), parameters and log-likelihood against the published MLE
   (σ²_ε = 15099, σ²_η = 1469.1, Durbin & Koopman 2012 §2.10). The general
   ``fit_mle`` (torch L-BFGS through the differentiable filter) is timed too.
3. **Identification.** N4SID eigenvalue error on a simulated 2-state system and
   EM's monotone log-likelihood.

    python benchmarks/kalman.py            # table
    python benchmarks/kalman.py --json     # one JSON object
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings

import numpy as np
import torch

from tertulia.data.real import load_series
from tertulia.filters.kalman import LinearGaussian, kalman_filter
from tertulia.filters.learn import fit_em, fit_local_level, fit_mle
from tertulia.filters.subspace import n4sid

NILE_REFERENCE = {"sigma2_eps": 15098.5, "sigma2_eta": 1469.2, "loglik": -632.5456}


def random_system(n: int, p: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n))
    A *= 0.95 / max(abs(np.linalg.eigvals(A)))
    C = rng.standard_normal((p, n))
    G = rng.standard_normal((n, n)) * 0.3
    Q = G @ G.T + 0.05 * np.eye(n)
    H = rng.standard_normal((p, p)) * 0.3
    R = H @ H.T + 0.1 * np.eye(p)
    return {"A": A, "C": C, "Q": Q, "R": R}


def simulate(sys: dict[str, np.ndarray], batch: int, steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n, p = sys["A"].shape[0], sys["C"].shape[0]
    Lq, Lr = np.linalg.cholesky(sys["Q"]), np.linalg.cholesky(sys["R"])
    h = rng.standard_normal((batch, n))
    y = np.empty((batch, steps, p))
    for t in range(steps):
        y[:, t] = h @ sys["C"].T + rng.standard_normal((batch, p)) @ Lr.T
        h = h @ sys["A"].T + rng.standard_normal((batch, n)) @ Lq.T
    return y


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_filter(batch: int, steps: int, repeats: int) -> dict[str, float]:
    from filterpy.kalman import KalmanFilter
    from pykalman import KalmanFilter as PyKalman

    sys = random_system(4, 2, seed=0)
    y = simulate(sys, batch, steps, seed=1)
    n = 4
    model = LinearGaussian(**{k: torch.as_tensor(v) for k, v in sys.items()})
    yt = torch.as_tensor(y)
    ours_result = {}

    # filterpy predicts before each update: from its prior N(0, I) the first
    # prediction is N(0, A Aᵀ + Q), our initial (predicted) state
    x_start, P_start = np.zeros(n), np.eye(n)
    init_cov = torch.as_tensor(sys["A"] @ sys["A"].T + sys["Q"])

    def ours() -> None:
        ours_result["f"] = kalman_filter(model, yt, init_cov=init_cov)

    filterpy_means = np.empty((batch, steps, n))

    def filterpy_loop() -> None:
        for b in range(batch):
            kf = KalmanFilter(dim_x=n, dim_z=2)
            kf.F, kf.H, kf.Q, kf.R = sys["A"], sys["C"], sys["Q"], sys["R"]
            kf.x, kf.P = x_start.copy(), P_start.copy()
            means, *_ = kf.batch_filter(y[b])
            filterpy_means[b] = means

    sub = max(1, batch // 20)

    def pykalman_loop() -> None:
        for b in range(sub):
            kf = PyKalman(
                transition_matrices=sys["A"],
                observation_matrices=sys["C"],
                transition_covariance=sys["Q"],
                observation_covariance=sys["R"],
                initial_state_mean=np.zeros(n),
                initial_state_covariance=init_cov.numpy(),
            )
            kf.filter(y[b])

    t_ours = median_time(ours, repeats)
    t_filterpy = median_time(filterpy_loop, max(1, repeats // 3))
    t_pykalman = median_time(pykalman_loop, max(1, repeats // 3)) * batch / sub
    diff = float(np.abs(ours_result["f"].mean.numpy() - filterpy_means).max())
    return {
        "filter_batch": batch,
        "filter_steps": steps,
        "ours_ms": 1e3 * t_ours,
        "filterpy_ms": 1e3 * t_filterpy,
        "pykalman_ms": 1e3 * t_pykalman,
        "speedup_vs_filterpy": t_filterpy / t_ours,
        "speedup_vs_pykalman": t_pykalman / t_ours,
        "max_abs_diff_vs_filterpy": diff,
    }


def bench_nile(repeats: int) -> dict[str, float]:
    import statsmodels.api as sm

    y = load_series(name="Nile").y
    fit = {}

    def ours() -> None:
        fit["f"] = fit_local_level(y, init="diffuse", burn=1)

    sm_fit = {}

    def statsmodels_fit() -> None:
        mod = sm.tsa.UnobservedComponents(y, "local level")
        mod.ssm.initialize_diffuse()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod.loglikelihood_burn = 1
            sm_fit["r"] = mod.fit(disp=False)

    t_ours = median_time(ours, repeats)
    t_sm = median_time(statsmodels_fit, repeats)
    f, r = fit["f"], sm_fit["r"]
    sm_eps, sm_eta = (float(v) for v in r.params)

    yt = torch.as_tensor(y, dtype=torch.float64)[:, None]

    def build(theta: torch.Tensor) -> LinearGaussian:
        one = torch.ones(1, 1, dtype=torch.float64)
        return LinearGaussian(
            A=one, C=one, Q=theta[1].exp().reshape(1, 1), R=theta[0].exp().reshape(1, 1)
        )

    t0 = time.perf_counter()
    general = fit_mle(
        build,
        torch.log(torch.tensor([10000.0, 1000.0], dtype=torch.float64)),
        yt,
        init="diffuse",
        burn=1,
        stderr=False,  # the optimisation alone; the Hessian for standard errors costs more
    )
    t_general = time.perf_counter() - t0
    ref = NILE_REFERENCE

    def rel(a: float, b: float) -> float:
        return abs(a - b) / abs(b)

    return {
        "nile_ours_ms": 1e3 * t_ours,
        "nile_statsmodels_ms": 1e3 * t_sm,
        "nile_time_over_statsmodels": t_ours / t_sm,
        "nile_sigma2_eps": float(f.sigma2_eps),
        "nile_sigma2_eta": float(f.sigma2_eta),
        "nile_loglik": float(f.loglik),
        "nile_sigma2_eps_rel_error": rel(float(f.sigma2_eps), ref["sigma2_eps"]),
        "nile_sigma2_eta_rel_error": rel(float(f.sigma2_eta), ref["sigma2_eta"]),
        "nile_loglik_error": abs(float(f.loglik) - ref["loglik"]),
        "statsmodels_sigma2_eps_rel_error": rel(sm_eps, ref["sigma2_eps"]),
        "statsmodels_sigma2_eta_rel_error": rel(sm_eta, ref["sigma2_eta"]),
        "statsmodels_loglik": float(r.llf),
        "statsmodels_sigma2_eps": sm_eps,
        "statsmodels_sigma2_eta": sm_eta,
        "nile_fit_mle_ms": 1e3 * t_general,
        "nile_fit_mle_sigma2_eps": float(general.theta[0].exp()),
        "nile_fit_mle_sigma2_eta": float(general.theta[1].exp()),
    }


def bench_identification() -> dict[str, float]:
    rng = np.random.default_rng(3)
    lam = 0.9 * np.exp(1j * 0.3)
    A = np.array([[lam.real, -lam.imag], [lam.imag, lam.real]])
    C = np.array([[1.0, 0.5], [0.2, -0.7]])
    T = 2000
    h = np.zeros(2)
    y = np.empty((T, 2))
    for t in range(T):
        y[t] = C @ h + 0.1 * rng.standard_normal(2)
        h = A @ h + 0.3 * rng.standard_normal(2)
    t0 = time.perf_counter()
    res = n4sid(y, order=None, horizon=10)
    t_n4sid = time.perf_counter() - t0
    est = np.linalg.eigvals(np.asarray(res.A, dtype=np.float64))
    true = np.array([lam, np.conj(lam)])
    err = max(min(abs(e - t) / abs(t) for e in est) for t in true)
    t0 = time.perf_counter()
    em = fit_em(y[:400], 2, max_iter=100, seed=0)
    t_em = time.perf_counter() - t0
    hist = np.asarray(em.loglik_history, dtype=np.float64)
    drops = np.diff(hist)
    return {
        "n4sid_order": float(res.order),
        "n4sid_eig_rel_error": float(err),
        "n4sid_ms": 1e3 * t_n4sid,
        "em_iterations": float(em.iterations),
        "em_ms": 1e3 * t_em,
        "em_largest_decrease": float(max(0.0, -drops.min())) if drops.size else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict[str, float] = {"torch_threads": float(torch.get_num_threads())}
    out.update(bench_filter(args.batch, args.steps, args.repeats))
    out.update(bench_nile(max(args.repeats, 15)))
    out.update(bench_identification())
    if args.json:
        print(json.dumps({k: (v if math.isfinite(v) else None) for k, v in out.items()}))
        return
    print(f"batched Kalman filter, {args.batch} series × {args.steps} steps, n=4, p=2, float64")
    print(f"  tertulia   {out['ours_ms']:10.1f} ms")
    print(f"  filterpy   {out['filterpy_ms']:10.1f} ms  (loop over series)")
    print(f"  pykalman   {out['pykalman_ms']:10.1f} ms  (loop, extrapolated from 1/20)")
    print(f"  max |mean − filterpy| = {out['max_abs_diff_vs_filterpy']:.2e}")
    print("Nile local level, exact diffuse, burn 1")
    print(f"  {'':24s}{'σ²_ε':>10s}{'σ²_η':>10s}{'loglik':>12s}{'ms':>9s}")
    print(
        f"  {'tertulia fit_local_level':24s}{out['nile_sigma2_eps']:10.1f}"
        f"{out['nile_sigma2_eta']:10.1f}{out['nile_loglik']:12.4f}{out['nile_ours_ms']:9.2f}"
    )
    print(
        f"  {'tertulia fit_mle (torch)':24s}{out['nile_fit_mle_sigma2_eps']:10.1f}"
        f"{out['nile_fit_mle_sigma2_eta']:10.1f}{'':12s}{out['nile_fit_mle_ms']:9.2f}"
    )
    print(
        f"  {'statsmodels fit()':24s}{out['statsmodels_sigma2_eps']:10.1f}"
        f"{out['statsmodels_sigma2_eta']:10.1f}{out['statsmodels_loglik']:12.4f}"
        f"{out['nile_statsmodels_ms']:9.2f}"
    )
    print(
        f"  {'published MLE':24s}{NILE_REFERENCE['sigma2_eps']:10.1f}"
        f"{NILE_REFERENCE['sigma2_eta']:10.1f}"
        f"{NILE_REFERENCE['loglik']:12.4f}"
    )
    print(
        f"  statsmodels' relative errors: σ²_ε {out['statsmodels_sigma2_eps_rel_error']:.2e}, "
        f"σ²_η {out['statsmodels_sigma2_eta_rel_error']:.2e}"
    )
    print("identification")
    print(
        f"  N4SID order {out['n4sid_order']:.0f}, eigenvalue relative error "
        f"{out['n4sid_eig_rel_error']:.2e} ({out['n4sid_ms']:.1f} ms)"
    )
    print(
        f"  EM {out['em_iterations']:.0f} iterations ({out['em_ms']:.0f} ms), "
        f"largest log-likelihood decrease {out['em_largest_decrease']:.1e}"
    )
    print()
    for key in (
        "speedup_vs_filterpy",
        "speedup_vs_pykalman",
        "nile_time_over_statsmodels",
        "nile_sigma2_eps_rel_error",
        "nile_sigma2_eta_rel_error",
        "nile_loglik_error",
        "n4sid_eig_rel_error",
    ):
        print(f"{key:34s} {out[key]:10.4g}")


if __name__ == "__main__":
    main()
