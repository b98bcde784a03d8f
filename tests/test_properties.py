"""Property-based checks (hypothesis) of invariants that must hold for any input."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tertulia import metrics as M
from tertulia.nn import make_graph
from tertulia.nn.mlp import hidden_for_params, mlp_params

seeds = st.integers(0, 2**31 - 1)


def _gaussian(seed: int, n: int = 64):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(4, n, generator=g, dtype=torch.float64)
    mean = torch.randn(4, n, generator=g, dtype=torch.float64)
    std = torch.rand(4, n, generator=g, dtype=torch.float64) + 0.05
    return y, mean, std


@settings(max_examples=30, deadline=None)
@given(seed=seeds)
def test_coverage_grows_with_the_level(seed):
    y, mean, std = _gaussian(seed)
    levels = [0.1, 0.3, 0.5, 0.7, 0.9, 0.99]
    curve = M.calibration_curve(y, mean, std, levels)
    assert all(a <= b for a, b in zip(curve, curve[1:], strict=False))


@settings(max_examples=30, deadline=None)
@given(seed=seeds, shift=st.floats(-5, 5), scale=st.floats(0.1, 10))
def test_scores_transform_with_units(seed, shift, scale):
    y, mean, std = _gaussian(seed)
    # CRPS is in the data's units: shifting changes nothing, scaling scales it
    c = M.crps_gaussian(y, mean, std)
    assert c >= 0
    c2 = M.crps_gaussian(scale * y + shift, scale * mean + shift, scale * std)
    assert abs(c2 - scale * c) <= 1e-9 * max(1.0, scale * c)
    # coverage is unit-free
    assert M.coverage(y, mean, std, 0.9) == M.coverage(
        scale * y + shift, scale * mean + shift, scale * std, 0.9
    )
    # nRMSE is scale-free
    a = M.nrmse(mean, y)
    assert abs(M.nrmse(scale * mean, scale * y) - a) <= 1e-9 * max(1.0, a)


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["ring", "chain", "full"]),
    cells=st.integers(1, 12),
    coordinator=st.booleans(),
    slots=st.integers(0, 3),
)
def test_graph_invariants(kind, cells, coordinator, slots):
    g = make_graph(kind, cells, coordinator=coordinator, memory_slots=slots)
    adj = g.adjacency()
    assert adj.shape == (g.nodes, g.nodes)
    assert not adj.diagonal().any()  # no self-loops
    assert int(adj.sum()) == len(g.edges) == len(set(g.edges))
    if cells > 1 or coordinator or slots:
        assert adj[:cells].any(dim=1).all()  # every cell hears from someone
    assert torch.equal(adj, adj.T)  # ring, chain, full, hub and memory links go both ways


@settings(max_examples=50, deadline=None)
@given(
    inputs=st.integers(8, 2000),
    outputs=st.integers(2, 600),
    layers=st.integers(1, 4),
    target=st.integers(20_000, 2_000_000),
)
def test_mlp_width_is_the_closest_to_the_budget(inputs, outputs, layers, target):
    h = hidden_for_params(inputs, outputs, layers, target)
    best = abs(mlp_params(inputs, outputs, h, layers) - target)
    for other in (h - 1, h + 1):
        if other >= 1:
            assert best <= abs(mlp_params(inputs, outputs, other, layers) - target)
