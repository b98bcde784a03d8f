"""Text for the VELORA experts: byte tokens with numbers as values (xVal-style).

Models read text as UTF-8 bytes, except numbers: each number in the text
becomes one ``NUM`` token, and its value travels beside the tokens (as in xVal,
Golkar et al. 2023, where the [NUM] embedding is scaled by the value), so the
math expert can compute with the exact operands instead of their digits.

A number is ``-?digits(.digits)?`` not glued to a letter, digit or dot on its
left; the minus belongs to the number only when it touches the digits and
follows the start, a space, an opening bracket or ¿/¡, so ``"10 - 3"`` holds
10 and 3, ``"12.5 * -3"`` holds 12.5 and −3. There are no thousands
separators (``"1,000"`` is 1 and 0).

Token ids: 0 pad, 1 … 256 the byte value + 1, 257 ``NUM``.

Legend: N texts, L tokens (``max_len``), K numbers kept per text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

PAD = 0
NUM = 257
VOCAB = 258
MAX_NUMBERS = 2

NUMBER = re.compile(r"(?:(?<![^\s(\[¿¡])-)?(?<![\w.])\d+(?:\.\d+)?")


def number_spans(text: str) -> list[tuple[int, int, float]]:
    """``(start, end, value)`` of every number in ``text``, left to right."""
    return [(m.start(), m.end(), float(m.group())) for m in NUMBER.finditer(text)]


@dataclass
class EncodedText:
    """A batch of texts as tokens and number values.

    tokens (N, L) int64: 0 pad, byte + 1, or ``NUM``;
    values (N, L) float32: the number at ``NUM`` positions, 0 elsewhere;
    numbers (N, K) float64: the first K numbers of each text in reading order (0 pad);
    count (N,) int64: how many numbers each text holds (may exceed K);
    length (N,) int64: tokens before padding.
    """

    tokens: torch.Tensor
    values: torch.Tensor
    numbers: torch.Tensor
    count: torch.Tensor
    length: torch.Tensor

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, rows: torch.Tensor | slice) -> EncodedText:
        return EncodedText(
            self.tokens[rows],
            self.values[rows],
            self.numbers[rows],
            self.count[rows],
            self.length[rows],
        )


def encode(texts: list[str], *, max_len: int = 160, max_numbers: int = MAX_NUMBERS) -> EncodedText:
    """Tokenise ``texts`` (bytes, numbers as ``NUM``); longer texts are cut at ``max_len``."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    n = len(texts)
    tokens = torch.zeros(n, max_len, dtype=torch.int64)
    values = torch.zeros(n, max_len, dtype=torch.float32)
    numbers = torch.zeros(n, max_numbers, dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.int64)
    length = torch.zeros(n, dtype=torch.int64)
    for row, text in enumerate(texts):
        ids: list[int] = []
        vals: list[float] = []
        pos = 0
        spans = number_spans(text)
        for k, (start, end, value) in enumerate(spans):
            chunk = text[pos:start].encode("utf-8")
            ids.extend(b + 1 for b in chunk)
            vals.extend([0.0] * len(chunk))
            ids.append(NUM)
            vals.append(value)
            if k < max_numbers:
                numbers[row, k] = value
            pos = end
        tail = text[pos:].encode("utf-8")
        ids.extend(b + 1 for b in tail)
        vals.extend([0.0] * len(tail))
        ids, vals = ids[:max_len], vals[:max_len]
        tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        values[row, : len(vals)] = torch.tensor(vals, dtype=torch.float32)
        count[row] = len(spans)
        length[row] = len(ids)
    return EncodedText(tokens, values, numbers, count, length)
