"""Continuum memory: the multi-frequency rule, the CMS network and the ``continual`` job."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from tertulia.cli import app
from tertulia.nn.memory import ContinuumMLP
from tertulia.optim import MultiFrequency


def _three_groups() -> tuple[list[nn.Linear], MultiFrequency]:
    torch.manual_seed(0)
    layers = [nn.Linear(4, 4) for _ in range(3)]
    inner = torch.optim.Adam(
        [
            {"params": layer.parameters(), "period": c}
            for layer, c in zip(layers, (1, 2, 4), strict=True)
        ],
        lr=0.05,
        weight_decay=0.1,
    )
    return layers, MultiFrequency(inner)


def _loss(layers: list[nn.Linear], x: torch.Tensor) -> torch.Tensor:
    h = x
    for layer in layers:
        h = torch.tanh(layer(h))
    return h.pow(2).sum()


def test_a_level_changes_only_on_multiples_of_its_period():
    layers, opt = _three_groups()
    for step in range(1, 13):
        before = [layer.weight.detach().clone() for layer in layers]
        opt.zero_grad()
        _loss(layers, torch.randn(8, 4)).backward()
        opt.step()
        for layer, old, period in zip(layers, before, (1, 2, 4), strict=True):
            changed = not torch.equal(layer.weight, old)
            assert changed == (step % period == 0), (step, period)


def test_the_update_is_one_step_on_the_chunk_mean_gradient():
    torch.manual_seed(1)
    layer = nn.Linear(3, 2)
    opt = MultiFrequency(torch.optim.SGD([{"params": layer.parameters(), "period": 3}], lr=0.5))
    start = [p.detach().clone() for p in layer.parameters()]
    grads = [torch.zeros_like(p) for p in layer.parameters()]
    for _ in range(3):
        x = torch.randn(5, 3)
        opt.zero_grad()
        layer(x).pow(2).mean().backward()
        for g, p in zip(grads, layer.parameters(), strict=True):
            g += p.grad
        opt.step()
    for p, p0, g in zip(layer.parameters(), start, grads, strict=True):
        torch.testing.assert_close(p.detach(), p0 - 0.5 * g / 3, rtol=1e-6, atol=1e-7)


def test_state_dict_round_trip_continues_the_same_run():
    layers, opt = _three_groups()
    xs = [torch.randn(8, 4, generator=torch.Generator().manual_seed(i)) for i in range(10)]
    for x in xs[:5]:
        opt.zero_grad()
        _loss(layers, x).backward()
        opt.step()
    saved = copy.deepcopy(opt.state_dict())  # as if through a file: no shared tensors
    copies = [nn.Linear(4, 4) for _ in range(3)]
    for c, layer in zip(copies, layers, strict=True):
        c.load_state_dict(layer.state_dict())
    other = MultiFrequency(
        torch.optim.Adam(
            [
                {"params": c.parameters(), "period": p}
                for c, p in zip(copies, (1, 2, 4), strict=True)
            ],
            lr=0.05,
            weight_decay=0.1,
        )
    )
    other.load_state_dict(saved)
    for x in xs[5:]:
        for model, o in ((layers, opt), (copies, other)):
            o.zero_grad()
            _loss(model, x).backward()
            o.step()
    for c, layer in zip(copies, layers, strict=True):
        assert torch.equal(c.weight, layer.weight)


def test_learning_rate_schedulers_and_bad_periods():
    layer = nn.Linear(2, 2)
    opt = MultiFrequency(torch.optim.SGD([{"params": layer.parameters(), "period": 2}], lr=1.0))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    layer(torch.ones(1, 2)).sum().backward()
    opt.step()
    sched.step()
    assert opt.inner.param_groups[0]["lr"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="period"):
        MultiFrequency(torch.optim.SGD([{"params": layer.parameters(), "period": 0}], lr=1.0))


def test_cms_network_groups_its_levels_by_period():
    net = ContinuumMLP(12, 3, d=8, hidden=16, periods=(1, 4, 16))
    groups = net.period_groups(lr=0.1)
    assert [g["period"] for g in groups] == [1, 1, 4, 16]
    assert all(g["lr"] == 0.1 for g in groups)
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in net.parameters())
    assert net(torch.randn(5, 3, 4)).shape == (5, 3)
    with pytest.raises(ValueError, match="periods"):
        ContinuumMLP(4, 2, periods=())


def test_continual_run_fills_the_contract_and_reports(tmp_path):
    runner = CliRunner()
    sets = [
        "data.grid=16",
        "data.frames=8",
        "data.n_train=4",
        "data.n_test=2",
        "data.window=2",
        "nus=[0.2, 0.05]",
        "model.d=8",
        "model.hidden=8",
        "train.steps=8",
        "eval_every=4",
    ]
    args = ["run", "continual", "--out", str(tmp_path / "c")]
    for s in sets:
        args += ["--set", s]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert set(m["models"]) == {"mlp", "cms", "mlp_slow"}
    for row in m["models"].values():
        assert isinstance(row["forgetting"], float)
        assert len(row["R"]) == 2 and len(row["R"][0]) == 2
        # forgetting is the last row minus the diagonal
        assert row["forgetting"] == pytest.approx(row["R"][1][0] - row["R"][0][0])
    assert len(set(m["params"].values())) == 1  # equal parameters
    assert m["curves"]["cms"]["steps"] == [4, 8, 12, 16]
    assert (tmp_path / "c" / "continual_matrix.png").is_file()
    bad = runner.invoke(app, ["run", "continual", "--set", "nus=[0.1]"])
    assert bad.exit_code == 2 and "two regimes" in bad.output


@pytest.mark.parametrize("period", [1, 3, 4])
def test_online_cms_level_learns_only_at_multiples_of_its_period(period):
    """A token's write reaches later reads only once its level's chunk of C tokens closes."""
    from tertulia.nn.memory import OnlineContinuumMemory

    torch.manual_seed(0)
    cms = OnlineContinuumMemory(8, periods=(period,))
    x = torch.randn(1, 13, 8)
    base = cms(x).detach()
    for s in range(12):
        bumped = x.clone()
        bumped[0, s] += torch.randn(8)  # not a constant: the level norm would remove it
        moved = (cms(bumped).detach() - base).abs().amax(-1)[0] > 1e-7  # (13,)
        closes = (s // period + 1) * period  # first token that reads the chunk holding s
        for t in range(s + 1, 13):
            assert bool(moved[t]) == (t >= closes), (s, t, period)
    with pytest.raises(ValueError, match="periods"):
        OnlineContinuumMemory(8, periods=())
