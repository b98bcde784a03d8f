"""Continuum memory: the CMS network, its online form and the ``continual`` job (the
multi-frequency optimiser itself is tested in test_optim.py)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tertulia.cli import app
from tertulia.nn.memory import ContinuumMLP


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
