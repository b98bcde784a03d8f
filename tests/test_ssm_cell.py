"""The SSM cell: each round a state/message-selected diagonal SSM scans the cell's patch."""

from __future__ import annotations

import math

import pytest
import torch

from tertulia.nn import Orchestra, make_graph
from tertulia.nn.ssm_cell import SSMCellBank


def _bank(n=3, d=6, d_msg=2, patch=7, window=3, channels=2, state=4) -> SSMCellBank:
    bank = SSMCellBank(
        n, d=d, d_msg=d_msg, hidden=8, patch=patch, window=window, channels=channels, state=state
    ).double()
    with torch.no_grad():  # move every parameter off its tidy initial value
        for p in bank.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return bank


def _inputs(bank: SSMCellBank, batch=4):
    s = torch.randn(batch, bank.n, bank.d).double()
    m = torch.randn(batch, bank.n, bank.d_msg).double()
    u = bank.lift_window(torch.randn(batch, bank.n, bank.patch, bank.window).double())
    return s, m, u


def _orchestra(**kw) -> Orchestra:
    kw.setdefault("graph", make_graph("ring", 4))
    return Orchestra(
        grid=32,
        window=2,
        d=8,
        d_msg=4,
        d_key=4,
        halo=1,
        cell="ssm",
        ssm_channels=3,
        ssm_state=4,
        **kw,
    )


def test_fft_step_equals_the_literal_recurrence_per_cell():
    bank = _bank()
    s, m, u = _inputs(bank)
    out = bank.step(s, m, u)
    torch.testing.assert_close(out, bank.step_reference(s, m, u), rtol=0, atol=1e-12)
    for i in range(bank.n):
        one = bank.step_one(i, s[:, i], m[:, i], u[:, i])
        torch.testing.assert_close(one, out[:, i], rtol=0, atol=1e-12)
    s2 = s.clone()  # cell i's update reads only cell i's inputs
    s2[:, 1] += 1.0
    torch.testing.assert_close(bank.step(s2, m, u)[:, [0, 2]], out[:, [0, 2]], rtol=0, atol=0)


def test_scan_is_the_bidirectional_convolution_written_out():
    """y[p] = Σ_{q≤p} K→[p−q] u[q] + Σ_{q>p} K←[q−p−1] u[q] + D u[p], K from Λ, C, Δ directly."""
    bank = _bank(n=2, patch=5, channels=2, state=4)
    b = 3
    u = torch.randn(b, bank.n, bank.patch, bank.channels).double()
    dt = torch.rand(b, bank.n, bank.channels).double() * 0.5 + 0.05
    y = bank.scan(u, dt)
    lam = torch.complex(-bank.log_neg_re.exp(), bank.im)  # (n, h, N/2)
    C = torch.complex(bank.C_re, bank.C_im)  # (n, 2, h, N/2)
    expect = torch.zeros_like(y)
    for bi in range(b):
        for i in range(bank.n):
            for c in range(bank.channels):
                dl = dt[bi, i, c] * lam[i, c]
                bbar = (torch.exp(dl) - 1) / lam[i, c]

                def k(direction, lag, i=i, c=c, dl=dl, bbar=bbar):
                    return 2 * (C[i, direction, c] * bbar * torch.exp(lag * dl)).sum().real

                for p in range(bank.patch):
                    acc = bank.D[i, c] * u[bi, i, p, c]
                    for q in range(bank.patch):
                        if q <= p:
                            acc = acc + k(0, p - q) * u[bi, i, q, c]
                        else:
                            acc = acc + k(1, q - p - 1) * u[bi, i, q, c]
                    expect[bi, i, p, c] = acc
    torch.testing.assert_close(y, expect, rtol=0, atol=1e-12)


def test_messages_select_the_step_sizes():
    bank = _bank()
    s, m, u = _inputs(bank)
    dt = bank.step_sizes(s, m)
    assert dt.shape == (4, bank.n, bank.channels) and (dt > 0).all()
    assert not torch.allclose(dt, bank.step_sizes(s, m + 1.0))
    # at the selector's rest point Δ is the initial step size, log-uniform in [dt_min, dt_max]
    fresh = SSMCellBank(4, d=6, d_msg=2, hidden=8, patch=5, window=2, dt_min=0.02, dt_max=0.2)
    dt0 = fresh.rest_step_sizes()
    assert dt0.min() >= 0.02 * (1 - 1e-5) and dt0.max() <= 0.2 * (1 + 1e-5)
    torch.testing.assert_close(fresh.initial(torch.zeros(1, 4, 5, 8))[0], fresh.read.bias)


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="even state size"):
        SSMCellBank(2, d=4, d_msg=2, hidden=4, patch=4, window=2, state=5)
    with pytest.raises(ValueError, match="dt_min"):
        SSMCellBank(2, d=4, d_msg=2, hidden=4, patch=4, window=2, dt_min=0.5, dt_max=0.1)
    with pytest.raises(ValueError, match="'trm', 'kalman' or 'ssm'"):
        Orchestra(grid=32, window=2, graph=make_graph("ring", 4), cell="lstm")


