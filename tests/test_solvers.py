"""Round solvers: stopping rule, residual bookkeeping, where the gradient flows."""

from __future__ import annotations

import pytest
import torch

from tertulia.solvers import (
    Equilibrium,
    SolverSpec,
    Truncated,
    Unrolled,
    anderson,
    broyden,
    picard,
    relative_residual,
)


def contraction(a: float):
    """F(S) = a·S + 1: fixed point 1/(1−a), residual shrinks by a each round."""
    return lambda s: a * s + 1.0


def test_relative_residual_per_sample():
    old = torch.tensor([[3.0, 4.5], [1.0, 0.0]])
    new = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    # ‖new − old‖ / ‖new‖; an all-zero image gives a large, finite residual
    r = relative_residual(new, old)
    torch.testing.assert_close(r[0], torch.tensor(0.1))
    assert torch.isfinite(r[1]) and r[1] > 1e6


def test_unrolled_runs_all_rounds_without_tol():
    s, trace = Unrolled(7).solve(contraction(0.5), torch.ones(3, 2, 4))
    assert trace.rounds == 7 and len(trace.residuals) == 7 and not trace.converged


def test_unrolled_reaches_the_fixed_point_and_stops():
    s, trace = Unrolled(200, tol=1e-8).solve(contraction(0.5), torch.zeros(2, 1, 3).double() + 5)
    torch.testing.assert_close(s, torch.full_like(s, 2.0), rtol=0, atol=1e-7)
    assert trace.converged and trace.rounds < 200
    assert trace.max_residuals[-1] < 1e-8 <= trace.max_residuals[-2]
    # residuals fall geometrically with ratio ≈ a
    r = trace.residuals
    assert r[5] / r[4] == pytest.approx(0.5, rel=0.1)


def test_stopping_waits_for_the_slowest_sample():
    # sample 0 starts at the fixed point, sample 1 far away
    s0 = torch.stack([torch.full((1, 2), 2.0), torch.full((1, 2), 100.0)]).double()
    _, trace = Unrolled(100, tol=1e-6).solve(contraction(0.5), s0)
    assert trace.rounds > 10


def test_truncated_gradient_flows_through_last_rounds_only():
    w = torch.tensor(0.5, requires_grad=True)
    f = lambda s: w * s + 1.0  # noqa: E731
    s0 = torch.ones(1, 1, 1)
    s, trace = Truncated(6, grad_rounds=2).solve(f, s0)
    s.sum().backward()
    # by hand: s4 is a constant c; s6 = w(w c + 1) + 1, so ds6/dw = 2 w c + 1
    c = 1.0
    for _ in range(4):
        c = 0.5 * c + 1.0
    assert trace.rounds == 6
    assert float(w.grad) == pytest.approx(2 * 0.5 * c + 1)


def test_truncated_with_all_rounds_equals_bptt():
    w1 = torch.tensor(0.7, requires_grad=True)
    w2 = torch.tensor(0.7, requires_grad=True)
    s0 = torch.ones(2, 1, 1)
    Truncated(4, grad_rounds=4).solve(lambda s: w1 * s + 1, s0)[0].sum().backward()
    Unrolled(4).solve(lambda s: w2 * s + 1, s0)[0].sum().backward()
    assert float(w1.grad) == pytest.approx(float(w2.grad))


def test_truncated_always_runs_its_gradient_rounds():
    s0 = torch.full((1, 1, 2), 2.0)  # already at the fixed point of contraction(0.5)
    w = torch.tensor(0.5, requires_grad=True)
    s, trace = Truncated(10, grad_rounds=3, tol=1e-6).solve(lambda s: w * s + 1.0, s0)
    assert trace.rounds == 1 + 3 and s.requires_grad


def test_truncated_in_eval_behaves_like_unrolled():
    with torch.no_grad():
        _, t1 = Truncated(5, grad_rounds=2).solve(contraction(0.5), torch.ones(1, 1, 1))
        _, t2 = Unrolled(5).solve(contraction(0.5), torch.ones(1, 1, 1))
    assert t1.residuals == t2.residuals


@pytest.mark.parametrize("bad", [dict(max_rounds=0), dict(max_rounds=3, grad_rounds=4)])
def test_solver_arguments_are_checked(bad):
    with pytest.raises(ValueError):
        if "grad_rounds" in bad:
            Truncated(bad["max_rounds"], grad_rounds=bad["grad_rounds"])
        else:
            Unrolled(bad["max_rounds"])


