"""The Kalman cell: a learned predict/update step per round, and its orchestra."""

from __future__ import annotations

import math

import pytest
import torch

from tertulia.nn import Orchestra, make_graph
from tertulia.nn.heads import KalmanHead, soft_clamp_log_var
from tertulia.nn.kalman_cell import KalmanCellBank, information_update


def _bank(n=3, d=6, d_msg=2) -> KalmanCellBank:
    bank = KalmanCellBank(n, d=d, d_msg=d_msg).double()
    with torch.no_grad():  # move every parameter off its tidy initial value
        for p in bank.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return bank


def _inputs(bank: KalmanCellBank, batch=4):
    mu = torch.randn(batch, bank.n, bank.d_h).double()
    ell = torch.randn(batch, bank.n, bank.d_h).double() - 1
    s = torch.cat([mu, ell], dim=-1)
    m = torch.randn(batch, bank.n, bank.d_msg).double()
    e = torch.randn(batch, bank.n, bank.d).double()
    return s, m, e


def _orchestra(**kw) -> Orchestra:
    kw.setdefault("graph", make_graph("ring", 4))
    return Orchestra(grid=32, window=2, d=8, d_msg=4, d_key=4, halo=1, cell="kalman", **kw)


def test_batched_step_equals_per_cell_reference_and_step_one():
    bank = _bank()
    s, m, e = _inputs(bank)
    out = bank.step(s, m, e)
    torch.testing.assert_close(out, bank.step_reference(s, m, e), rtol=0, atol=1e-12)
    for i in range(bank.n):
        one = bank.step_one(i, s[:, i], m[:, i], e[:, i])
        torch.testing.assert_close(one, out[:, i], rtol=0, atol=1e-12)
    # cell i's update reads only cell i's inputs
    s2 = s.clone()
    s2[:, 1] += 1.0
    torch.testing.assert_close(bank.step(s2, m, e)[:, [0, 2]], out[:, [0, 2]], rtol=0, atol=0)


def test_one_update_is_the_textbook_kalman_step():
    """Covariance form with full matrices (Joseph update) on the diagonal prior."""
    bank = _bank()
    s, m, e = _inputs(bank)
    out = bank.step(s, m, e)
    innov_lv = bank.innovation_log_var(s, m, e)
    q, r = bank.process_noise(), bank.measurement_noise(e)
    with torch.no_grad():
        for b in range(s.shape[0]):
            for i in range(bank.n):
                a = bank.predict.weight[i, : bank.d_h].T  # A_i
                g = bank.predict.weight[i, bank.d_h :].T  # G_i
                h = bank.obs[i].T  # H_i: (d_o, d_h)
                mu, p = s[b, i, : bank.d_h], s[b, i, bank.d_h :].exp()
                mu_prior = a @ mu + g @ m[b, i] + bank.predict.bias[i]
                p_prior = torch.diag(torch.diag(a @ torch.diag(p) @ a.T) + q[i])
                rr = torch.diag(r[b, i])
                innov_cov = h @ p_prior @ h.T + rr
                gain = p_prior @ h.T @ torch.linalg.inv(innov_cov)
                mu_post = mu_prior + gain @ (e[b, i] - h @ mu_prior)
                ikh = torch.eye(bank.d_h, dtype=s.dtype) - gain @ h
                p_post = ikh @ p_prior @ ikh.T + gain @ rr @ gain.T
                want = torch.cat([mu_post, torch.diag(p_post).log()])
                torch.testing.assert_close(out[b, i], want, rtol=0, atol=1e-12)
                torch.testing.assert_close(
                    innov_lv[b, i], torch.diag(innov_cov).log(), rtol=0, atol=1e-12
                )


