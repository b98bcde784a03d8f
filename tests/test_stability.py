"""Contractivity tools: spectral bound, Hutchinson Jacobian penalty, contraction factor."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from tertulia.nn.cells import CellBank
from tertulia.stability import (
    SpectralBound,
    contraction_factor,
    jacobian_frobenius,
    spectral_bound,
    spectral_norms,
)

torch.set_num_threads(1)

B, SHAPE, D = 3, (4, 5), 20


def _linear_map(a: torch.Tensor):
    # a: (B, D, D); f(z)[b] = A_b z_b with z: (B, 4, 5) flattened per sample
    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bij,bj->bi", a, z.reshape(z.shape[0], -1)).reshape(z.shape)

    return f


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- contraction_factor -----------------------------------------------------------------------


def test_contraction_factor_of_batched_linear_map_is_its_spectral_norm():
    a = torch.randn(B, D, D, dtype=torch.float64)
    z = torch.randn(B, *SHAPE, dtype=torch.float64)
    rho = contraction_factor(_linear_map(a), z, iters=1000, tol=1e-14, generator=_gen())
    assert rho.shape == (B,) and not rho.requires_grad
    exact = torch.linalg.matrix_norm(a, ord=2)
    torch.testing.assert_close(rho, exact, rtol=1e-6, atol=0)
    assert len(set(exact.tolist())) == B  # per-sample, not one norm for all


def test_contraction_factor_of_nonlinear_map_matches_exact_jacobian():
    w = nn.Parameter(torch.randn(D, D, dtype=torch.float64) / D**0.5)

    def f(z: torch.Tensor) -> torch.Tensor:
        # z: (B, 4, 5) -> (B, 4, 5)
        return torch.tanh(z.reshape(z.shape[0], -1) @ w.T).reshape(z.shape)

    z = 2 * torch.randn(B, *SHAPE, dtype=torch.float64)
    with torch.no_grad():  # the caller may be in no-grad mode
        rho = contraction_factor(f, z, iters=1000, tol=1e-14, generator=_gen())
    exact = torch.stack(
        [
            torch.linalg.matrix_norm(
                torch.autograd.functional.jacobian(f, z[b : b + 1]).reshape(D, D), ord=2
            )
            for b in range(B)
        ]
    )
    torch.testing.assert_close(rho, exact.detach(), rtol=1e-6, atol=0)
    assert w.grad is None


def test_contraction_factor_stops_early_and_never_overestimates():
    a = torch.randn(B, D, D, dtype=torch.float64)
    z = torch.randn(B, *SHAPE, dtype=torch.float64)
    rho = contraction_factor(_linear_map(a), z, iters=3, tol=0.0, generator=_gen())
    exact = torch.linalg.matrix_norm(a, ord=2)
    assert (rho <= exact * (1 + 1e-12)).all()
    assert (rho < exact * (1 - 1e-6)).any()  # three iterations are not converged


# --- jacobian_frobenius -----------------------------------------------------------------------


def test_jacobian_frobenius_estimates_mean_frobenius_norm_per_dim():
    a = torch.randn(B, D, D, dtype=torch.float64)
    z = torch.randn(B, *SHAPE, dtype=torch.float64)
    est = jacobian_frobenius(_linear_map(a), z, samples=2000, generator=_gen())
    exact = (a.pow(2).sum(dim=(1, 2)) / D).mean()
    assert est.shape == ()
    assert abs(est.item() / exact.item() - 1) < 0.05
    ident = jacobian_frobenius(lambda x: x, z, samples=2000, generator=_gen())
    assert abs(ident.item() - 1) < 0.05


def test_jacobian_frobenius_gradient_matches_analytic():
    # A small per-sample dimension keeps the probe noise of the gradient low (≈ √(D/samples)).
    d = 4
    a = nn.Parameter(torch.randn(B, d, d, dtype=torch.float64))
    z = torch.randn(B, 2, 2, dtype=torch.float64)
    est = jacobian_frobenius(_linear_map(a), z, samples=2000, generator=_gen())
    (grad,) = torch.autograd.grad(est, a)
    # Exact for any probes: the estimate is 2-homogeneous in A, so ⟨∇, A⟩ = 2·estimate.
    torch.testing.assert_close((grad * a).sum(), 2 * est.detach(), rtol=1e-10, atol=0)
    # In expectation: ∇ mean_b ‖A_b‖_F² / d = 2 A / (B·d).
    analytic = 2 * a.detach() / (B * d)
    rel = torch.linalg.vector_norm(grad - analytic) / torch.linalg.vector_norm(analytic)
    assert rel < 0.1


def test_jacobian_frobenius_under_no_grad_and_training_still_differentiable():
    lin = nn.Linear(D, D).double()
    z = torch.randn(B, D, dtype=torch.float64)
    with torch.no_grad():
        est = jacobian_frobenius(lin, z, samples=4, generator=_gen())
    est.backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    assert lin.bias.grad is None or lin.bias.grad.abs().sum() == 0  # J does not see the bias


# --- spectral_bound ---------------------------------------------------------------------------


def _bank() -> CellBank:
    bank = CellBank(3, d=8, d_msg=4, hidden=16).double()
    with torch.no_grad():
        bank.fc1.weight.mul_(3.0)  # every fc1 slice well above the bound
        bank.fc2.weight[0].mul_(0.1)  # one fc2 slice well below it
    return bank


def _inputs(batch: int = 5):
    return (
        torch.randn(batch, 3, 8, dtype=torch.float64),
        torch.randn(batch, 3, 4, dtype=torch.float64),
        torch.randn(batch, 3, 8, dtype=torch.float64),
    )


def test_spectral_bound_caps_cell_bank_slices():
    bank = _bank()
    before = spectral_norms(bank)
    assert (before["fc1.weight"] > 0.6).all() and before["fc2.weight"][0] < 0.4
    slice0 = bank.fc2.weight[0].detach().clone()
    assert spectral_bound(bank, 0.5) is bank
    bank.train()
    for _ in range(30):
        bank.step(*_inputs())
    norms = spectral_norms(bank)
    assert set(norms) == {"fc1.weight", "fc2.weight"}
    assert norms["fc1.weight"].shape == (3,)
    for sigma in norms.values():
        assert (sigma <= 0.5 * (1 + 1e-3)).all()
    assert (norms["fc1.weight"] >= 0.5 * (1 - 1e-3)).all()  # capped, not shrunk further
    assert torch.equal(bank.fc2.weight[0], slice0)  # below the bound: returned as is
    torch.testing.assert_close(norms["fc2.weight"][0], before["fc2.weight"][0])


def test_spectral_bound_keeps_batched_and_reference_paths_equal():
    bank = spectral_bound(_bank(), 0.5)
    s, m, e = _inputs()
    bank.train()
    with parametrize.cached():
        torch.testing.assert_close(
            bank.step(s, m, e), bank.step_reference(s, m, e), rtol=0, atol=1e-12
        )
    bank.eval()
    torch.testing.assert_close(bank.step(s, m, e), bank.step_reference(s, m, e), rtol=0, atol=1e-12)


def test_spectral_bound_gradients_reach_original_weights_across_updates():
    bank = spectral_bound(_bank(), 0.5).train()
    s, m, e = _inputs()
    # Two training forwards update the vectors in place between them; backward must still work.
    loss = bank.step(s, m, e).pow(2).sum() + bank.step(s, m, e).pow(2).sum()
    loss.backward()
    for layer in (bank.fc1, bank.fc2):
        grad = layer.parametrizations.weight.original.grad
        assert grad is not None and grad.abs().sum() > 0


def test_spectral_bound_gradient_is_exact_for_fixed_vectors():
    w = torch.randn(2, 5, 4, dtype=torch.float64)
    p = SpectralBound(w, 0.3).double().eval()
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(p, (w,))


def test_eval_mode_freezes_vectors_and_training_mode_updates_them():
    bank = spectral_bound(_bank(), 0.5)
    bound = bank.fc1.parametrizations.weight[0]
    u0, v0 = bound.u.clone(), bound.v.clone()
    bank.eval()
    bank.step(*_inputs())
    assert torch.equal(bound.u, u0) and torch.equal(bound.v, v0)
    bank.train()
    spectral_norms(bank)  # reading the norms does not advance the iteration
    assert torch.equal(bound.u, u0) and bound.training
    bank.step(*_inputs())
    assert not torch.equal(bound.u, u0)


def test_cached_computes_the_weight_once():
    bank = spectral_bound(_bank(), 0.5).train()
    bound = bank.fc1.parametrizations.weight[0]
    with parametrize.cached():
        bank.step(*_inputs())
        u1 = bound.u.clone()
        for _ in range(3):
            bank.step(*_inputs())
            bank.step_one(1, *(x[:, 1] for x in _inputs()))
        assert torch.equal(bound.u, u1)


def test_state_dict_round_trip_gives_identical_outputs():
    bank = spectral_bound(_bank(), 0.5).train()
    for _ in range(3):
        bank.step(*_inputs())
    state = bank.state_dict()
    assert "fc1.parametrizations.weight.0.u" in state and "fc2.parametrizations.weight.0.v" in state
    torch.manual_seed(123)
    fresh = spectral_bound(_bank(), 0.5)
    fresh.load_state_dict(state)
    s, m, e = _inputs()
    bank.eval(), fresh.eval()
    assert torch.equal(bank.step(s, m, e), fresh.step(s, m, e))
    bank.train(), fresh.train()
    assert torch.equal(bank.step(s, m, e), fresh.step(s, m, e))


def test_spectral_bound_on_nn_linear():
    lin = nn.Linear(6, 5)
    with torch.no_grad():
        lin.weight.mul_(5.0)
    net = nn.Sequential(lin, nn.Tanh(), nn.Linear(5, 3))
    spectral_bound(net, 1.0).train()
    x = torch.randn(4, 6)
    for _ in range(30):
        net(x)
    norms = spectral_norms(net)
    assert set(norms) == {"0.weight", "2.weight"} and norms["0.weight"].shape == (1,)
    assert 1 - 1e-3 <= norms["0.weight"].item() <= 1 + 1e-3
    assert (norms["2.weight"] <= 1 + 1e-3).all()
    torch.testing.assert_close(lin(x), x @ lin.weight.T + lin.bias)
    # the module itself can be the layer, and re-bounding updates the cap
    spectral_bound(lin, 0.25)
    assert len(lin.parametrizations.weight) == 1
    for _ in range(5):
        lin(x)
    assert spectral_norms(lin)["weight"].item() == pytest.approx(0.25, rel=1e-3)
