"""Sequence-classification data: delayed recall, digits, MNIST IDX."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from tertulia.data.sequences import delay_recall, digit_sequences, read_mnist_idx
from tertulia.errors import DataError

# ../shared/data/mnist beside the project (a clone elsewhere finds the machine's copy)
_ROOT = Path(__file__).resolve().parents[1]
MNIST = next(
    (
        p
        for p in (_ROOT.parent / "shared" / "data" / "mnist", Path("/work/shared/data/mnist"))
        if p.is_dir()
    ),
    _ROOT.parent / "shared" / "data" / "mnist",
)


def test_delay_recall_layout():
    s = delay_recall(64, delay=20, tokens=4, seed=1)
    assert s.x.shape == (64, 22, 5) and s.classes == 4
    assert torch.equal(s.x[:, 0, :4].argmax(-1), s.y)
    assert s.x[:, 1:-1].abs().sum() == 0  # silence between token and cue
    assert (s.x[:, -1, 4] == 1).all() and (s.x[:, :-1, 4] == 0).all()
    assert torch.equal(delay_recall(64, delay=20, tokens=4, seed=1).y, s.y)
    with pytest.raises(DataError, match="tokens ≥ 2"):
        delay_recall(3, tokens=1)


def test_digit_sequences_split():
    splits = digit_sequences(test_fraction=0.2, seed=0)
    train, test = splits["train"], splits["test"]
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert train.x.shape[1:] == (64, 1) and 0 <= train.x.min() and train.x.max() <= 1
    assert train.classes == 10


def test_mnist_rows_from_the_shared_folder():
    splits = read_mnist_idx(MNIST, as_rows=True, train=8000)
    assert splits["train"].x.shape == (8000, 28, 28) and len(splits["test"]) == 2000
    assert splits["train"].y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    pixels = read_mnist_idx(MNIST, as_rows=False, train=8000)
    assert pixels["test"].x.shape == (2000, 784, 1)


def test_mnist_bad_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_mnist_idx(tmp_path / "nope")
    with pytest.raises(DataError, match="no t10k-images"):
        read_mnist_idx(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 4)
    )
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")
    with pytest.raises(DataError, match="truncated"):
        read_mnist_idx(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x12\x34\x08\x03"))
    with pytest.raises(DataError, match="magic"):
        read_mnist_idx(tmp_path)
    raw = np.zeros((1, 28, 28), np.uint8).tobytes()
    header = b"\x00\x00\x08\x03" + (1).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + raw))
    only = read_mnist_idx(tmp_path, train=None)["all"]
    assert only.x.shape == (1, 28, 28) and only.y.tolist() == [7]


def test_delay_recall_distractors_fill_the_delay():
    s = delay_recall(16, delay=30, tokens=4, distractors=True, seed=2)
    assert (s.x[:, 1:-1, :4].sum(-1) == 1).all()  # one token per step in the delay
    assert torch.equal(s.x[:, 0, :4].argmax(-1), s.y)
    assert torch.equal(delay_recall(16, delay=30, tokens=4, seed=2).y, s.y)