# ----------------------------------------------------------------- fixed points


def linear_problem(
    b: int = 3, n: int = 4, d: int = 6, rho: float = 0.9, seed: int = 0, symmetric: bool = False
):
    """F(x) = A_b x + c_b per sample with ‖A_b‖₂ = rho: known fixed point (I − A)⁻¹ c.

    ``symmetric``: A = Q diag(λ) Qᵀ with λ spread over [0, rho], so Picard's
    rate is exactly rho (slow) while Krylov-like methods are fast.
    """
    g = torch.Generator().manual_seed(seed)
    dim = n * d
    a = torch.randn(b, dim, dim, generator=g, dtype=torch.float64)
    if symmetric:
        q = torch.linalg.qr(a).Q
        lam = torch.linspace(0, rho, dim, dtype=torch.float64)
        a = q @ torch.diag_embed(lam.expand(b, dim)) @ q.transpose(1, 2)
    a = rho * a / torch.linalg.matrix_norm(a, 2)[:, None, None]
    c = torch.randn(b, dim, generator=g, dtype=torch.float64)
    star = torch.linalg.solve(torch.eye(dim, dtype=torch.float64) - a, c)

    def f(x):
        return (torch.einsum("bij,bj->bi", a, x.reshape(b, dim)) + c).reshape(b, n, d)

    return f, star.reshape(b, n, d), torch.zeros(b, n, d, dtype=torch.float64)


@pytest.mark.parametrize(
    "solve",
    [
        lambda f, x0: picard(f, x0, tol=1e-10, max_iter=2000),
        lambda f, x0: picard(f, x0, tol=1e-10, max_iter=2000, damping=0.7),
        lambda f, x0: anderson(f, x0, tol=1e-10, max_iter=200),
        lambda f, x0: anderson(f, x0, tol=1e-10, max_iter=200, memory=3, mixing=0.8),
        lambda f, x0: broyden(f, x0, tol=1e-10, max_iter=200),
    ],
    ids=["picard", "picard-damped", "anderson", "anderson-m3-beta", "broyden"],
)
def test_each_solver_finds_the_fixed_point_of_a_linear_contraction(solve):
    f, star, x0 = linear_problem()
    res = solve(f, x0)
    assert bool(res.converged.all())
    torch.testing.assert_close(res.x, star, rtol=0, atol=1e-8)
    assert res.residuals.shape == (res.evaluations, 3)
    assert bool((res.final_residual < 1e-10).all())


def test_anderson_and_broyden_need_far_fewer_iterations_than_picard():
    f, _, x0 = linear_problem(rho=0.95, symmetric=True)
    it_p = picard(f, x0, tol=1e-8, max_iter=5000).iterations.double().mean()
    it_a = anderson(f, x0, tol=1e-8, max_iter=500, memory=10).iterations.double().mean()
    it_b = broyden(f, x0, tol=1e-8, max_iter=500, memory=30).iterations.double().mean()
    assert it_a < 0.5 * it_p and it_b < 0.5 * it_p


def test_convergence_is_per_sample():
    # sample 0 starts at its fixed point and stops after one evaluation
    f, star, x0 = linear_problem(b=2)
    x0 = x0.clone()
    x0[0] = star[0]
    res = picard(f, x0, tol=1e-9, max_iter=1000)
    assert int(res.iterations[0]) == 1 and int(res.iterations[1]) > 20
    torch.testing.assert_close(res.x, star, rtol=0, atol=1e-8)


def test_non_convergence_is_flagged_and_the_best_iterate_returned():
    f, star, x0 = linear_problem(rho=0.99)
    res = picard(f, x0, tol=1e-12, max_iter=5)
    assert not bool(res.converged.any())
    assert bool((res.iterations == 5).all())
    assert torch.equal(res.final_residual, res.residuals.min(dim=0).values)


def test_solver_spec_rejects_unknown_kind():
    with pytest.raises(ValueError, match="anderson"):
        SolverSpec("newton")


# -------------------------------------------------------------- backward modes


def nonlinear_problem(seed: int = 0):
    """F(s; W, x) = tanh(W s + U x) with ‖W‖₂ = 0.8 (a contraction), float64."""
    g = torch.Generator().manual_seed(seed)
    d = 5
    w = torch.randn(d, d, generator=g, dtype=torch.float64)
    w = (0.8 * w / torch.linalg.matrix_norm(w, 2)).requires_grad_()
    u = torch.randn(d, d, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 1, d, generator=g, dtype=torch.float64)
    target = torch.randn(2, 1, d, generator=g, dtype=torch.float64)
    return w, u, x, target


