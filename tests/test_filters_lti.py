"""Linear state-space models: discretisation, Van Loan, modes, LQR, simulation, the island."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.signal
import torch

from tertulia.data.systems import (
    SENSOR_NAMES,
    STATE_NAMES,
    island_system,
    simulate_island,
)
from tertulia.errors import CovarianceError, ShapeError, UserError
from tertulia.filters.lti import LinearSSM, lqr, psd_factor


def _random_system(seed: int = 1, n: int = 3, m: int = 2, p: int = 2) -> LinearSSM:
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, n)) - 0.5 * np.eye(n)
    L = rng.normal(size=(n, n))
    return LinearSSM(
        A, rng.normal(size=(n, m)), rng.normal(size=(p, n)), rng.normal(size=(p, m)),
        Q=L @ L.T, R=np.eye(p) * 0.3,
    )  # fmt: skip


# ------------------------------------------------------------------ discretisation


@pytest.mark.parametrize("method", ["zoh", "bilinear", "euler"])
def test_discretize_matches_scipy(method):
    sys = _random_system()
    dt = 0.37
    got = sys.discretize(dt, method=method)
    ref = scipy.signal.cont2discrete(
        tuple(t.numpy() for t in (sys.A, sys.B, sys.C, sys.D)), dt, method=method
    )
    for mine, theirs in zip((got.A, got.B, got.C, got.D), ref[:4], strict=True):
        np.testing.assert_allclose(mine.numpy(), theirs, rtol=0, atol=1e-12)
    assert got.is_discrete and got.dt == dt
    torch.testing.assert_close(got.R, sys.R)  # sensor noise is per reading: unchanged


def test_van_loan_matches_integral():
    sys = _random_system(seed=4)
    A, Q = sys.A.numpy(), sys.Q.numpy()
    dt = 0.8

    def integrand(s):
        E = scipy.linalg.expm(A * s)
        return E @ Q @ E.T

    exact, _ = scipy.integrate.quad_vec(integrand, 0.0, dt, epsabs=1e-13, epsrel=1e-13)
    Qd = sys.discretize(dt).Q.numpy()
    np.testing.assert_allclose(Qd, exact, rtol=0, atol=1e-8)
    np.testing.assert_allclose(sys.discretize(dt, "euler").Q.numpy(), Q * dt, atol=1e-14)
    # Tustin's M Q Mᵀ dt is second-order accurate: its error shrinks ~ dt³ per step
    errs = []
    for h in (0.02, 0.01):
        ex, _ = scipy.integrate.quad_vec(integrand, 0.0, h, epsabs=1e-15, epsrel=1e-13)
        errs.append(np.abs(sys.discretize(h, "bilinear").Q.numpy() - ex).max())
    assert errs[1] < errs[0] / 6


def test_zoh_preserves_growth_rate_and_period():
    cont = island_system()
    disc = cont.discretize(0.1)
    for mc, md in zip(cont.modes(), disc.modes(), strict=True):
        assert md.growth_rate == pytest.approx(mc.growth_rate, abs=1e-12)
        assert md.period == pytest.approx(mc.period, rel=1e-12)


# ------------------------------------------------------------------------- modes


def test_island_modes_match_analytic_eigenvalues():
    a = np.array([[0.5, -4.0], [0.1, -0.05]])
    tr, det = np.trace(a), 0.5 * -0.05 - (-4.0) * 0.1
    assert tr == pytest.approx(0.45) and det == pytest.approx(0.375)
    im = math.sqrt(4 * det - tr**2) / 2  # = sqrt(0.375 − 0.050625) = 0.56954
    assert im == pytest.approx(math.sqrt(0.324375), abs=1e-15)
    modes = island_system().modes()
    assert len(modes) == 2
    lam = sorted((md.eigenvalue for md in modes), key=lambda z: z.imag)
    assert abs(lam[0] - complex(tr / 2, -im)) < 1e-12
    assert abs(lam[1] - complex(tr / 2, im)) < 1e-12
    for md in modes:
        assert md.stability == "unstable" and md.oscillating
        assert md.kind == "growing oscillation"
        assert md.growth_rate == pytest.approx(0.225, abs=1e-12)
        assert md.period == pytest.approx(2 * math.pi / im, rel=1e-12)
        assert md.doubling_time == pytest.approx(math.log(2) / 0.225, rel=1e-12)
        assert md.half_life is None
    sys = island_system()
    assert sys.stability() == "unstable"
    text = sys.describe()
    assert "unstable" in text and "0.225 ± 0.5695i" in text and len(text.splitlines()) == 2
    assert (sys.n, sys.m, sys.p) == (len(STATE_NAMES), 1, len(SENSOR_NAMES))


def test_discrete_rotation_modes():
    r, theta, dt = 0.9, 2 * math.pi / 12, 0.5
    c, s = math.cos(theta), math.sin(theta)
    sys = LinearSSM([[r * c, -r * s], [r * s, r * c]], dt=dt)
    assert sys.m == 0 and sys.p == 2 and sys.stability() == "stable"
    for md in sys.modes():
        assert abs(md.eigenvalue) == pytest.approx(r, abs=1e-14)
        assert md.stability == "stable" and md.oscillating
        assert md.period == pytest.approx(12 * dt, rel=1e-12)
        assert md.growth_rate == pytest.approx(math.log(r) / dt, rel=1e-12)
        assert md.half_life == pytest.approx(math.log(2) * dt / -math.log(r), rel=1e-12)
    unit = LinearSSM([[c, -s], [s, c]], dt=dt)
    assert unit.stability() == "marginal" and unit.modes()[0].kind == "sustained oscillation"
    flip = LinearSSM([[-0.5]], dt=0.2).modes()[0]  # sign flips every step: period 2·dt
    assert flip.oscillating and flip.period == pytest.approx(0.4)


def test_continuous_real_modes():
    sys = LinearSSM([[-2.0, 0.0], [0.0, 0.0]])
    fast, zero = sorted(sys.modes(), key=lambda md: md.growth_rate)
    assert fast.stability == "stable" and not fast.oscillating and fast.period is None
    assert fast.half_life == pytest.approx(math.log(2) / 2)
    assert zero.stability == "marginal" and zero.kind == "constant"
    assert sys.stability() == "marginal"
    assert LinearSSM([[-1.0, 5.0], [-5.0, -1.0]]).stability() == "stable"


# --------------------------------------------------------------------------- LQR


def test_island_lqr_stabilises():
    sys = island_system()
    res = lqr(sys.A, sys.B, np.eye(2), 1.0)
    A, B, K, P = sys.A.numpy(), sys.B.numpy(), res.K.numpy(), res.P.numpy()
    riccati = A.T @ P + P @ A - P @ B @ B.T @ P + np.eye(2)
    assert np.abs(riccati).max() < 1e-9
    assert res.K.shape == (1, 2) and (res.closed_loop_eigenvalues.real < 0).all()
    closed = sys.with_feedback(res.K)
    got = np.sort_complex(np.array([md.eigenvalue for md in closed.modes()]))
    np.testing.assert_allclose(got, np.sort_complex(res.closed_loop_eigenvalues.numpy()))
    assert closed.stability() == "stable"
    np.testing.assert_allclose(np.linalg.eigvals(A - B @ K).real.max(), got.real.max())

    free = simulate_island(300, 0.1, (10.0, 2.0), process_noise=0.0, sensor_noise=0.0)
    ctrl = simulate_island(
        300, 0.1, (10.0, 2.0), controller=res.K, process_noise=0.0, sensor_noise=0.0
    )
    n0 = np.linalg.norm([10.0, 2.0])
    assert ctrl.states[-1].norm() < 0.01 * n0
    assert free.states[-1].norm() > 100 * n0
    torch.testing.assert_close(ctrl.inputs, -ctrl.states @ res.K.T)


def test_discrete_lqr():
    disc = island_system().discretize(0.1)
    res = disc.lqr(np.eye(2), 1.0)
    A, B, K, P = disc.A.numpy(), disc.B.numpy(), res.K.numpy(), res.P.numpy()
    rhs = A.T @ P @ A - A.T @ P @ B @ np.linalg.solve(1.0 + B.T @ P @ B, B.T @ P @ A) + np.eye(2)
    assert np.abs(P - rhs).max() < 1e-8 * np.abs(P).max()
    assert res.closed_loop_eigenvalues.abs().max() < 1
    assert disc.with_feedback(K[0]).stability() == "stable"


def test_lqr_unstabilisable_is_user_error():
    with pytest.raises(UserError) as err:
        lqr([[1.0, 0.0], [0.0, 2.0]], [[1.0], [0.0]], np.eye(2), 1.0)
    assert "\n" not in str(err.value)


# -------------------------------------------------------------------- simulation


def test_noiseless_simulation_equals_recursion():
    sys = _random_system(seed=2).discretize(0.2)
    x = torch.randn(3, 7, sys.m, dtype=torch.float64)
    h0 = torch.randn(sys.n, dtype=torch.float64)
    states, outputs = sys.simulate(x, h0)
    assert states.shape == (3, 7, sys.n) and outputs.shape == (3, 7, sys.p)
    for b in range(3):
        h = h0.clone()
        for k in range(7):
            torch.testing.assert_close(states[b, k], h, rtol=0, atol=1e-13)
            y = sys.C @ h + sys.D @ x[b, k]
            torch.testing.assert_close(outputs[b, k], y, rtol=0, atol=1e-13)
            h = sys.A @ h + sys.B @ x[b, k]
    zero_in, _ = sys.simulate(h0=h0, steps=4)
    assert zero_in.shape == (4, sys.n)
    torch.testing.assert_close(zero_in[1], sys.A @ h0)
    one = LinearSSM([[0.5]], [1.0], dt=1.0)
    s1, _ = one.simulate([1.0, 0.0, 0.0], h0=[0.0])  # (T,) inputs when m = 1
    torch.testing.assert_close(s1[:, 0], torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64))


def test_noise_has_the_right_covariance():
    Q = np.array([[1.0, 0.6], [0.6, 0.5]])
    R = np.array([[0.2]])
    A = np.array([[0.8, 0.3], [-0.2, 0.7]])
    sys = LinearSSM(A, None, [[1.0, -1.0]], dt=1.0, Q=Q, R=R)
    gen = torch.Generator().manual_seed(123)
    states, outputs = sys.simulate(steps=40, h0=torch.zeros(4000, 2), noise=True, generator=gen)
    cov_w = np.cov(states[:, 1].numpy().T)  # h_1 = w_0
    stat = scipy.linalg.solve_discrete_lyapunov(A, Q)  # stationary P = A P Aᵀ + Q
    cov_h = np.cov(states[:, -1].numpy().T)
    v = outputs[:, 0, 0] - states[:, 0] @ sys.C[0]  # h_0 = 0: y_0 = v_0
    assert np.abs(cov_w - Q).max() < 0.1 * np.abs(Q).max()
    assert np.abs(cov_h - stat).max() < 0.1 * np.abs(stat).max()
    assert float(v.var()) == pytest.approx(0.2, rel=0.1)
    # the same generator seed reproduces the draw
    again, _ = sys.simulate(
        steps=40, h0=torch.zeros(4000, 2), noise=True, generator=torch.Generator().manual_seed(123)
    )
    torch.testing.assert_close(states, again, rtol=0, atol=0)


def test_singular_process_noise_stays_in_its_subspace():
    Q = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # PSD, rank one
    L = psd_factor(Q)
    torch.testing.assert_close(L @ L.T, Q, rtol=0, atol=1e-12)
    sys = LinearSSM(torch.zeros(2, 2), dt=1.0, Q=Q)
    states, _ = sys.simulate(steps=2, h0=torch.zeros(500, 2), noise=True)
    w = states[:, 1]
    torch.testing.assert_close(w[:, 0], w[:, 1], rtol=0, atol=1e-12)
    assert float(w[:, 0].var()) == pytest.approx(1.0, rel=0.2)


def test_simulate_island_shapes_and_policy():
    data = simulate_island(50, 0.1, seed=3)
    assert data.t.shape == (50,) and data.states.shape == (50, 2)
    assert data.sensors.shape == (50, 4) and data.inputs.shape == (50, 1)
    assert data.t[1] == pytest.approx(0.1) and not data.inputs.any()
    again = simulate_island(50, 0.1, seed=3)
    torch.testing.assert_close(data.sensors, again.sensors, rtol=0, atol=0)
    seen = []

    def policy(y):
        seen.append(y)
        return -2.0 * y[0]

    out = simulate_island(20, 0.1, controller=policy, seed=3)
    assert len(seen) == 20
    torch.testing.assert_close(out.inputs[:, 0], -2.0 * out.sensors[:, 0])


def test_immutable():
    sys = island_system()
    with pytest.raises(AttributeError):
        sys.A = torch.eye(2)
    assert sys.replace(dt=0.5).is_discrete and not sys.is_discrete
    clone = copy.deepcopy(island_system(sensor_noise=0.3))  # rebuilt via __reduce__
    torch.testing.assert_close(clone.R, 0.09 * torch.eye(4, dtype=torch.float64))
    assert copy.deepcopy(sys).C.shape == (4, 2)


# --------------------------------------------------------------------- bad input

_A = [[0.0, 1.0], [-1.0, 0.0]]
_B = [1.0, 0.0]
_I = np.eye(2)

BAD = {
    "non-square A": (lambda: LinearSSM([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), ShapeError, "A"),
    "B rows": (lambda: LinearSSM(_A, [[1.0], [0.0], [0.0]]), ShapeError, "(2, m)"),
    "C cols": (lambda: LinearSSM(_A, [1.0, 0.0], [[1.0, 0.0, 0.0]]), ShapeError, "(p, 2)"),
    "D shape": (lambda: LinearSSM(_A, [1.0, 0.0], None, [[0.0, 0.0]]), ShapeError, "(2, 1)"),
    "Q asymmetric": (lambda: LinearSSM(_A, Q=[[1.0, 0.5], [0.0, 1.0]]), CovarianceError, "Q"),
    "Q shape": (lambda: LinearSSM(_A, Q=np.eye(3)), ShapeError, "(2, 2)"),
    "R not PSD": (lambda: LinearSSM(_A, R=[[1.0, 0.0], [0.0, -1.0]]), CovarianceError, "R"),
    "method": (lambda: LinearSSM(_A).discretize(0.1, "rk4"), UserError, "zoh, bilinear, euler"),
    "dt": (lambda: LinearSSM(_A).discretize(-0.1), UserError, "dt"),
    "twice": (lambda: LinearSSM(_A, dt=0.1).discretize(0.1), UserError, "already discrete"),
    "continuous simulate": (lambda: LinearSSM(_A).simulate(steps=3), UserError, "discretize"),
    "x width": (lambda: LinearSSM(_A, _B, dt=1.0).simulate(np.ones((4, 2))), ShapeError, "x"),
    "K shape": (lambda: LinearSSM(_A, _B).with_feedback([[1.0, 2.0, 3.0]]), ShapeError, "K"),
    "LQR R singular": (lambda: lqr(_A, _I, _I, np.diag([1.0, 0.0])), CovarianceError, "R"),
    "sensor noise": (lambda: island_system(sensor_noise=[0.1, 0.2]), ShapeError, "sensor_noise"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_a_one_line_user_error(case):
    make, kind, needle = BAD[case]
    with pytest.raises(kind) as err:
        make()
    msg = str(err.value)
    assert "\n" not in msg and needle in msg
