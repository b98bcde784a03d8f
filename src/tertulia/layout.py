"""How an orchestra lays out: patches of the grid and the edges of its graph.

The ``n`` cells split a periodic grid of ``G`` points into contiguous patches of
``P = G / n`` points; each cell also predicts ``h`` halo points past each edge of
its patch, so ``2h ≤ P``. An explicit graph lists directed edges ``(j, i)``
("j sends to i") between the ``n`` cells and the optional coordinator (node ``n``).

These checks have one home, here, so that the recipe (:mod:`tertulia.config`),
the graph builder (:func:`tertulia.nn.make_graph`) and the orchestra
(:class:`tertulia.nn.Orchestra`) refuse the same layouts with the same words.
The module is pure Python: :mod:`tertulia.config` imports it without torch.

Legend: G grid points, n cells, P patch points, h halo points.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .errors import ConfigError

MAX_LISTED_CELLS = 64  # cell counts listed in the "allowed cell counts" hint


def divisors(n: int, *, limit: int = MAX_LISTED_CELLS) -> list[int]:
    """The divisors of ``n`` up to ``limit``: the cell counts that split ``n`` grid points."""
    return [k for k in range(1, min(n, limit) + 1) if n % k == 0]


def patch_size(
    grid: int,
    cells: int,
    halo: int = 0,
    *,
    names: tuple[str, str, str] = ("grid", "cells", "halo"),
) -> int:
    """The points P = G / n of each cell's patch; ConfigError unless n divides G and 2h ≤ P.

    ``names`` are the words for G, n and h in the messages (a recipe passes
    ``("data.grid", "model.cells", "model.halo")``).
    """
    grid_name, cells_name, halo_name = names
    if cells < 1:
        raise ConfigError(f"{cells_name}={cells}: an orchestra needs at least one cell")
    if grid % cells:
        allowed = ", ".join(map(str, divisors(grid)))
        raise ConfigError(
            f"{grid_name}={grid} is not divisible by {cells_name}={cells}; "
            f"allowed cell counts divide the grid: {allowed}"
        )
    patch = grid // cells
    if 2 * halo > patch:
        raise ConfigError(
            f"{halo_name}={halo} is larger than half a patch ({grid_name}/{cells_name} = "
            f"{patch} points); {halo_name} can be at most {patch // 2}"
        )
    return patch


def check_edges(
    kind: str,
    edges: Iterable[Sequence[int]],
    cells: int,
    *,
    coordinator: bool = False,
    where: str = "graph",
) -> list[tuple[int, int]]:
    """The edges of a graph of kind ``kind`` as ``(source, target)`` pairs, checked.

    ``explicit`` needs at least one edge; the other kinds build their own edges
    and refuse a list. Every edge joins two different nodes among the cells and
    the coordinator (nodes ``0..n`` with a coordinator, else ``0..n-1``).
    ``where`` names the section in the messages (a recipe passes ``model.graph``).
    """
    listed = [tuple(e) for e in edges]
    if kind != "explicit":
        if listed:
            raise ConfigError(
                f"{where}.edges lists {len(listed)} edge(s) but {where}.kind={kind!r} builds "
                f"its own; set {where}.kind=explicit to use them, or drop {where}.edges"
            )
        return []
    if not listed:
        raise ConfigError(
            f"{where}.kind=explicit needs a non-empty edge list {where}.edges of "
            "(source, target) pairs, e.g. [[0, 1]]"
        )
    nodes = cells + int(coordinator)
    known = f"cells are 0..{nodes - 1}" + (f" ({cells} is the coordinator)" if coordinator else "")
    out: list[tuple[int, int]] = []
    for e in listed:
        if len(e) != 2:
            raise ConfigError(f"edge {list(e)} of {where}.edges must be a (source, target) pair")
        s, t = int(e[0]), int(e[1])
        for v in (s, t):
            if not 0 <= v < nodes:
                raise ConfigError(f"edge ({s}, {t}) of {where}.edges names cell {v}; {known}")
        if s == t:
            raise ConfigError(
                f"edge ({s}, {t}) of {where}.edges is a self-loop; a cell keeps its own state, "
                "so drop it"
            )
        out.append((s, t))
    return out