def test_rounds_converge_to_the_scalar_riccati_steady_state():
    a_, q_, r_, z_ = 0.8, 0.05, 0.3, 1.7
    bank = KalmanCellBank(1, d=2, d_msg=1).double()
    with torch.no_grad():
        # A = a, G = 0
        bank.predict.weight.copy_(torch.tensor([[[a_], [0.0]]], dtype=torch.float64))
        bank.predict.bias.zero_()
        bank.obs.copy_(torch.tensor([[[1.0, 0.0]]]))  # H = [1, 0]: only z_0 is measured
        bank.noise_weight.zero_()
        bank.noise_bias.fill_(math.log(math.expm1(r_ - bank.r_min)))
        bank.q_raw.fill_(math.log(math.expm1(q_ - bank.q_min)))
    e = torch.tensor([[[z_, -5.0]]], dtype=torch.float64)
    torch.testing.assert_close(bank.process_noise(), torch.tensor([[q_]]).double())
    torch.testing.assert_close(bank.measurement_noise(e)[..., 0], torch.tensor([[r_]]).double())
    m = torch.zeros(1, 1, 1).double()
    s = bank.initial(e)
    for _ in range(200):
        s = bank.step(s, m, e)
    # posterior steady state: p = (a²p + q) r / (a²p + q + r)  ⇔  a²p² + (q + r − a²r) p − q r = 0
    bb = q_ + r_ - a_**2 * r_
    p_star = (-bb + math.sqrt(bb**2 + 4 * a_**2 * q_ * r_)) / (2 * a_**2)
    p_prior = a_**2 * p_star + q_
    assert p_star == pytest.approx(p_prior * r_ / (p_prior + r_), rel=1e-12)
    gain = p_prior / (p_prior + r_)
    mu_star = gain * z_ / (1 - (1 - gain) * a_)  # μ = (1 − K) a μ + K z
    torch.testing.assert_close(s[0, 0, 1].exp().item(), p_star, rtol=1e-12, atol=0)
    torch.testing.assert_close(s[0, 0, 0].item(), mu_star, rtol=1e-12, atol=0)
    torch.testing.assert_close(bank.step(s, m, e), s, rtol=0, atol=1e-14)  # a fixed point


def test_information_update_matches_a_dense_solve():
    k = 4
    h = torch.randn(5, 6, k).double()
    info = h.transpose(-1, -2) @ h
    mu, v = torch.randn(2, 5, k).double()
    p = torch.rand(5, k).double() + 0.1
    mu_post, p_post = information_update(mu, p, info, v)
    cov = torch.linalg.inv(torch.diag_embed(1 / p) + info)
    torch.testing.assert_close(mu_post, mu + (cov @ v[..., None])[..., 0])
    torch.testing.assert_close(p_post, cov.diagonal(dim1=-2, dim2=-1))


def test_kalman_head_variance_is_the_propagated_state_variance():
    head = KalmanHead(3, d=6, points=5).double()
    with torch.no_grad():
        head.out.weight.normal_()
    s = torch.randn(2, 3, 6).double()
    delta, lv = head(s)
    mu, p = s[..., :3], s[..., 3:].exp()
    for i in range(3):
        w = head.out.weight[i].T  # (P, d_h)
        torch.testing.assert_close(delta[:, i], mu[:, i] @ w.T + head.out.bias[i])
        rho = torch.nn.functional.softplus(head.noise_raw[i]) + head.rho_min
        var = torch.stack([torch.diag(w @ torch.diag(pb) @ w.T) for pb in p[:, i]]) + rho
        torch.testing.assert_close(lv[:, i], soft_clamp_log_var(var.log()), rtol=0, atol=1e-12)
    # more state uncertainty, more predictive variance
    s_wide = s.clone()
    s_wide[..., 3:] += 1.0
    assert torch.all(head(s_wide)[1] > lv)


def test_odd_state_size_is_rejected():
    with pytest.raises(ValueError, match="even state size"):
        KalmanCellBank(2, d=5, d_msg=2)
    with pytest.raises(ValueError, match="even state size"):
        Orchestra(grid=32, window=2, graph=make_graph("ring", 4), d=7, cell="kalman")
    with pytest.raises(ValueError, match="cell must be"):
        Orchestra(grid=32, window=2, graph=make_graph("ring", 4), cell="lstm")


