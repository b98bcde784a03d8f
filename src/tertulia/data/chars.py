"""Character-level text for language modelling, shipped with CPython or read from a file.

:func:`pydoc_text` is the Python documentation's topic texts (``pydoc_data.topics``,
part of every CPython: ~465k characters, ~100 distinct), joined in sorted topic
order so the corpus is the same on every machine with the same Python. The split
is fixed and unshuffled: the first ``1 − val_fraction`` of the characters train,
the rest validate.

Legend: N characters, V vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError


def pydoc_text() -> str:
    """The Python documentation topics shipped with CPython, in sorted topic order."""
    try:
        from pydoc_data.topics import topics  # lazy: optional in some Python builds
    except ImportError:  # pragma: no cover - part of the standard library
        raise DataError("this Python has no pydoc_data.topics; give a text file instead") from None
    return "".join(topics[k] for k in sorted(topics))


def read_text(path: str | Path) -> str:
    """A UTF-8 text file (DataError if missing, unreadable or empty)."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"text file {p} is a folder; give a UTF-8 text file")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"text file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {p} as UTF-8 text: {exc}") from None
    if not text:
        raise DataError(f"text file {p} is empty")
    return text


@dataclass
class CharCorpus:
    """Token ids of the train and validation characters and the vocabulary (sorted)."""

    train: torch.Tensor  # (N_train,) int64
    val: torch.Tensor  # (N_val,) int64
    vocab: list[str]

    @property
    def size(self) -> int:
        return len(self.vocab)


def char_corpus(text: str, *, val_fraction: float = 0.1, min_split: int = 2) -> CharCorpus:
    """Characters → ids over the sorted set of characters; fixed tail split for validation."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.int64, device="cpu")
    cut = int(round(len(ids) * (1.0 - val_fraction)))
    if cut < min_split or len(ids) - cut < min_split:
        raise DataError(
            f"a text of {len(ids)} characters is too short to split with val_fraction="
            f"{val_fraction}"
        )
    return CharCorpus(train=ids[:cut], val=ids[cut:], vocab=vocab)
