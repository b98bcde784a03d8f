"""Sequence-classification data: delayed recall, digits as pixel sequences, MNIST IDX.

* :func:`delay_recall` — a token shown at the first step must be named after a
  long silence: the test of long memory (HiPPO vs a random state matrix).
* :func:`digit_sequences` — scikit-learn's 8×8 digits (shipped inside the
  scikit-learn wheel, no download) read pixel by pixel: 64-step sequences.
* :func:`read_mnist_idx` — MNIST in its IDX format (``.gz`` or raw) from a
  directory the user gives; rows (28 steps of 28) or pixels (784 steps of 1).

Every function returns a :class:`SequenceSplit` per split: inputs ``x``
(S, L, C) float32 and integer labels ``y`` (S,).

Legend: S sequences, L steps, C channels per step, K classes.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import DataError


@dataclass
class SequenceSplit:
    """Sequences ``x`` (S, L, C) float32 and class labels ``y`` (S,) int64."""

    x: torch.Tensor
    y: torch.Tensor
    classes: int

    def __len__(self) -> int:
        return int(self.y.shape[0])


def delay_recall(
    n: int, *, delay: int = 500, tokens: int = 8, distractors: bool = False, seed: int = 0
) -> SequenceSplit:
    """``n`` sequences of ``delay + 2`` steps: token, ``delay`` steps, the cue.

    Channels: ``tokens`` one-hot channels and one cue channel (1 at the last
    step). The label is the token of step 0, so chance accuracy is
    ``1 / tokens``. The steps between are silent, or with ``distractors`` hold
    random tokens of their own: then the model must tell step 0 apart from
    every later step, not merely hold one value.
    """
    if n < 1 or delay < 1 or tokens < 2:
        raise DataError(
            f"delay_recall needs n ≥ 1, delay ≥ 1 and tokens ≥ 2; got {n}, {delay}, {tokens}"
        )
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(tokens, (n,), generator=gen)
    x = torch.zeros(n, delay + 2, tokens + 1)
    x[torch.arange(n), 0, y] = 1.0
    if distractors:
        noise = torch.randint(tokens, (n, delay), generator=gen)
        x[:, 1:-1, :tokens] = nn.functional.one_hot(noise, tokens).float()
    x[:, -1, tokens] = 1.0
    return SequenceSplit(x=x, y=y, classes=tokens)


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    classes = int(y.max()) + 1

    def make(idx: np.ndarray) -> SequenceSplit:
        return SequenceSplit(
            x=torch.as_tensor(x[idx], dtype=torch.float32),
            y=torch.as_tensor(y[idx], dtype=torch.int64),
            classes=classes,
        )

    return {"train": make(train), "test": make(test)}


def digit_sequences(*, test_fraction: float = 0.2, seed: int = 0) -> dict[str, SequenceSplit]:
    """scikit-learn's 1797 8×8 digits as 64-step sequences of one pixel in [0, 1]."""
    try:
        from sklearn.datasets import load_digits  # lazy: the optional [data] extra
    except ImportError:
        raise DataError(
            "the digits sequences need scikit-learn: pip install 'tertulia[data]'"
        ) from None
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1); got {test_fraction}")
    digits = load_digits()
    x = (digits.images.reshape(-1, 64, 1) / 16.0).astype(np.float32)
    return _split(x, digits.target.astype(np.int64), test_fraction, seed)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(data) < 4:
        raise DataError(f"{path} is not an IDX file (too short)")
    zero, dtype_code, ndim = data[0] << 8 | data[1], data[2], data[3]
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 3:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated: its header needs {header} bytes")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, file is shorter/longer")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"{directory} has no {stem}[.gz]; give a directory of MNIST IDX files")


def read_mnist_idx(
    directory: str | Path,
    *,
    prefix: str = "t10k",
    as_rows: bool = True,
    train: int | None = 8000,
) -> dict[str, SequenceSplit]:
    """MNIST IDX images and labels from ``directory`` as sequences.

    ``as_rows``: 28 steps of 28 pixels; else 784 steps of one pixel. With
    ``train`` given, the first ``train`` images are the training split and the
    rest the test split (no shuffling; the split of ``../shared/data/mnist``).
    """
    d = Path(directory)
    if not d.is_dir():
        problem = "is a file, not a folder of IDX files" if d.exists() else "does not exist"
        raise DataError(f"MNIST directory {d} {problem}")
    images = _read_idx(_find(d, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_find(d, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{d}: images {images.shape} and labels {labels.shape} do not pair up")
    x = images.astype(np.float32) / 255.0
    x = x.reshape(len(x), 28, 28) if as_rows else x.reshape(len(x), -1, 1)
    y = labels.astype(np.int64)
    if train is None:
        return {"all": SequenceSplit(torch.as_tensor(x), torch.as_tensor(y), classes=10)}
    if not 0 < train < len(y):
        raise DataError(f"train={train} must leave images for both splits (0 < train < {len(y)})")
    return {
        "train": SequenceSplit(torch.as_tensor(x[:train]), torch.as_tensor(y[:train]), 10),
        "test": SequenceSplit(torch.as_tensor(x[train:]), torch.as_tensor(y[train:]), 10),
    }


def read_mnist_dir(directory: str | Path, *, as_rows: bool = True) -> dict[str, SequenceSplit]:
    """train / test splits of a directory of MNIST IDX files.

    With ``train-images-idx3-ubyte[.gz]`` present, the official 60,000 / 10,000
    split; with only the ``t10k`` files (as in ``../shared/data/mnist``), the
    first 8,000 test images train and the last 2,000 test.
    """
    d = Path(directory)
    if not d.is_dir():
        problem = "is a file, not a folder of IDX files" if d.exists() else "does not exist"
        raise DataError(f"MNIST directory {d} {problem}")
    has_train = any((d / f"train-images-idx3-ubyte{s}").is_file() for s in ("", ".gz"))
    if not has_train:
        return read_mnist_idx(d, as_rows=as_rows)
    train = read_mnist_idx(d, prefix="train", as_rows=as_rows, train=None)["all"]
    test = read_mnist_idx(d, prefix="t10k", as_rows=as_rows, train=None)["all"]
    return {"train": train, "test": test}
