"""The orchestra's layout checks (tertulia.layout): one home for the grid split and the
graph edges, the same words from the recipe, the graph builder and the orchestra."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tertulia.config import load_recipe
from tertulia.errors import ConfigError
from tertulia.layout import check_edges, divisors, patch_size
from tertulia.nn import Orchestra, make_graph
from tertulia.nn.graph import Graph

TESTS = Path(__file__).resolve().parent


def test_patch_size_and_the_divisors_it_offers():
    assert patch_size(128, 4, 2) == 32
    assert divisors(30) == [1, 2, 3, 5, 6, 10, 15, 30]
    assert divisors(256) == [1, 2, 4, 8, 16, 32, 64]  # listed up to 64 cells
    with pytest.raises(ConfigError, match="grid=30 is not divisible by cells=4; allowed cell "):
        patch_size(30, 4)
    with pytest.raises(ConfigError, match=r"halo=3 is larger than half a patch \(grid/cells = 4"):
        patch_size(16, 4, 3)
    with pytest.raises(ConfigError, match="at least one cell"):
        patch_size(16, 0)


@pytest.mark.parametrize(
    "kind, edges, kw, piece",
    [
        ("explicit", [], {}, "graph.kind=explicit needs a non-empty edge list graph.edges"),
        ("explicit", [(0, 9)], {}, "edge (0, 9) of graph.edges names cell 9; cells are 0..3"),
        ("explicit", [(0, 5)], {"coordinator": True}, "cells are 0..4 (4 is the coordinator)"),
        ("explicit", [(1, 1)], {}, "is a self-loop"),
        ("explicit", [(0, 1, 2)], {}, "must be a (source, target) pair"),
        ("ring", [(0, 1)], {}, "graph.kind='ring' builds its own"),
    ],
)
def test_check_edges_refuses(kind, edges, kw, piece):
    with pytest.raises(ConfigError) as info:
        check_edges(kind, edges, 4, **kw)
    assert piece in str(info.value)


def test_check_edges_accepts_edges_to_the_coordinator():
    assert check_edges("explicit", [[0, 4], (4, 1)], 4, coordinator=True) == [(0, 4), (4, 1)]
    assert check_edges("full", [], 4) == []


def _message(call) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    return str(info.value)


def test_recipe_graph_and_orchestra_refuse_an_edge_alike():
    from_recipe = _message(
        lambda: load_recipe("burgers", ["model.graph.kind=explicit", "model.graph.edges=[[0, 7]]"])
    )
    from_graph = _message(lambda: make_graph("explicit", 4, edges=[(0, 7)]))
    tail = "edges names cell 7; cells are 0..3"
    assert from_recipe.endswith(f"edge (0, 7) of model.graph.{tail}")
    assert from_graph == f"edge (0, 7) of graph.{tail}"


def test_recipe_and_orchestra_refuse_a_grid_split_alike():
    from_recipe = _message(lambda: load_recipe("burgers", ["data.grid=30"]))
    graph = make_graph("ring", 4)
    from_orchestra = _message(
        lambda: Orchestra(grid=30, window=2, graph=graph, d=8, d_msg=4, d_key=4, halo=1)
    )
    allowed = "allowed cell counts divide the grid: 1, 2, 3, 5, 6, 10, 15, 30"
    assert from_recipe.endswith(f"data.grid=30 is not divisible by model.cells=4; {allowed}")
    assert from_orchestra == f"grid=30 is not divisible by cells=4; {allowed}"
    halo = _message(lambda: Orchestra(grid=16, window=2, graph=graph, d=8, d_msg=4, halo=3))
    assert halo.startswith("halo=3 is larger than half a patch")


def test_removed_dead_code_stays_removed():
    """Nothing used ``Orchestra.messages_per_round`` or ``Graph.slot_indices``."""
    assert not hasattr(Orchestra, "messages_per_round")
    assert not hasattr(Graph, "slot_indices")


def test_every_declared_pytest_marker_is_used():
    """pyproject.toml declares no marker that no test carries."""
    text = (TESTS.parent / "pyproject.toml").read_text()
    block = re.search(r"^markers = \[(.*?)^\]", text, re.S | re.M)
    assert block is not None, "no markers in [tool.pytest.ini_options]"
    declared = re.findall(r'^\s*"(\w+):', block.group(1), re.M)
    assert "benchmark" in declared
    sources = [p.read_text() for p in TESTS.glob("*.py")]
    for marker in declared:
        used = re.compile(rf"mark\.{marker}\b")
        assert any(used.search(text) for text in sources), f"marker {marker!r} is unused"
