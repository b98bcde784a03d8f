"""Deep momentum gradient descent: linear memory = SGD momentum, the deep memory learns."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tertulia.optim import DMGD, newton_schulz


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
    x = torch.randn(64, 5)
    y = torch.sin(x.sum(1, keepdim=True))
    return model, x, y


def _fit(model, opt, x, y, steps):
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_linear_memory_is_sgd_with_momentum():
    model, x, y = _problem()
    twin = copy.deepcopy(model)
    _fit(model, DMGD(model.parameters(), lr=0.05, momentum=0.9, memory="linear"), x, y, 60)
    _fit(twin, torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9), x, y, 60)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_deep_memory_is_trained_and_descends():
    model, x, y = _problem(1)
    opt = DMGD(model.parameters(), lr=0.003, momentum=0.9, inner_lr=0.05)
    losses = _fit(model, opt, x, y, 5)
    first = {k: v.clone() for k, v in opt.state[model[0].weight].items() if k in ("w1", "w2")}
    losses += _fit(model, opt, x, y, 295)
    state = opt.state[model[0].weight]
    assert not torch.equal(state["w2"], first["w2"])  # the momentum MLP learns online
    assert not torch.equal(state["w1"], first["w1"])
    assert losses[-1] < 0.2 * losses[0]


def test_no_nan_over_a_thousand_steps_on_a_rough_loss():
    torch.manual_seed(2)
    model = nn.Linear(4, 1)
    opt = DMGD(model.parameters(), lr=0.01)
    for _ in range(1000):
        x = 100 * torch.randn(16, 4)
        loss = (model(x) - x[:, :1] ** 2).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(v).all() for s in opt.state.values() for v in s.values())


def test_state_dict_round_trip_continues_identically():
    model, x, y = _problem(3)
    opt = DMGD(model.parameters(), lr=0.01)
    _fit(model, opt, x, y, 7)
    saved = copy.deepcopy(opt.state_dict())
    twin = copy.deepcopy(model)
    twin_opt = DMGD(twin.parameters(), lr=0.01)
    twin_opt.load_state_dict(saved)
    _fit(model, opt, x, y, 5)
    _fit(twin, twin_opt, x, y, 5)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_newton_schulz_orthogonalises():
    torch.manual_seed(4)
    m = torch.randn(8, 16)
    s = torch.linalg.svdvals(newton_schulz(m, 30))
    assert torch.allclose(s, torch.ones_like(s), atol=1e-3)
    assert newton_schulz(torch.randn(16, 8), 30).shape == (16, 8)


def test_bad_arguments():
    p = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="memory"):
        DMGD(p, memory="deep")
    with pytest.raises(ValueError, match="momentum"):
        DMGD(p, momentum=1.0)
