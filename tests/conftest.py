"""Shared fixtures: a private data cache per test session and tiny recipes."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("TERTULIA_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


TINY = [
    "data.grid=32",
    "data.frames=8",
    "data.n_train=6",
    "data.n_val=2",
    "data.n_test=3",
    "data.window=2",
    "model.d=8",
    "model.d_msg=4",
    "model.d_key=4",
    "model.rounds=2",
    "model.halo=1",
    "train.steps=6",
    "train.batch_size=8",
    "train.warmup=2",
    "train.checkpoint_every=3",
    "train.log_every=2",
    "eval.rollout_steps=3",
    "eval.ood.n=2",
    "eval.ood.nu=[0.1]",
    "eval.adversarial.samples=16",
    "eval.adversarial.pgd_steps=2",
    "eval.rho_iters=5",
]
