"""tertulia.optim: DMGD (linear memory = SGD momentum, the deep memory learns), Newton–Schulz,
and MultiFrequency (groups step every C calls on their chunk's mean gradient)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tertulia.optim import DMGD, MultiFrequency, newton_schulz

# ---------------------------------------------------------------------------------------------
# DMGD


def _regression(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
    x = torch.randn(64, 5)
    y = torch.sin(x.sum(1, keepdim=True))
    return model, x, y


def _fit(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int
) -> list[float]:
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _groups(model: nn.Module) -> list[dict]:
    # two groups, the second with its own lr: per-group settings must be honoured
    return [
        {"params": model[0].parameters()},
        {"params": model[2].parameters(), "lr": 0.02},
    ]


def test_linear_memory_equals_sgd_with_momentum():
    model, x, y = _regression()
    twin = copy.deepcopy(model)
    opt = DMGD(_groups(model), lr=0.05, momentum=0.9, memory="linear")
    ref = torch.optim.SGD(_groups(twin), lr=0.05, momentum=0.9)
    losses = _fit(model, opt, x, y, 60)
    _fit(twin, ref, x, y, 60)
    assert losses[-1] < 0.5 * losses[0]  # it is a real training run, not a no-op
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_deep_memory_is_trained_online_and_descends():
    model, x, y = _regression(1)
    opt = DMGD(model.parameters(), lr=0.003, momentum=0.9, inner_lr=0.05)
    losses = _fit(model, opt, x, y, 3)
    weight = model[0].weight
    first = {k: opt.state[weight][k].clone() for k in ("skip", "w1", "b1", "w2")}
    losses += _fit(model, opt, x, y, 297)
    for k, v in first.items():  # every part of the momentum MLP learns
        assert not torch.allclose(opt.state[weight][k], v, atol=1e-6), k
    assert losses[-1] < 0.2 * losses[0]


def test_deep_memory_starts_as_normalised_descent():
    torch.manual_seed(5)
    p = nn.Parameter(torch.randn(7, 3))
    start = p.detach().clone()
    opt = DMGD([p], lr=0.1)
    p.grad = torch.randn(7, 3)
    u = p.grad.clone()
    opt.step()
    expected = start - 0.1 * u / u.pow(2).mean().sqrt()
    torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


def test_no_nan_over_a_thousand_steps_on_a_rough_loss():
    torch.manual_seed(2)
    model = nn.Linear(4, 1)
    opt = DMGD(model.parameters(), lr=0.01)
    for _ in range(1000):
        x = 100 * torch.randn(16, 4)
        noise = 1e3 * torch.randn(16, 1)
        loss = (model(x) - x[:, :1] ** 2 + noise).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(v).all() for s in opt.state.values() for v in s.values())


def test_non_finite_gradients_leave_the_memory_untouched():
    torch.manual_seed(6)
    p = nn.Parameter(torch.randn(4, 4))
    opt = DMGD([p], lr=0.01)
    for _ in range(3):
        p.grad = torch.randn(4, 4)
        opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items()}
    p_before = p.detach().clone()
    p.grad = torch.randn(4, 4)
    p.grad[0, 0] = float("nan")
    opt.step()
    for k, v in before.items():
        assert torch.equal(opt.state[p][k], v), k
    assert torch.equal(p.detach(), p_before)
    p.grad = torch.randn(4, 4)
    opt.step()
    assert torch.isfinite(p).all() and not torch.equal(p.detach(), p_before)


@pytest.mark.parametrize("memory", ["mlp", "linear"])
def test_state_dict_round_trip_continues_identically(memory: str):
    model, x, y = _regression(3)
    opt = DMGD(model.parameters(), lr=0.01, memory=memory, newton_schulz=2)
    _fit(model, opt, x, y, 7)
    saved = copy.deepcopy(opt.state_dict())  # as if through a file: no shared tensors
    twin = copy.deepcopy(model)
    twin_opt = DMGD(twin.parameters(), lr=0.01, memory=memory, newton_schulz=2)
    twin_opt.load_state_dict(saved)
    _fit(model, opt, x, y, 5)
    _fit(twin, twin_opt, x, y, 5)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_newton_schulz_five_steps_orthogonalise():
    torch.manual_seed(4)
    m = torch.randn(8, 16)
    s = torch.linalg.svdvals(newton_schulz(m, 5))
    # Each normalised singular value σ ∈ (0, 1] follows the increasing scalar map
    # f(σ) = σ (15 − 10σ² + 3σ⁴)/8 ≥ σ, so all end in [f⁵(σ_min / ‖m‖_F), 1].
    sigma = float(torch.linalg.svdvals(m).min() / torch.linalg.matrix_norm(m))
    for _ in range(5):
        sigma = sigma * (15 - 10 * sigma**2 + 3 * sigma**4) / 8
    assert sigma > 0.99  # this matrix's bound (σ_min / ‖m‖_F ≈ 0.14)
    assert float(s.min()) >= sigma - 1e-5 and float(s.max()) <= 1 + 1e-5
    assert newton_schulz(torch.randn(16, 8), 5).shape == (16, 8)
    s30 = torch.linalg.svdvals(newton_schulz(torch.randn(16, 8), 30))
    torch.testing.assert_close(s30, torch.ones(8), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="2-D"):
        newton_schulz(torch.randn(3), 5)


def test_newton_schulz_update_keeps_its_norm_and_only_on_matrices():
    torch.manual_seed(7)
    w = nn.Parameter(torch.randn(8, 16))
    b = nn.Parameter(torch.randn(16))
    w0, b0 = w.detach().clone(), b.detach().clone()
    opt = DMGD([w, b], lr=0.1, memory="linear", newton_schulz=5)
    w.grad, b.grad = torch.randn(8, 16), torch.randn(16)
    gw, gb = w.grad.clone(), b.grad.clone()
    opt.step()
    step = w.detach() - w0
    direction = newton_schulz(-gw, 5)
    expected = direction * (0.1 * gw.norm() / direction.norm())
    torch.testing.assert_close(step, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.detach(), b0 - 0.1 * gb)  # 1-D: plain momentum step


def test_decoupled_weight_decay_grad_none_and_closure():
    torch.manual_seed(8)
    p = nn.Parameter(torch.randn(5))
    idle = nn.Parameter(torch.randn(5))
    p0, idle0 = p.detach().clone(), idle.detach().clone()
    opt = DMGD([p, idle], lr=0.1, memory="linear", weight_decay=0.5)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = 0.0 * p.sum()  # zero gradient: only the decay moves p
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == 0.0
    torch.testing.assert_close(p.detach(), p0 * (1 - 0.1 * 0.5))
    assert torch.equal(idle.detach(), idle0) and len(opt.state[idle]) == 0


def test_dmgd_bad_arguments():
    p = [nn.Parameter(torch.zeros(2))]
    for kwargs, word in [
        ({"memory": "deep"}, "memory"),
        ({"momentum": 1.0}, "momentum"),
        ({"lr": 0.0}, "lr"),
        ({"inner_lr": -1.0}, "inner_lr"),
        ({"hidden": 0}, "hidden"),
        ({"newton_schulz": -1}, "newton_schulz"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"beta": 1.0}, "beta"),
    ]:
        with pytest.raises(ValueError, match=word):
            DMGD(p, **kwargs)
    with pytest.raises(ValueError, match="lr"):
        DMGD([{"params": p, "lr": -1.0}])


# ---------------------------------------------------------------------------------------------
# MultiFrequency


def _layers() -> list[nn.Linear]:
    torch.manual_seed(0)
    return [nn.Linear(4, 4) for _ in range(3)]


def _adam(layers: list[nn.Linear]) -> MultiFrequency:
    groups = [
        {"params": layer.parameters(), "period": c}
        for layer, c in zip(layers, (1, 2, 4), strict=True)
    ]
    return MultiFrequency(torch.optim.Adam(groups, lr=0.05, weight_decay=0.1))


def _chain_loss(layers: list[nn.Linear], x: torch.Tensor) -> torch.Tensor:
    h = x
    for layer in layers:
        h = torch.tanh(layer(h))
    return h.pow(2).sum()


def test_a_group_changes_exactly_on_multiples_of_its_period():
    layers = _layers()
    opt = _adam(layers)
    assert isinstance(opt, torch.optim.Optimizer)
    for step in range(1, 13):
        before = [[p.detach().clone() for p in layer.parameters()] for layer in layers]
        opt.zero_grad()
        _chain_loss(layers, torch.randn(8, 4)).backward()
        grads = [[p.grad.clone() for p in layer.parameters()] for layer in layers]
        opt.step()
        for layer, old, g_old, period in zip(layers, before, grads, (1, 2, 4), strict=True):
            for p, p0, g in zip(layer.parameters(), old, g_old, strict=True):
                if step % period == 0:
                    assert not torch.equal(p.detach(), p0), (step, period)
                else:
                    assert torch.equal(p.detach(), p0), (step, period)  # bit-identical
                    assert torch.equal(p.grad, g)  # the caller's gradient is given back


def test_the_update_is_one_sgd_step_on_the_chunk_mean_gradient():
    torch.manual_seed(1)
    layer = nn.Linear(3, 2)
    opt = MultiFrequency(torch.optim.SGD([{"params": layer.parameters(), "period": 3}], lr=0.5))
    start = [p.detach().clone() for p in layer.parameters()]
    total = [torch.zeros_like(p) for p in layer.parameters()]
    for _ in range(3):
        x = torch.randn(5, 3)
        opt.zero_grad()
        layer(x).pow(2).mean().backward()
        for g, p in zip(total, layer.parameters(), strict=True):
            g += p.grad
        opt.step()
    for p, p0, g in zip(layer.parameters(), start, total, strict=True):
        torch.testing.assert_close(p.detach(), p0 - 0.5 * g / 3, rtol=1e-6, atol=1e-7)


def test_multifrequency_state_dict_round_trip_mid_chunk():
    layers = _layers()
    opt = _adam(layers)
    xs = [torch.randn(8, 4, generator=torch.Generator().manual_seed(i)) for i in range(11)]
    for x in xs[:5]:  # call 5: the period-2 and period-4 groups hold a partial chunk
        opt.zero_grad()
        _chain_loss(layers, x).backward()
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    assert saved["param_groups"][0]["multifrequency_calls"] == 5
    assert sum("multifrequency_acc" in s for s in saved["state"].values()) == 4
    copies = _layers()
    for c, layer in zip(copies, layers, strict=True):
        c.load_state_dict(layer.state_dict())
    other = _adam(copies)
    other.load_state_dict(saved)
    assert other.calls == 5
    for x in xs[5:]:
        for model, o in ((layers, opt), (copies, other)):
            o.zero_grad()
            _chain_loss(model, x).backward()
            o.step()
    for c, layer in zip(copies, layers, strict=True):
        for a, b in zip(c.parameters(), layer.parameters(), strict=True):
            assert torch.equal(a, b)


def test_multifrequency_schedulers_hooks_and_bad_periods():
    layer = nn.Linear(2, 2)
    opt = MultiFrequency(torch.optim.SGD([{"params": layer.parameters(), "period": 2}], lr=1.0))
    calls: list[int] = []
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append(o.calls))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    layer(torch.ones(1, 2)).sum().backward()
    opt.step()
    sched.step()
    assert opt.inner.param_groups[0]["lr"] == pytest.approx(0.5)
    assert calls == [1]
    extra = nn.Parameter(torch.zeros(2))
    opt.add_param_group({"params": [extra], "period": 3})
    assert opt.inner.param_groups[-1]["period"] == 3 and len(opt.param_groups) == 2
    with pytest.raises(ValueError, match="period"):
        MultiFrequency(torch.optim.SGD([{"params": layer.parameters(), "period": 0}], lr=1.0))
    with pytest.raises(ValueError, match="Optimizer"):
        MultiFrequency(layer)  # type: ignore[arg-type]


def test_multifrequency_wraps_dmgd():
    model, x, y = _regression(9)
    groups = [
        {"params": model[0].parameters(), "period": 1},
        {"params": model[2].parameters(), "period": 2},
    ]
    opt = MultiFrequency(DMGD(groups, lr=0.01))
    w_before = model[2].weight.detach().clone()
    losses = _fit(model, opt, x, y, 1)
    assert torch.equal(model[2].weight.detach(), w_before)
    losses += _fit(model, opt, x, y, 99)
    assert losses[-1] < losses[0]
