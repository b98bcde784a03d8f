"""Communication graphs of an orchestra.

A graph is a directed graph ``G = (V, E)`` over ``N`` nodes: the ``n`` cells
first, then an optional coordinating cell (linked both ways to every cell),
then ``K`` optional shared memory slots (every cell reads and writes every
slot). An edge ``(j, i)`` means "j sends to i". The messenger consumes the
boolean *receive* matrix ``adjacency[i, j] = (j → i) ∈ E``.

Legend: n cells, N = n + coordinator + K nodes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..layout import check_edges

KINDS = ("ring", "chain", "full", "explicit")


@dataclass(frozen=True)
class Graph:
    """Directed message graph over cells, coordinator and memory slots."""

    cells: int
    edges: tuple[tuple[int, int], ...]
    coordinator: bool = False
    memory_slots: int = 0

    @property
    def nodes(self) -> int:
        return self.cells + int(self.coordinator) + self.memory_slots

    @property
    def updating_cells(self) -> int:
        """Nodes updated by a cell MLP: the cells and the coordinator."""
        return self.cells + int(self.coordinator)

    def adjacency(self) -> torch.Tensor:
        """Receive matrix ``A[i, j] = True`` when j sends to i, shape (N, N)."""
        a = torch.zeros(self.nodes, self.nodes, dtype=torch.bool)
        for src, dst in self.edges:
            a[dst, src] = True
        return a

    def __len__(self) -> int:
        return len(self.edges)


def make_graph(
    kind: str,
    cells: int,
    *,
    edges: Iterable[tuple[int, int]] = (),
    coordinator: bool = False,
    memory_slots: int = 0,
) -> Graph:
    """Build a graph: ``ring`` (i ↔ i±1 periodic), ``chain`` (i ↔ i±1), ``full``, ``explicit``."""
    if kind not in KINDS:
        raise ConfigError(f"graph kind {kind!r} is not one of: {', '.join(KINDS)}")
    if cells < 1:
        raise ConfigError(f"a graph needs at least one cell, got cells={cells}")
    # explicit: the listed edges, checked where the recipe checks them; other kinds build theirs
    es: set[tuple[int, int]] = set(check_edges(kind, edges, cells, coordinator=coordinator))
    if kind == "ring":
        for i in range(cells):
            for j in ((i - 1) % cells, (i + 1) % cells):
                if j != i:
                    es.add((j, i))
    elif kind == "chain":
        for i in range(cells - 1):
            es.update({(i, i + 1), (i + 1, i)})
    elif kind == "full":
        es.update((j, i) for i in range(cells) for j in range(cells) if i != j)
    if coordinator:
        c = cells
        es.update((i, c) for i in range(cells))
        es.update((c, i) for i in range(cells))
    first_slot = cells + int(coordinator)
    for k in range(memory_slots):
        slot = first_slot + k
        es.update((i, slot) for i in range(cells))
        es.update((slot, i) for i in range(cells))
    return Graph(
        cells=cells,
        edges=tuple(sorted(es)),
        coordinator=coordinator,
        memory_slots=memory_slots,
    )