def equilibrium_loss(solver, w, u, x, target):
    f = lambda s: torch.tanh(s @ w.T + x @ u.T)  # noqa: E731
    s, trace = solver.solve(f, torch.zeros_like(x))
    return ((s - target) ** 2).sum(), trace


IMPLICIT = Equilibrium(
    SolverSpec("anderson", tol=1e-12, max_iter=200),
    adjoint=SolverSpec("anderson", tol=1e-12, max_iter=200),
)


@pytest.mark.parametrize("adjoint", ["picard", "anderson", "broyden"])
def test_implicit_gradient_equals_finite_differences(adjoint):
    w, u, x, target = nonlinear_problem()
    solver = Equilibrium(
        SolverSpec("anderson", tol=1e-12, max_iter=200),
        adjoint=SolverSpec(adjoint, tol=1e-12, max_iter=500),
    )
    loss, trace = equilibrium_loss(solver, w, u, x, target)
    loss.backward()
    assert trace.backward["converged"] == 1.0 and trace.backward["iterations"] > 1
    eps = 1e-6
    for p in (w, u):
        fd = torch.zeros_like(p)
        for idx in [(0, 0), (1, 3), (4, 2)]:
            with torch.no_grad():
                p[idx] += eps
                up = equilibrium_loss(IMPLICIT, w, u, x, target)[0]
                p[idx] -= 2 * eps
                down = equilibrium_loss(IMPLICIT, w, u, x, target)[0]
                p[idx] += eps
            fd[idx] = (up - down) / (2 * eps)
            rel = abs(float(p.grad[idx] - fd[idx])) / max(abs(float(fd[idx])), 1e-8)
            assert rel < 1e-3, (p.grad[idx], fd[idx])


def test_implicit_gradient_equals_the_converged_unrolled_gradient():
    w, u, x, target = nonlinear_problem(seed=1)
    loss, _ = equilibrium_loss(IMPLICIT, w, u, x, target)
    gw, gu = torch.autograd.grad(loss, (w, u))
    loss_u, trace = equilibrium_loss(Unrolled(300, tol=0.0), w, u, x, target)
    uw, uu = torch.autograd.grad(loss_u, (w, u))
    assert trace.max_residuals[-1] < 1e-14
    for a, b in ((gw, uw), (gu, uu)):
        assert float((a - b).norm() / b.norm()) < 1e-3


def test_phantom_gradient_approaches_the_implicit_one_with_more_steps():
    w, u, x, target = nonlinear_problem(seed=2)
    exact = torch.autograd.grad(equilibrium_loss(IMPLICIT, w, u, x, target)[0], w)[0]
    errors = []
    for k in (1, 5, 40):
        solver = Equilibrium(
            SolverSpec("anderson", tol=1e-12, max_iter=200),
            backward="phantom",
            phantom_steps=k,
            phantom_damping=1.0,
        )
        g = torch.autograd.grad(equilibrium_loss(solver, w, u, x, target)[0], w)[0]
        errors.append(float((g - exact).norm() / exact.norm()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3


def test_equilibrium_without_grad_returns_the_fixed_point_and_flags_convergence():
    w, u, x, target = nonlinear_problem()
    solver = Equilibrium(SolverSpec("picard", tol=1e-10, max_iter=3))
    with torch.no_grad():
        _, trace = equilibrium_loss(solver, w, u, x, target)
    assert trace.unconverged == 2 and not trace.converged and trace.rounds == 3


@pytest.mark.parametrize("backward", [True, False], ids=["after-backward", "no-backward"])
def test_implicit_mode_leaves_no_reference_cycle(backward):
    """The adjoint hook must not keep the output alive (a leak of one graph per step)."""
    import gc
    import weakref

    w, u, x, target = nonlinear_problem()
    f = lambda s: torch.tanh(s @ w.T + x @ u.T)  # noqa: E731
    s, _ = IMPLICIT.solve(f, torch.zeros_like(x))
    ref = weakref.ref(s)
    loss = ((s - target) ** 2).sum()
    if backward:
        loss.backward()
    del s, loss
    gc.collect()
    assert ref() is None