def test_gradients_of_the_fft_path_match_finite_differences():
    bank = _bank(n=2, d=3, d_msg=2, patch=4, window=2, channels=2, state=2)
    s, m, u = _inputs(bank, batch=2)
    s.requires_grad_(True)
    m.requires_grad_(True)
    u.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b, c: bank.step(a, b, c), (s, m, u))


@pytest.mark.parametrize("schedule", ["sync", "async"])
@pytest.mark.parametrize("extras", [{}, {"coordinator": True, "memory_slots": 2}])
def test_ssm_orchestra_batched_equals_loop(schedule, extras):
    orch = _orchestra(graph=make_graph("ring", 4, **extras), schedule=schedule).double()
    x = torch.randn(3, 2, 32).double()
    batched = orch(x)
    orch.kernel = "loop"
    loop = orch(x)
    torch.testing.assert_close(batched.mean, loop.mean, rtol=0, atol=1e-11)
    torch.testing.assert_close(batched.log_var, loop.log_var, rtol=0, atol=1e-11)
    assert batched.mean.shape == batched.log_var.shape == (3, 32)


def test_ssm_orchestra_trains_and_every_parameter_is_stacked_per_cell():
    torch.manual_seed(0)
    orch = _orchestra()
    listed = [p for p, _ in orch.per_cell_parameters()]
    assert len({id(p) for p in listed}) == len(listed)  # nothing listed twice
    assert {id(p) for p in orch.bank.parameters()} <= {id(p) for p in listed}
    x = torch.randn(16, 2, 32).cumsum(-1) * 0.3
    y = x[:, -1] + 0.1 * torch.randn(16, 32)
    opt = torch.optim.Adam(orch.parameters(), lr=1e-2)

    def nll():
        pred = orch(x)
        return 0.5 * ((y - pred.mean) ** 2 / pred.log_var.exp() + pred.log_var).mean()

    first = nll()
    first.backward()
    for name in ("lift.weight", "select.weight", "log_neg_re", "im", "C_re", "C_im", "D"):
        grad = orch.bank.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    for _ in range(60):
        opt.step()
        opt.zero_grad()
        nll().backward()
    assert nll().item() < first.item() - 0.5


def test_ssm_deq_reaches_a_fixed_point_with_spectral_bound():
    from tertulia.solvers import Equilibrium, SolverSpec
    from tertulia.stability import spectral_bound, spectral_norms

    solver = Equilibrium(
        SolverSpec("anderson", tol=1e-8, max_iter=80),
        adjoint=SolverSpec("anderson", tol=1e-8, max_iter=80),
    )
    orch = _orchestra(solver=solver, skip="input").double()
    spectral_bound(orch.bank, 0.5)
    spectral_bound(orch.messenger, 0.5)
    x = torch.randn(3, 2, 32).double()
    with torch.no_grad():  # let the power iterations settle
        for _ in range(20):
            orch(x)
    pred = orch(x)
    assert pred.trace.residuals[-1] < 1e-8
    (pred.mean.sum() + pred.log_var.sum()).backward()
    grad = orch.bank.get_parameter("log_neg_re").grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(float(v.max()) <= 0.5 * 1.01 for v in spectral_norms(orch.bank).values())


def test_recipe_selects_the_ssm_cell_and_its_comparison(tmp_path):
    from tertulia import jobs
    from tertulia.config import load_recipe
    from tertulia.errors import ConfigError
    from tertulia.jobs import forecast

    from .conftest import TINY

    recipe = load_recipe(
        "burgers",
        TINY
        + [
            "model.cell=ssm",
            "model.ssm_channels=2",
            "model.ssm_state=4",
            "baselines.mlp=false",
            "baselines.persistence=false",
        ],
    )
    models = forecast.build_trainable_models(recipe)
    assert isinstance(models["orchestra"].bank, SSMCellBank)
    assert "orchestra_trm" in models  # baselines.cell=auto compares with the TRM cell
    metrics = jobs.run(recipe, tmp_path / "run")
    for key in ("orchestra", "orchestra_trm"):
        row = metrics["models"][key]
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
    with pytest.raises(ConfigError, match="ssm_state"):
        load_recipe("burgers", ["model.cell=ssm", "model.ssm_state=5"])
