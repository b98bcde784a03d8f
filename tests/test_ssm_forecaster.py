"""Deep-SSM forecasters beside the orchestra (``baselines.ssm``)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tertulia.cli import app
from tertulia.errors import ShapeError
from tertulia.nn.ssm_forecaster import Bidirectional, GaussianSSM

from .conftest import TINY


@pytest.mark.parametrize("kind", ["s4d", "mamba"])
def test_forecaster_shapes_start_and_gradients(kind):
    torch.manual_seed(0)
    model = GaussianSSM(grid=32, window=2, kind=kind, d_model=8, layers=1, d_state=8, scale=2.0)
    x = torch.randn(3, 2, 32)
    pred = model(x)
    assert pred.mean.shape == pred.log_var.shape == (3, 32)
    # the head starts small: the forecast starts close to persistence
    assert (pred.mean - x[:, -1]).abs().mean() < 0.5 * x[:, -1].abs().mean()
    pred.mean.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with pytest.raises(ShapeError, match="expected input of shape"):
        model(torch.randn(3, 3, 32))


def test_periodic_padding_joins_the_two_ends():
    torch.manual_seed(0)
    model = GaussianSSM(grid=32, window=1, kind="s4d", d_model=8, layers=1, d_state=8, pad=8)
    x = torch.zeros(1, 1, 32, requires_grad=True)
    model(x).mean[0, 0].backward()
    # the first point hears its periodic neighbours at the far end of the grid
    assert x.grad[0, 0, -3:].abs().sum() > 0


def test_bidirectional_sees_both_sides():
    layer = Bidirectional(torch.nn.Identity(), torch.nn.Identity())
    x = torch.randn(2, 5, 3)
    assert torch.equal(layer(x), 2 * x)


def test_burgers_report_with_ssm_baselines(tmp_path):
    args = ["run", "burgers", "--out", str(tmp_path / "r")]
    for s in [
        *TINY,
        "baselines.ssm=[s4d, mamba]",
        "baselines.ssm_width=4",
        "baselines.ssm_state=4",
        "baselines.ssm_layers=1",
    ]:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert {"orchestra", "mlp", "s4d", "mamba", "persistence"} <= set(metrics["models"])
    assert "s4d" in (tmp_path / "r" / "report.html").read_text()
