"""Cells, messaging, graphs and the orchestra: batched kernels vs references, schedules."""

from __future__ import annotations

import pytest
import torch

from tertulia.errors import ConfigError
from tertulia.nn import AttentionMessenger, CellBank, Orchestra, make_graph
from tertulia.nn.mlp import GaussianMLP, hidden_for_params, mlp_params
from tertulia.solvers import Unrolled


def _orchestra(graph, **kw):
    kw.setdefault("solver", Unrolled(3))
    return Orchestra(grid=32, window=2, graph=graph, d=8, d_msg=4, d_key=4, halo=1, **kw).double()


def test_cell_bank_batched_equals_per_cell_loop():
    bank = CellBank(5, d=6, d_msg=3, hidden=10).double()
    s, m, e = torch.randn(7, 5, 6), torch.randn(7, 5, 3), torch.randn(7, 5, 6)
    s, m, e = s.double(), m.double(), e.double()
    torch.testing.assert_close(bank.step(s, m, e), bank.step_reference(s, m, e), rtol=0, atol=1e-12)


def test_cells_have_their_own_parameters():
    bank = CellBank(2, d=4, d_msg=2, hidden=6).double()
    s = torch.randn(3, 1, 4).double().expand(3, 2, 4)
    m = torch.randn(3, 1, 2).double().expand(3, 2, 2)
    e = torch.randn(3, 1, 4).double().expand(3, 2, 4)
    out = bank.step(s, m, e)
    assert not torch.allclose(out[:, 0], out[:, 1])


@pytest.mark.parametrize(
    "graph",
    [
        make_graph("ring", 4),
        make_graph("chain", 4),
        make_graph("full", 3, coordinator=True),
        make_graph("explicit", 4, edges=[(0, 1), (1, 2)]),  # cells 0 and 3 receive nothing
        make_graph("ring", 4, memory_slots=2),
    ],
)
def test_messenger_batched_equals_reference(graph):
    msg = AttentionMessenger(graph, d=6, d_msg=3, d_key=5).double()
    s = torch.randn(4, graph.nodes, 6).double()
    m_fast, a_fast = msg(s)
    m_ref, a_ref = msg.reference(s)
    torch.testing.assert_close(m_fast, m_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(a_fast, a_ref, rtol=0, atol=1e-12)
    assert torch.isfinite(m_fast).all()
    # attention lives only on edges and sums to one for every node with senders
    adj = graph.adjacency()
    assert (a_fast[:, ~adj] == 0).all()
    sums = a_fast.sum(-1)
    torch.testing.assert_close(sums[:, adj.any(1)], torch.ones_like(sums[:, adj.any(1)]))
    assert (sums[:, ~adj.any(1)] == 0).all()


def test_graph_kinds_and_edges():
    ring = make_graph("ring", 4)
    assert set(ring.edges) == {(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2), (3, 0), (0, 3)}
    chain = make_graph("chain", 3)
    assert set(chain.edges) == {(0, 1), (1, 0), (1, 2), (2, 1)}
    full = make_graph("full", 3)
    assert len(full) == 6
    hub = make_graph("ring", 4, coordinator=True)
    assert hub.nodes == 5 and all((i, 4) in hub.edges and (4, i) in hub.edges for i in range(4))
    mem = make_graph("chain", 2, memory_slots=3)
    assert mem.nodes == 5 and len(mem) == 2 + 2 * 2 * 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "star"}, "not one of"),
        ({"kind": "explicit"}, "non-empty edge list"),
        ({"kind": "explicit", "edges": [(0, 9)]}, "names cell 9"),
        ({"kind": "explicit", "edges": [(1, 1)]}, "self-loop"),
    ],
)
def test_graph_errors(kwargs, match):
    kind = kwargs.pop("kind")
    with pytest.raises(ConfigError, match=match):
        make_graph(kind, 4, **kwargs)


