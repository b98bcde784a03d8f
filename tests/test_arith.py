"""Learned arithmetic: NAC / NALU (iNALU sign), the op bank, the scale-free losses."""

from __future__ import annotations

import pytest
import torch

from tertulia.nn.arith import NAC, NALU, OpArithmetic, path_loss, rel_loss


def _operands(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    mag = torch.exp(
        torch.empty(n, 2, dtype=torch.float64).uniform_(
            torch.log(torch.tensor(lo)).item(), torch.log(torch.tensor(hi)).item(), generator=gen
        )
    )
    sign = torch.where(torch.rand(n, 2, generator=gen, dtype=torch.float64) < 0.3, -1.0, 1.0)
    return mag * sign


@pytest.mark.parametrize("param", ["trask", "clamp"])
def test_nac_weights_stay_in_the_unit_box(param):
    nac = NAC(3, 5, init_std=3.0, param=param)
    w = nac.weight
    assert w.shape == (5, 3) and w.abs().max() <= 1.0
    x = torch.randn(4, 3)
    torch.testing.assert_close(nac(x), x @ w.T)


@pytest.mark.parametrize("gate", ["constant", "input"])
@pytest.mark.parametrize("param", ["trask", "clamp"])
def test_nalu_fast_path_equals_the_literal_formula(gate, param):
    torch.manual_seed(0)
    nalu = NALU(2, 3, gate=gate, param=param).double()
    x = torch.randn(6, 2, dtype=torch.float64) * 10
    torch.testing.assert_close(nalu(x), nalu.forward_reference(x), rtol=0, atol=1e-10)


def test_nalu_gradients_match_finite_differences():
    torch.manual_seed(0)
    nalu = NALU(2, 2, gate="input", param="trask").double()
    x = (torch.rand(3, 2, dtype=torch.float64) + 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: nalu(t), (x,))


def test_sign_correction_gives_signed_products_and_quotients():
    nalu = NALU(2, 2, param="clamp").double()
    with torch.no_grad():
        nalu.mul.w_hat.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        nalu.gamma.fill_(0.0)  # gate 0: the multiplicative path only
    x = torch.tensor([[-3.0, 4.0], [-2.5, -2.0], [6.0, -0.5]], dtype=torch.float64)
    expect = torch.stack([x[:, 0] * x[:, 1], x[:, 0] / x[:, 1]], 1)
    torch.testing.assert_close(nalu(x), expect, rtol=1e-6, atol=0)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_a_nalu_learns_each_op_and_extrapolates_tenfold(op):
    """Trained on |a|, |b| in [1, 100) with signs, exact within 1 % on [100, 1000)."""
    fn = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}[op]
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(2)
    unit = NALU(2, 1, param="clamp").double()
    opt = torch.optim.Adam(unit.parameters(), lr=0.1, betas=(0.9, 0.99))
    for _ in range(300):
        x = _operands(128, 1.0, 100.0, gen)
        t = fn(x[:, 0], x[:, 1])
        a, m, g, z = (v[:, 0] for v in unit.paths(x))
        loss = path_loss(a, m, g, z, t, scale=x.abs().sum(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = _operands(2000, 100.0, 1000.0, gen)
    t = fn(x[:, 0], x[:, 1])
    with torch.no_grad():
        y = unit(x)[:, 0]
    ok = ((y - t).abs() <= 0.01 * t.abs()).double().mean()
    assert ok >= 0.95, (op, float(ok), unit.weights(), unit.constant_gate())


def test_op_bank_mixes_units_by_probability_and_describes_itself():
    torch.manual_seed(0)
    bank = OpArithmetic(4).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    p = torch.softmax(torch.randn(5, 4, dtype=torch.float64), -1)
    torch.testing.assert_close(bank(x, p), (p * bank.all_ops(x)).sum(-1))
    w = bank.weights()
    assert set(w) == {"add", "sub", "mul", "div"} and set(w["add"]) == {"W_add", "W_mul", "gate"}
    assert bank.describe().count("\n") == 3
    with pytest.raises(ValueError, match="p must be"):
        bank(x, p[:, :3])
    with pytest.raises(ValueError, match="ops must be"):
        OpArithmetic(0)


def test_relative_losses_are_scale_free():
    t = torch.tensor([3.0, 9000.0], dtype=torch.float64)
    pred = t * 1.01
    per_item = [float(rel_loss(pred[i : i + 1], t[i : i + 1])) for i in range(2)]
    assert per_item[1] == pytest.approx((0.01 * 9000 / 9001) ** 2)
    assert per_item[0] == pytest.approx((0.03 / 4) ** 2)
    with pytest.raises(ValueError, match="kind"):
        rel_loss(pred, t, kind="l1")
    z = torch.log(t.abs())
    exact = path_loss(t, t, torch.ones(2, dtype=torch.float64), z, t)
    assert float(exact) == pytest.approx(0.0, abs=1e-20)
