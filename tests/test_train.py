"""Trainer: schedule, checkpoints (round trip, atomicity, resume), NaN guard, tasks."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from tertulia.config import TrainConfig, load_recipe
from tertulia.errors import TrainingDiverged
from tertulia.jobs import forecast
from tertulia.nn.heads import Prediction
from tertulia.train import Trainer, has_checkpoint, learning_rate, load_checkpoint

from .conftest import TINY


class ToyTask:
    """Linear regression with a Gaussian head; ``poison`` makes chosen steps non-finite."""

    def __init__(self, poison=lambda step: False):
        self.model = nn.Linear(3, 2)
        self.poison = poison
        self.calls = 0
        self.w = torch.tensor([[1.0, -2.0, 0.5]])

    def sample_batch(self, generator):
        x = torch.randn(16, 3, generator=generator)
        return x, x @ self.w.T

    def loss(self, batch, step=0):
        x, y = batch
        out = self.model(x)
        pred = Prediction(mean=out[:, :1], log_var=out[:, 1:])
        loss = (0.5 * ((y - pred.mean) ** 2 * torch.exp(-pred.log_var) + pred.log_var)).mean()
        if self.poison(self.calls):
            loss = loss * float("nan")
        self.calls += 1
        return loss, {"loss": float(loss.detach())}


def _cfg(**kw):
    base = dict(steps=30, batch_size=16, lr=1e-2, warmup=5, checkpoint_every=10, log_every=5)
    return TrainConfig(**(base | kw))


def test_learning_rate_warmup_then_cosine():
    cfg = _cfg(steps=110, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert learning_rate(0, cfg) == pytest.approx(0.1)
    assert learning_rate(9, cfg) == pytest.approx(1.0)
    assert learning_rate(10, cfg) == pytest.approx(1.0)
    assert learning_rate(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert learning_rate(110, cfg) == pytest.approx(0.1)


def test_training_reduces_the_loss():
    torch.manual_seed(0)
    task = ToyTask()
    gen = torch.Generator().manual_seed(9)
    before = task.loss(task.sample_batch(gen))[0].item()
    Trainer(task, _cfg(steps=300, ema=0.0), seed=1).fit()
    after = task.loss(task.sample_batch(gen))[0].item()
    assert after < before - 1.0


def test_checkpoint_round_trip_and_exact_resume(tmp_path):
    """Stop at step 10, resume in a new trainer: identical to an uninterrupted run."""
    torch.manual_seed(0)
    full = ToyTask()
    Trainer(full, _cfg(), seed=3, checkpoint_dir=tmp_path / "a").fit()

    torch.manual_seed(0)
    first = ToyTask()
    with pytest.raises(_Stop):  # "killed" right after the step-10 checkpoint
        Trainer(first, _cfg(), seed=3, checkpoint_dir=tmp_path / "c", on_step=_stop_at(10)).fit()
    groups, meta = load_checkpoint(tmp_path / "c")
    assert meta["step"] == 10 and set(groups) == {"model", "ema", "train_state"}
    torch.manual_seed(123)  # a different global state must not matter: it is restored
    second = ToyTask()
    trainer = Trainer(second, _cfg(), seed=3, checkpoint_dir=tmp_path / "c")
    summary = trainer.fit()
    assert summary.resumed_from == 10 and summary.steps == 30
    for a, b in zip(full.model.parameters(), second.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class _PeriodTask(ToyTask):
    """The toy task whose bias updates every 3 steps (a continuum-memory tag)."""

    def __init__(self):
        super().__init__()
        self.model.bias._optim = {"period": 3, "weight_decay": 0.0}


@pytest.mark.parametrize(
    ("make", "optimizer"),
    [
        (ToyTask, {"kind": "dmgd"}),
        (ToyTask, {"kind": "dmgd", "memory": "linear"}),
        (_PeriodTask, {"kind": "adamw"}),
    ],
)
def test_dmgd_and_multi_frequency_training_resume_exactly(tmp_path, make, optimizer):
    """The optimisers of nested learning checkpoint their whole state through the trainer."""
    cfg = _cfg(optimizer=optimizer, steps=31)
    torch.manual_seed(0)
    full = make()
    Trainer(full, cfg, seed=3, checkpoint_dir=tmp_path / "a").fit()
    torch.manual_seed(0)
    first = make()
    with pytest.raises(_Stop):
        Trainer(first, cfg, seed=3, checkpoint_dir=tmp_path / "c", on_step=_stop_at(20)).fit()
    second = make()
    trainer = Trainer(second, cfg, seed=3, checkpoint_dir=tmp_path / "c")
    assert trainer.fit().resumed_from == 20
    for a, b in zip(full.model.parameters(), second.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    if make is _PeriodTask:  # step 31 is no multiple of 3: the bias kept its step-30 value
        assert type(trainer.optimizer).__name__ == "MultiFrequency"


class _Stop(Exception):
    pass


def _stop_at(step):
    def cb(s, total, logs):
        if s == step:
            raise _Stop

    return cb


def test_checkpoint_folder_survives_a_torn_save(tmp_path):
    task = ToyTask()
    Trainer(task, _cfg(steps=10), checkpoint_dir=tmp_path).fit()
    # a killed save leaves a temporary folder behind: latest.json still points at a full one
    (tmp_path / ".step-00000020.tmp-999").mkdir()
    (tmp_path / ".step-00000020.tmp-999" / "model.safetensors").write_bytes(b"garbage")
    groups, meta = load_checkpoint(tmp_path)
    assert meta["step"] == 10 and "model" in groups
    # the next save cleans it up
    Trainer(ToyTask(), _cfg(steps=20), checkpoint_dir=tmp_path).fit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "step-00000020"]


def test_checkpoints_are_safetensors_and_json_only(tmp_path):
    Trainer(ToyTask(), _cfg(steps=10), checkpoint_dir=tmp_path).fit()
    files = {p.suffix for p in (tmp_path / "step-00000010").iterdir()}
    assert files == {".safetensors", ".json"}


def test_non_finite_steps_are_skipped_and_counted():
    task = ToyTask(poison=lambda call: call in (3, 4, 7))
    before = [p.detach().clone() for p in task.model.parameters()]
    summary = Trainer(task, _cfg(steps=20)).fit()
    assert summary.skipped_steps == 3
    assert all(torch.isfinite(p).all() for p in task.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, task.model.parameters(), strict=True))


def test_persistent_nan_stops_training_and_keeps_the_checkpoint(tmp_path):
    task = ToyTask(poison=lambda call: call >= 12)
    trainer = Trainer(task, _cfg(steps=100, nan_patience=5), checkpoint_dir=tmp_path)
    with pytest.raises(TrainingDiverged, match=r"5 consecutive steps.*step 10"):
        trainer.fit()
    groups, meta = load_checkpoint(tmp_path)
    assert meta["step"] == 10
    assert all(torch.isfinite(t).all() for t in groups["model"].values())


def test_forecast_task_batches_and_loss():
    recipe = load_recipe("burgers", TINY)
    from tertulia.data import load_dataset

    splits = load_dataset(recipe.data)
    models = forecast.build_models(recipe, splits)
    task = forecast.make_task(recipe, models["orchestra"], splits)
    split = task.splits["train"]
    assert len(split) == 6 * (8 - 1 - 1)  # trajectories × usable times
    batch = split.batch(torch.tensor([0]))
    t = int(split.index[0, 1])
    torch.testing.assert_close(batch.x[0], split.y[0, t - 1 : t + 1])
    torch.testing.assert_close(batch.y[0], split.y[0, t + 1])
    torch.testing.assert_close(batch.u[0], split.u[0, t + 1])
    loss, logs = task.loss(task.sample_batch(torch.Generator().manual_seed(0)))
    assert loss.ndim == 0 and math.isfinite(float(loss.detach()))
    assert {"nll", "consistency", "residual", "rounds", "loss"} <= set(logs)


def test_beta_nll_reweights_by_variance():
    recipe = load_recipe("burgers", TINY + ["train.loss=beta_nll", "train.beta=1.0"])
    from tertulia.data import load_dataset

    splits = load_dataset(recipe.data)
    models = forecast.build_models(recipe, splits)
    task = forecast.make_task(recipe, models["orchestra"], splits)
    plain = forecast.make_task(load_recipe("burgers", TINY), models["orchestra"], splits)
    batch = task.sample_batch(torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    a = task.loss(batch)[1]["nll"]
    torch.manual_seed(0)
    b = plain.loss(batch)[1]["nll"]
    assert a != pytest.approx(b)


def _run_cli(args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "tertulia", "run", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **kw,
    )


def test_sigkill_mid_training_then_resume_matches_uninterrupted(tmp_path):
    sets = []
    for s in ["train.steps=400", "train.checkpoint_every=10", "train.threads=1"]:
        sets += ["--set", s]
    # uninterrupted reference
    ref = _run_cli(["smoke", "--out", str(tmp_path / "ref"), *sets])
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()

    run_dir = tmp_path / "killed"
    proc = _run_cli(["smoke", "--out", str(run_dir), *sets])
    pointer = run_dir / "checkpoint" / "orchestra" / "latest.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if json.loads(pointer.read_text())["step"] >= 50:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists()
    step = json.loads(pointer.read_text())["step"]
    assert 50 <= step < 400

    resumed = _run_cli(["smoke", "--resume", str(run_dir)])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    a = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    b = json.loads((run_dir / "metrics.json").read_text())
    assert b["train"]["orchestra"]["resumed_from"] == step
    assert a["models"].keys() == b["models"].keys()
    for model, vals in a["models"].items():
        for key, v in vals.items():
            assert b["models"][model][key] == pytest.approx(v, rel=1e-6, abs=1e-9), (model, key)
    commands = (run_dir / "command.txt").read_text().splitlines()
    assert len(commands) == 2 and "--resume" in commands[1]
    assert has_checkpoint(run_dir / "checkpoint" / "mlp")


def test_deq_with_stability_and_blocks_resumes_exactly(tmp_path):
    """Everything issue 3 adds to a step (adjoint solve, Hutchinson probes, ρ, block
    freezing, power-iteration vectors) is restored by resume: same weights at the end."""
    from tertulia.config import load_recipe
    from tertulia.data import load_dataset
    from tertulia.jobs.forecast import build_models, make_task

    from .conftest import TINY

    recipe = load_recipe(
        "burgers",
        TINY
        + [
            "train.mode=deq",
            "model.rounds=20",
            "model.skip=input",
            "model.spectral_norm=0.9",
            "train.jac_reg=0.3",
            "train.rho_every=2",
            "train.blocks.kind=round_robin",
            "train.blocks.size=2",
            "train.blocks.every=3",
            "train.steps=8",
            "train.checkpoint_every=4",
        ],
    )
    splits = load_dataset(recipe.data)

    def trainer(folder, on_step=None):
        torch.manual_seed(5)
        model = build_models(recipe, splits)["orchestra"]
        task = make_task(recipe, model, splits)
        return Trainer(task, recipe.train, seed=3, checkpoint_dir=folder, on_step=on_step)

    ref = trainer(tmp_path / "ref")
    ref.fit()

    def stop_at_4(step, total, logs):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "cut", on_step=stop_at_4).fit()
    resumed = trainer(tmp_path / "cut")
    assert resumed.fit().resumed_from == 4
    for (name, a), b in zip(
        ref.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resumed.stats == ref.stats


def test_parameters_with_their_own_optim_settings_get_their_own_group(tmp_path):
    task = ToyTask()
    task.model.bias._optim = {"weight_decay": 0.0, "lr": 2.5e-3}  # a quarter of train.lr
    trainer = Trainer(task, _cfg(steps=7, weight_decay=0.1), checkpoint_dir=tmp_path)
    groups = trainer.optimizer.param_groups
    special = [g for g in groups if any(p is task.model.bias for p in g["params"])]
    assert len(special) == 1 and len(special[0]["params"]) == 1
    assert special[0]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == 2  # every parameter exactly once
    trainer.fit()
    plain = next(g for g in groups if any(p is task.model.weight for p in g["params"]))
    assert special[0]["lr"] == pytest.approx(0.25 * plain["lr"]) and plain["lr"] > 0