@pytest.mark.parametrize("schedule", ["sync", "async"])
@pytest.mark.parametrize("extras", [{}, {"coordinator": True, "memory_slots": 2}])
def test_kalman_orchestra_batched_equals_loop(schedule, extras):
    orch = _orchestra(graph=make_graph("ring", 4, **extras), schedule=schedule).double()
    x = torch.randn(3, 2, 32).double()
    batched = orch(x)
    orch.kernel = "loop"
    loop = orch(x)
    torch.testing.assert_close(batched.mean, loop.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(batched.log_var, loop.log_var, rtol=0, atol=1e-12)
    assert batched.mean.shape == batched.log_var.shape == (3, 32)
    assert torch.isfinite(batched.log_var).all()
    assert batched.trace.residuals[-1] < batched.trace.residuals[0]


def test_kalman_orchestra_trains_and_gradients_reach_the_filter():
    torch.manual_seed(0)
    orch = _orchestra()
    x = torch.randn(16, 2, 32).cumsum(-1) * 0.3
    y = x[:, -1] + 0.1 * torch.randn(16, 32)
    opt = torch.optim.Adam(orch.parameters(), lr=2e-2)

    def nll():
        pred = orch(x)
        return 0.5 * ((y - pred.mean) ** 2 / pred.log_var.exp() + pred.log_var).mean()

    first = nll()
    first.backward()
    bank = orch.bank
    for name in ("predict.weight", "obs", "noise_weight", "noise_bias", "q_raw", "mu0", "log_p0"):
        grad = bank.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    for _ in range(60):
        opt.step()
        opt.zero_grad()
        nll().backward()
    assert nll().item() < first.item() - 0.5


def test_kalman_deq_with_anderson_and_implicit_gradient():
    from tertulia.solvers import Equilibrium, SolverSpec

    solver = Equilibrium(
        SolverSpec("anderson", tol=1e-8, max_iter=60),
        adjoint=SolverSpec("anderson", tol=1e-8, max_iter=60),
    )
    orch = _orchestra(solver=solver).double()
    x = torch.randn(3, 2, 32).double()
    pred = orch(x)
    assert pred.trace.residuals[-1] < 1e-8
    f, _ = orch.fixed_point_problem(x)
    s_star = pred.trace.solver.state
    torch.testing.assert_close(f(s_star), s_star, rtol=0, atol=1e-7)
    (pred.mean.sum() + pred.log_var.sum()).backward()
    for name in ("predict.weight", "obs", "noise_weight", "q_raw"):
        grad = orch.bank.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_recipe_builds_a_kalman_orchestra_with_spectral_bound_and_blocks():
    from tertulia import build
    from tertulia.config import load_recipe
    from tertulia.stability import spectral_norms

    recipe = load_recipe("smoke", ["model.cell=kalman", "model.spectral_norm=0.5"])
    orch = build.build_orchestra(recipe)
    assert isinstance(orch.bank, KalmanCellBank) and isinstance(orch.head, KalmanHead)
    for _ in range(20):
        orch(torch.randn(4, recipe.data.window, recipe.data.grid))
    norms = spectral_norms(orch.bank)
    assert set(norms) == {"predict.weight"}  # [A; G], hence ‖A‖₂ ≤ bound
    assert float(norms["predict.weight"].max()) <= 0.5 * 1.01
    assert torch.linalg.matrix_norm(orch.bank.transition(), ord=2).max() <= 0.5 * 1.01
    # every per-cell parameter is stacked per node (block training freezes rows)
    listed = {id(p) for p, _ in orch.per_cell_parameters()}
    assert {id(p) for p in orch.bank.parameters()} <= listed
    assert {id(p) for p in orch.head.parameters()} <= listed


def test_pipeline_trains_a_kalman_deq_orchestra_in_blocks(tmp_path):
    """DEQ + spectral bound + Jacobian penalty + block training, through the real pipeline."""
    from tertulia import jobs
    from tertulia.config import load_recipe
    from tertulia.jobs import forecast
    from tertulia.train import load_checkpoint

    from .conftest import TINY

    recipe = load_recipe(
        "burgers",
        TINY
        + [
            "model.cell=kalman",
            "baselines.cell=none",
            "baselines.mlp=false",
            "baselines.persistence=false",
            "train.mode=deq",
            "model.rounds=20",
            "model.spectral_norm=0.9",
            "train.jac_reg=0.5",
            "train.rho_every=2",
            "train.blocks.kind=custom",
            "train.blocks.schedule=[[0, 1]]",
        ],
    )
    metrics = jobs.run(recipe, tmp_path / "run")
    orch = metrics["models"]["orchestra"]
    assert all(math.isfinite(v) for v in orch.values() if isinstance(v, float)), orch
    start = forecast.build_trainable_models(recipe)["orchestra"]  # same seed: initial weights
    assert isinstance(start.bank, KalmanCellBank)
    trained = load_checkpoint(tmp_path / "run" / "checkpoint" / "orchestra")[0]["model"]
    for name, p in start.bank.named_parameters():
        key = f"bank.{name}"
        torch.testing.assert_close(trained[key][2:], p.detach()[2:], rtol=0, atol=0)  # frozen
    assert not torch.equal(trained["bank.obs"][:2], start.bank.obs.detach()[:2])  # trained