@pytest.mark.parametrize("schedule", ["sync", "async"])
@pytest.mark.parametrize("extras", [{}, {"coordinator": True, "memory_slots": 2}])
def test_orchestra_batched_equals_loop(schedule, extras):
    graph = make_graph("ring", 4, **extras)
    fast = _orchestra(graph, schedule=schedule, kernel="batched")
    slow = _orchestra(graph, schedule=schedule, kernel="loop")
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(5, 2, 32).double()
    torch.manual_seed(3)
    p_fast = fast(x)
    torch.manual_seed(3)
    p_slow = slow(x)
    torch.testing.assert_close(p_fast.mean, p_slow.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(p_fast.log_var, p_slow.log_var, rtol=0, atol=1e-12)


def test_async_uses_already_updated_neighbours():
    graph = make_graph("chain", 2)
    orch = _orchestra(graph, schedule="async", order="fixed")
    s = torch.randn(3, 2, 8).double()
    e = torch.randn(3, 2, 8).double()
    box: dict = {}
    out = orch._round_async(s, e, box)
    # by hand: cell 0 first from the old state, then cell 1 from the *new* cell 0
    m0 = orch.messenger.message_to(0, s)
    s0 = orch.bank.step_one(0, s[:, 0], m0, e[:, 0])
    m1 = orch.messenger.message_to(1, torch.stack([s0, s[:, 1]], 1))
    s1 = orch.bank.step_one(1, s[:, 1], m1, e[:, 1])
    torch.testing.assert_close(out, torch.stack([s0, s1], 1), rtol=0, atol=1e-12)
    # a synchronous round gives cell 1 the *old* cell 0 instead
    sync = orch._round_sync(s, e, {})
    torch.testing.assert_close(sync[:, 0], s0, rtol=0, atol=1e-12)
    assert not torch.allclose(sync[:, 1], s1)


def test_async_random_order_is_a_permutation_that_changes():
    orch = _orchestra(make_graph("ring", 4), schedule="async", order="random")
    s, e = torch.randn(2, 4, 8).double(), torch.randn(2, 4, 8).double()
    orders = set()
    for _ in range(12):
        box: dict = {}
        orch._round_async(s, e, box)
        assert sorted(box["order"]) == [0, 1, 2, 3]
        orders.add(tuple(box["order"]))
    assert len(orders) > 1


def test_orchestra_prediction_shapes_trace_and_messages():
    graph = make_graph("ring", 4)
    orch = _orchestra(graph, solver=Unrolled(5, tol=0.0))
    pred = orch(torch.randn(6, 2, 32).double())
    assert pred.mean.shape == pred.log_var.shape == (6, 32)
    assert pred.trace.rounds == 5 and len(pred.trace.residuals) == 5
    assert pred.trace.messages == 5 * 8 * 4  # rounds × edges × floats
    assert pred.trace.attention.shape == (4, 4)
    assert {"consistency", "state_norm"} <= set(pred.aux)
    assert torch.all(pred.std > 0)


def test_orchestra_stops_early_when_converged():
    orch = _orchestra(make_graph("ring", 4), solver=Unrolled(50, tol=1e-3))
    with torch.no_grad():  # make the update tiny: a strongly contractive map
        orch.bank.fc2.weight.mul_(1e-4)
        orch.bank.fc2.bias.zero_()
    pred = orch(torch.randn(4, 2, 32).double())
    assert pred.trace.rounds < 50 and pred.trace.solver.converged


def test_halo_consistency_is_zero_when_neighbours_agree():
    orch = _orchestra(make_graph("ring", 4))
    with torch.no_grad():  # zero increments: every cell predicts the last frame, halos agree
        orch.head.out.weight.zero_()
        orch.head.out.bias.zero_()
    x = torch.randn(3, 2, 32).double()
    pred = orch(x)
    torch.testing.assert_close(pred.mean, x[:, -1])
    assert float(pred.aux["consistency"].detach()) == pytest.approx(0.0, abs=1e-20)


def test_orchestra_rejects_bad_input_shape():
    orch = _orchestra(make_graph("ring", 4))
    with pytest.raises(ValueError, match=r"\(batch, 2, 32\)"):
        orch(torch.randn(3, 32))


def test_orchestra_scale_equivariance():
    """Physical units in and out: scaling data and `scale` together scales the mean."""
    graph = make_graph("ring", 4)
    a = _orchestra(graph)
    b = _orchestra(graph)
    b.load_state_dict(a.state_dict())
    b.scale.fill_(10.0)
    x = torch.randn(2, 2, 32).double()
    pa, pb = a(x), b(10 * x)
    torch.testing.assert_close(pb.mean, 10 * pa.mean)
    torch.testing.assert_close(pb.log_var, pa.log_var + 2 * torch.log(torch.tensor(10.0)).double())


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_mlp_width_matches_parameter_budget(layers):
    target = 50_000
    h = hidden_for_params(4 * 128, 256, layers, target)
    mlp = GaussianMLP(grid=128, window=4, hidden=h, layers=layers)
    n = sum(p.numel() for p in mlp.parameters())
    assert n == mlp_params(4 * 128, 256, h, layers)
    assert abs(n - target) / target < 0.1


def test_input_skip_cell_depends_on_the_state_only_through_the_mlp():
    bank = CellBank(2, d=4, d_msg=2, hidden=6, skip="input").double()
    with torch.no_grad():
        bank.fc2.weight.zero_()
    s, m, e = (torch.randn(3, 2, k).double() for k in (4, 2, 4))
    torch.testing.assert_close(bank.step(s, m, e), e + bank.fc2.bias)
    torch.testing.assert_close(bank.step(s, m, e), bank.step_reference(s, m, e))
    with pytest.raises(ValueError, match="skip"):
        CellBank(2, d=4, d_msg=2, hidden=6, skip="both")


def test_fixed_point_problem_is_the_map_the_forward_pass_iterates():
    from tertulia.solvers import Equilibrium, SolverSpec, picard

    orch = _orchestra(
        make_graph("ring", 4),
        solver=Equilibrium(SolverSpec("picard", tol=1e-10, max_iter=200)),
        skip="input",
    )
    x = torch.randn(3, 2, 32).double()
    with torch.no_grad():
        pred = orch(x)
        f, s0 = orch.fixed_point_problem(x)
        res = picard(f, s0, tol=1e-10, max_iter=200)
    torch.testing.assert_close(res.x, pred.trace.solver.state)
    torch.testing.assert_close(f(res.x), res.x, rtol=0, atol=1e-8)


def test_spectral_norm_recipe_bounds_every_round_map_weight():
    from tertulia import build
    from tertulia.config import load_recipe
    from tertulia.stability import spectral_norms

    recipe = load_recipe("smoke", ["model.spectral_norm=0.5", "model.skip=input"])
    orch = build.build_orchestra(recipe)
    for _ in range(20):  # power iteration settles over training-mode forwards
        orch(torch.randn(4, recipe.data.window, recipe.data.grid))
    for module in (orch.bank, orch.messenger):
        norms = spectral_norms(module)
        assert {"fc1.weight", "fc2.weight"} <= set(norms) or {"key.weight"} <= set(norms)
        for name, sigma in norms.items():
            assert float(sigma.max()) <= 0.5 * 1.01, name
    # the bounded weights are restored exactly from a checkpointed state_dict
    twin = build.build_orchestra(recipe)
    twin.load_state_dict(orch.state_dict())
    orch.eval(), twin.eval()
    x = torch.randn(2, recipe.data.window, recipe.data.grid)
    torch.testing.assert_close(orch(x).mean, twin(x).mean, rtol=0, atol=0)
