"""Mixture of experts: router (top-k, noise, capacity, aux terms), fusion, dispatch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import tertulia.nn as tnn
from tertulia.nn.heads import Prediction
from tertulia.nn.moe import Fusion, MixtureOfExperts, Router, moe_aux_loss
from tertulia.nn.s4d import S4D
from tertulia.nn.seqmodel import SequenceModel

# -- router --------------------------------------------------------------------------


def test_balance_is_one_when_uniform_and_E_when_collapsed():
    E = 4
    router = Router(E, E, k=1)
    # a tiny cyclic bump: item i prefers expert i mod E, so f_e = 1/E exactly, and by
    # symmetry every expert's mean probability is exactly 1/E as well
    logits = 1e-3 * torch.eye(E, dtype=torch.float64).repeat(5, 1)
    r = router.select(logits)
    assert torch.equal(r.index[:, 0], torch.arange(20) % E)
    assert abs(r.balance.item() - 1.0) < 1e-6
    collapsed = torch.zeros(20, E, dtype=torch.float64)
    collapsed[:, 2] = 50.0  # every item on expert 2 with p → 1
    r = router.select(collapsed)
    assert abs(r.balance.item() - E) < 1e-6
    assert torch.equal(r.load, torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64))


def test_ties_go_to_the_lower_index():
    r = Router(3, 3, k=2).select(torch.zeros(2, 3))
    assert r.index.tolist() == [[0, 1], [0, 1]]


def test_z_loss_by_hand():
    router = Router(3, 3, k=1)
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]], dtype=torch.float64)
    r = router.select(logits)
    lse = [math.log(sum(math.exp(v) for v in row)) for row in logits.tolist()]
    assert r.z_loss.item() == pytest.approx((lse[0] ** 2 + lse[1] ** 2) / 2, abs=1e-12)


def test_noise_only_in_training_and_eval_is_deterministic():
    torch.manual_seed(0)
    router = Router(5, 4, k=2, noisy=True)
    h = torch.randn(8, 5)
    router.train()
    a, b = router(h).logits, router(h).logits
    assert not torch.allclose(a, b)
    router.eval()
    c, d = router(h), router(h)
    assert torch.equal(c.logits, d.logits) and torch.equal(c.index, d.index)
    assert torch.equal(c.logits, router.gate(h))
    quiet = Router(5, 4, k=2).train()
    assert torch.equal(quiet(h).logits, quiet(h).logits)


def test_topk_gates_and_gradients():
    torch.manual_seed(0)
    router = Router(6, 5, k=2)
    h = torch.randn(10, 6)
    r = router(h)
    assert torch.allclose(r.gates.sum(-1), torch.ones(10))
    chosen = torch.zeros(10, 5, dtype=torch.bool).scatter(1, r.index, True)
    assert torch.all(r.gates[~chosen] == 0) and torch.all(r.gates[chosen] > 0)
    assert torch.equal(chosen, r.mask)
    # the chosen are the two largest probabilities, best first
    assert torch.equal(r.index, r.probs.topk(2, dim=-1).indices)
    # gradients reach the router weights through the gate values …
    (r.gates * torch.randn(10, 5)).sum().backward()
    assert router.gate.weight.grad is not None and router.gate.weight.grad.abs().sum() > 0
    # … and nothing flows through the selection
    assert not r.index.requires_grad and not r.mask.requires_grad
    # with k = 1 the renormalised gate is exactly 1 (no gradient); normalize=False gives p
    for normalize, moves in ((True, False), (False, True)):
        one = Router(6, 5, k=1, normalize=normalize)
        out = one(h)
        (out.gates * torch.randn(10, 5)).sum().backward()
        assert (one.gate.weight.grad.abs().sum() > 0) == moves


def test_capacity_drops_in_arrival_order_and_only_in_training():
    torch.manual_seed(0)
    router = Router(3, 2, k=1, capacity_factor=0.8)  # ceil(0.8 · 5 · 1 / 2) = 2
    with torch.no_grad():
        router.gate.weight.zero_()
        router.gate.bias.copy_(torch.tensor([5.0, 0.0]))  # everyone wants expert 0
    experts = [nn.Linear(3, 4), nn.Linear(3, 4)]
    moe = MixtureOfExperts(experts, router).train()
    x = torch.randn(5, 3) + 1.0
    out = moe(x)
    assert out.router.capacity == 2
    assert out.router.mask[:, 0].tolist() == [True, True, False, False, False]
    assert out.router.overflow.item() == pytest.approx(3 / 5)
    assert torch.all(out.output[2:] == 0)
    assert torch.allclose(out.output[:2], experts[0](x[:2]))
    assert out.kept.tolist() == [True, True, False, False, False]
    assert out.router.load.tolist() == [1.0, 0.0]
    moe.eval()
    out = moe(x)
    assert out.router.capacity is None and out.router.overflow.item() == 0.0
    assert torch.allclose(out.output, experts[0](x))
    router.capacity_at_eval = True
    assert moe(x).router.overflow.item() == pytest.approx(3 / 5)


def test_capacity_serves_first_choices_before_second_choices():
    router = Router(3, 3, k=2, capacity_factor=0.5)  # ceil(0.5 · 4 · 2 / 3) = 2
    logits = torch.tensor([[3.0, 2.0, 0.0], [3.0, 2.0, 0.0], [0.0, 3.0, 2.0], [2.0, 3.0, 0.0]])
    r = router.train().select(logits)
    # expert 1: first choices of items 2, 3 arrive before the second choices of items 0, 1
    assert r.mask.tolist() == [
        [True, False, False],
        [True, False, False],
        [False, True, True],
        [False, True, False],
    ]
    assert r.overflow.item() == pytest.approx(3 / 8)
    # dropped gates are zero and the kept ones are not renormalised
    assert r.gates[0, 0].item() == pytest.approx(1 / (1 + math.exp(-1)))
    assert r.gates[3].sum().item() < 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="k must be in 1..3"):
        Router(4, 3, k=4)
    with pytest.raises(ValueError, match="k must be in 1..3"):
        Router(4, 3, k=0)
    for c in (0.0, -1.0):
        with pytest.raises(ValueError, match="capacity_factor must be > 0"):
            Router(4, 3, capacity_factor=c)
    with pytest.raises(ValueError, match="fusion kind must be 'weighted' or 'attention'"):
        Fusion("mean")
    with pytest.raises(ValueError, match="needs d_query and d_value"):
        Fusion("attention")
    with pytest.raises(ValueError, match="dispatch must be 'sparse' or 'dense'"):
        MixtureOfExperts([nn.Linear(4, 2)] * 3, Router(4, 3), dispatch="lazy")
    with pytest.raises(ValueError, match="router has 3 experts, got 2"):
        MixtureOfExperts([nn.Linear(4, 2)] * 2, Router(4, 3))


# -- dispatch and fusion -------------------------------------------------------------


def _mlp_experts(n: int) -> list[nn.Module]:
    return [
        nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 5)) for _ in range(n)
    ]


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("fusion", ["weighted", "attention"])
def test_sparse_dispatch_equals_dense(k, fusion):
    torch.manual_seed(0)
    experts = _mlp_experts(3)
    router = Router(12, 3, k=k, normalize=False)
    fuse = Fusion(fusion, d_query=12, d_value=5, d_key=4)
    if fusion == "attention":
        with torch.no_grad():
            fuse.gamma.fill_(0.7)
    sparse = MixtureOfExperts(experts, router, fusion=fuse).double()
    dense = MixtureOfExperts(experts, router, fusion=fuse, dispatch="dense").double()
    x = torch.randn(16, 3, 4, dtype=torch.float64)
    a, b = sparse(x, keep_experts=True), dense(x)
    assert a.output.shape == (16, 5)
    # every expert got some items and skipped some (sparse really is sparse)
    assert torch.all(a.router.mask.any(0)) and not torch.all(a.router.mask)
    assert torch.allclose(a.output, b.output, atol=1e-12, rtol=0)
    ga = torch.autograd.grad(a.output.square().sum(), list(sparse.parameters()), allow_unused=True)
    gb = torch.autograd.grad(b.output.square().sum(), list(dense.parameters()), allow_unused=True)
    for u, v in zip(ga, gb, strict=True):
        assert (u is None) == (v is None)
        if u is not None:
            assert torch.allclose(u, v, atol=1e-10, rtol=0)
    # rows an expert did not receive are zeros in its batch-aligned output
    for e, name in enumerate(sparse.expert_names):
        assert torch.all(a.expert_outputs[name][~a.router.mask[:, e]] == 0)


def test_dict_inputs_and_outputs():
    torch.manual_seed(0)

    class Expert(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            assert len(x["names"]) == x["v"].shape[0]
            return {"a": self.lin(x["v"]), "b": x["v"].sum(-1) * x["scale"]}

    experts = {"left": Expert(), "right": Expert()}
    router = Router(3, 2, k=1, normalize=False)
    x = {"v": torch.randn(6, 3), "names": [f"n{i}" for i in range(6)], "scale": 2.0}
    kw = dict(features=lambda d: d["v"])
    sparse = MixtureOfExperts(experts, router, **kw)
    dense = MixtureOfExperts(experts, router, dispatch="dense", **kw)
    assert sparse.expert_names == ["left", "right"]
    a, b = sparse(x), dense(x)
    assert set(a.output) == {"a", "b"}
    for key in ("a", "b"):
        assert torch.allclose(a.output[key], b.output[key], atol=1e-6)
    assert torch.equal(sparse.route(x).index, a.router.index)
    with pytest.raises(ValueError, match="features"):
        MixtureOfExperts(experts, router)(x)


def test_attention_fusion_starts_as_weighted_sum():
    torch.manual_seed(0)
    experts = _mlp_experts(3)
    router = Router(12, 3, k=2)
    x = torch.randn(8, 3, 4)
    att = MixtureOfExperts(experts, router, fusion=Fusion("attention", d_query=12, d_value=5))
    plain = MixtureOfExperts(experts, router)
    assert torch.equal(att(x).output, plain(x).output)
    with torch.no_grad():
        att.fusion.gamma.fill_(1.0)
    assert not torch.allclose(att(x).output, plain(x).output, atol=1e-4)
    # γ gets a gradient at 0, so the attention term can switch itself on
    att.fusion.gamma.data.zero_()
    att(x).output.square().sum().backward()
    assert att.fusion.gamma.grad.abs() > 0


# -- real experts ----------------------------------------------------------------------


def _orchestra() -> nn.Module:
    return tnn.Orchestra(
        grid=16, window=2, graph=tnn.make_graph("ring", 2), d=8, d_msg=4, d_key=4, halo=1
    )


def test_mixture_of_orchestras_is_a_gaussian_mixture():
    torch.manual_seed(0)
    experts = [_orchestra(), _orchestra()]
    router = Router(32, 2, k=2)
    moe = MixtureOfExperts(experts, router).eval()
    x = torch.randn(4, 2, 16)
    out = moe(x)
    assert isinstance(out.output, Prediction) and out.output.trace is None
    p0, p1 = experts[0](x), experts[1](x)
    g = out.router.gates
    w0, w1 = g[:, :1], g[:, 1:]
    mean = w0 * p0.mean + w1 * p1.mean
    second = w0 * (p0.log_var.exp() + p0.mean**2) + w1 * (p1.log_var.exp() + p1.mean**2)
    assert torch.allclose(out.output.mean, mean, atol=1e-6)
    assert torch.allclose(out.output.log_var, (second - mean**2).log(), atol=1e-4)
    # the experts' own regularisers come along under their names; the task loss does not
    assert "0.consistency" in out.output.aux and "1.state_norm" in out.output.aux
    assert set(out.aux) == {"balance", "z_loss", "overflow"}
    att = Fusion("attention", d_query=32, d_value=32)
    moe_att = MixtureOfExperts(experts, router, fusion=att).eval()
    assert torch.allclose(moe_att(x).output.log_var, out.output.log_var)


class _ReadSeq(nn.Module):
    """An expert blind to the tag: it only sees the sequence."""

    def __init__(self):
        super().__init__()
        self.model = SequenceModel(
            1, 1, d_model=8, layers=1, block=lambda: S4D(8, N=8), pool="mean"
        )

    def forward(self, x):
        return self.model(x["seq"]).squeeze(-1)


def test_mixture_of_sequence_models_learns_to_route():
    torch.manual_seed(0)

    def batch(n: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
        seq = torch.randn(n, 8, 1)
        group = torch.randint(0, 2, (n,))
        sign = 2.0 * group - 1.0
        tag = 3.0 * sign.unsqueeze(1)  # the feature that decides the expert
        y = sign * (1.0 + seq.mean((1, 2)))  # the groups need opposite maps of seq
        return {"seq": seq, "tag": tag}, y, group

    experts = [_ReadSeq(), _ReadSeq()]
    router = Router(9, 2, k=2)
    with torch.no_grad():  # start collapsed: everything on expert 0
        router.gate.weight.zero_()
        router.gate.bias.copy_(torch.tensor([1.0, 0.0]))
    moe = MixtureOfExperts(
        experts, router, features=lambda d: torch.cat([d["seq"].flatten(1), d["tag"]], 1)
    )
    x, y, group = batch(512)
    with torch.no_grad():
        assert torch.all(moe.route(x).index[:, 0] == 0)
    opt = torch.optim.Adam(moe.parameters(), lr=3e-2)
    for _ in range(60):
        xb, yb, _ = batch(32)
        out = moe(xb)
        task = (out.output - yb).pow(2).mean()
        loss = task + moe_aux_loss(out)  # the aux loss is added explicitly, by the caller
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = moe.eval()(x)
    agree = (out.router.index[:, 0] == group).float().mean().item()
    # experts are symmetric, so "correct" is up to naming them
    assert max(agree, 1 - agree) >= 0.9
    assert (out.output - y).pow(2).mean() < 0.25 * y.pow(2).mean()
