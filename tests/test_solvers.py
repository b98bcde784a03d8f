"""Round solvers: stopping rule, residual bookkeeping, where the gradient flows."""

from __future__ import annotations

import pytest
import torch

from tertulia.solvers import Truncated, Unrolled, relative_residual


def contraction(a: float):
    """F(S) = a·S + 1: fixed point 1/(1−a), residual shrinks by a each round."""
    return lambda s: a * s + 1.0


def test_relative_residual_per_sample():
    old = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    new = torch.tensor([[3.0, 4.5], [1.0, 1.0]])
    torch.testing.assert_close(relative_residual(new, old), torch.tensor([0.1, 1.0]))


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
