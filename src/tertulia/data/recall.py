"""Associative recall at a distance: key–value pairs, a long gap, then a query.

A sequence (token ids) is

    k_1 v_1 k_2 v_2 … k_P v_P  f f … f  ?  k_j          → label v_j

with P pairs of distinct keys (ids ``0 … K−1``) and values (ids ``K … K+V−1``),
a gap of random filler tokens (ids ``K+V … K+V+F−1``), the query marker ``?``
(id ``K+V+F``) and one of the keys. The *distance* is the number of steps
from the queried pair's value to the query, so a causal attention of window W
sees the answer only when distance < W. :func:`recall_set` draws sequences at
one distance; their length is ``2P + gap + 2``.

Legend: P pairs, K keys, V values, F filler tokens, W attention window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DataError


@dataclass
class RecallVocab:
    keys: int = 16
    values: int = 16
    fillers: int = 8

    @property
    def size(self) -> int:
        return self.keys + self.values + self.fillers + 1

    @property
    def query(self) -> int:
        return self.keys + self.values + self.fillers


@dataclass
class RecallSet:
    tokens: torch.Tensor  # (S, L) int64
    label: torch.Tensor  # (S,) int64, a value token id
    distance: int

    def __len__(self) -> int:
        return int(self.label.shape[0])


def recall_set(
    n: int, *, distance: int, pairs: int = 4, vocab: RecallVocab | None = None, seed: int = 0
) -> RecallSet:
    """``n`` sequences whose queried value lies ``distance`` steps before the query."""
    v = vocab or RecallVocab()
    if pairs < 1 or pairs > min(v.keys, v.values):
        raise DataError(f"pairs={pairs} must be in [1, min(keys, values)={min(v.keys, v.values)}]")
    if n < 1:
        raise DataError(f"n={n} must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    cpu = gen.device  # the data is made on the CPU; tasks move it
    rows = torch.arange(n, device=cpu)
    keys = torch.stack(
        [torch.randperm(v.keys, generator=gen, device=cpu)[:pairs] for _ in range(n)]
    )
    values = v.keys + torch.stack(
        [torch.randperm(v.values, generator=gen, device=cpu)[:pairs] for _ in range(n)]
    )
    # which pair is asked: its value sits 2·(P − 1 − j) + 1 + gap + 1 steps before the query key
    j = torch.randint(pairs, (n,), generator=gen, device=cpu)
    offset = 2 * (pairs - 1 - j) + 2  # steps from value j to the query key when gap = 0
    min_distance = 2 * (pairs - 1) + 2
    if distance < min_distance:
        raise DataError(f"distance={distance} must be >= 2·pairs = {min_distance}")
    gap = distance - offset  # (n,) per sequence; pad the shorter gaps at the start
    longest = int(gap.max())
    length = 2 * pairs + longest + 2
    tokens = torch.empty(n, length, dtype=torch.int64, device=cpu)
    fill = v.keys + v.values + torch.randint(v.fillers, (n, length), generator=gen, device=cpu)
    tokens.copy_(fill)
    for s in range(n):
        start = longest - int(gap[s])  # leading fillers keep every sequence the same length
        pos = start + 2 * torch.arange(pairs, device=cpu)
        tokens[s, pos] = keys[s]
        tokens[s, pos + 1] = values[s]
    tokens[:, -2] = v.query
    tokens[:, -1] = keys[rows, j]
    return RecallSet(tokens=tokens, label=values[rows, j], distance=distance)
