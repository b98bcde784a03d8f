"""Character language models: corpus, causal and sliding-window attention, bpc, the lm job."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from tertulia.cli import app
from tertulia.data.chars import char_corpus, pydoc_text, read_text
from tertulia.errors import DataError
from tertulia.jobs.lm import LMTask
from tertulia.nn.lm import band_mask, mamba_lm, transformer_lm
from tertulia.train.groups import declared_settings


def test_pydoc_corpus_is_shipped_and_split_at_its_tail():
    text = pydoc_text()
    assert len(text) > 100_000
    corpus = char_corpus(text, val_fraction=0.1)
    assert len(corpus.train) + len(corpus.val) == len(text)
    assert abs(len(corpus.val) / len(text) - 0.1) < 1e-4
    assert (
        "".join(corpus.vocab[i] for i in corpus.val[:50].tolist()) == text[len(corpus.train) :][:50]
    )


def test_bad_text_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_text(tmp_path / "none.txt")
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_text(tmp_path / "e.txt")
    with pytest.raises(DataError, match="too short"):
        char_corpus("abc", val_fraction=0.1, min_split=3)


def test_band_mask_is_causal_and_windowed():
    m = band_mask(6, 3)
    for t in range(6):
        for s in range(6):
            assert bool(m[t, s]) == (s <= t and t - s < 3)


@pytest.mark.parametrize("window", [None, 4])
def test_attention_sees_no_future_and_nothing_beyond_its_window(window):
    torch.manual_seed(0)
    model = transformer_lm(11, 16, 2, heads=2, context=32, window=window).eval()
    x = torch.randint(11, (1, 20))
    base = model(x)
    future = x.clone()
    future[0, 15:] = (future[0, 15:] + 1) % 11
    torch.testing.assert_close(model(future)[0, :15], base[0, :15])
    if window is not None:
        # two layers of width-4 windows: token 19 sees tokens ≥ 19 − 2·(4 − 1) = 13
        past = x.clone()
        past[0, :13] = (past[0, :13] + 1) % 11
        torch.testing.assert_close(model(past)[0, 19], base[0, 19])


def test_mamba_lm_is_causal():
    torch.manual_seed(0)
    model = mamba_lm(7, 16, 1).eval()
    x = torch.randint(7, (2, 12))
    y = x.clone()
    y[:, 8:] = (y[:, 8:] + 3) % 7
    torch.testing.assert_close(model(y)[:, :8], model(x)[:, :8], rtol=1e-5, atol=1e-6)


class _Uniform(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.w + torch.zeros(*tokens.shape, self.vocab)


def test_bpc_of_a_uniform_model_is_log2_of_the_vocabulary():
    corpus = char_corpus(pydoc_text()[:5000], val_fraction=0.2)
    task = LMTask(_Uniform(corpus.size), corpus, context=64, batch_size=4)
    assert task.bpc() == pytest.approx(math.log2(corpus.size), rel=1e-6)
    batch = task.sample_batch(torch.Generator().manual_seed(0))
    assert batch.shape == (4, 65)


def test_hope_levels_carry_their_update_period():
    from tertulia.config import LMModelConfig
    from tertulia.jobs.lm import build_lm

    model = build_lm("hope", LMModelConfig(d=8, layers=2, periods=[1, 4]), 11, 16)
    declared = declared_settings(model)
    assert set(declared.values()) == {(("period", 4),)}  # period-1 levels declare nothing
    slow = [p for p in model.parameters() if id(p) in declared]
    per_level = sum(p.numel() for p in model.blocks[0].levels[1].parameters())
    assert sum(p.numel() for p in slow) == 2 * per_level  # level 2 of both blocks
    assert model(torch.randint(11, (2, 9))).shape == (2, 9, 11)


def test_lm_run_trains_and_reports_bpc(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "run",
            "hope-lm",
            "--out",
            str(tmp_path / "lm"),
            "--set",
            "models={transformer: {d: 16, layers: 1, heads: 2}, mamba: {d: 16, layers: 1}, "
            "hope: {d: 16, layers: 1, periods: [1, 2], chunk: 4}}",
            "--set",
            "train.steps=6",
            "--set",
            "data.context=32",
        ],
    )
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "lm" / "metrics.json").read_text())
    assert set(m["models"]) == {"transformer", "mamba", "hope"}
    assert all(0 < row["bpc"] < 8 for row in m["models"].values())
    bad = runner.invoke(app, ["run", "hope-lm", "--set", "data.source=file"])
    assert bad.exit_code == 2 and "data.path" in bad.output
