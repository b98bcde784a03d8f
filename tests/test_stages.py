"""Staged training: layer groups that unfreeze at given steps with their own rates; best weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tertulia.config import TrainConfig
from tertulia.train import Trainer, learning_rate
from tertulia.train.stages import LayerGroup, freeze, staged_parameter_groups, unfreeze


class TwoPartTask:
    """y = head(body(x)); a regression both parts must learn."""

    def __init__(self):
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
        self.w = torch.tensor([[1.0, -2.0, 0.5]])

    def sample_batch(self, generator):
        x = torch.randn(16, 3, generator=generator)
        return x, x @ self.w.T

    def loss(self, batch, step=0):
        x, y = batch
        loss = (self.model(x) - y).pow(2).mean()
        return loss, {"loss": float(loss.detach())}

    def validation(self) -> float:
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return float(self.loss(self.sample_batch(g))[0])


def _cfg(**kw):
    base = dict(
        steps=30, batch_size=16, lr=1e-2, warmup=0, checkpoint_every=10, log_every=5, ema=0.0
    )
    return TrainConfig(**(base | kw))


def _groups(task, body_start=10, body_mult=0.1):
    body, head = task.model[0], task.model[2]
    return [
        LayerGroup("head", list(head.parameters()), lr_mult=1.0, start=0),
        LayerGroup("body", list(body.parameters()), lr_mult=body_mult, start=body_start),
    ]


def test_a_group_is_bit_identical_until_its_start_then_learns():
    task = TwoPartTask()
    body0 = [p.detach().clone() for p in task.model[0].parameters()]
    head0 = [p.detach().clone() for p in task.model[2].parameters()]
    trainer = Trainer(task, _cfg(steps=10), layer_groups=_groups(task, body_start=10))
    trainer.fit()
    for p, p0 in zip(task.model[0].parameters(), body0, strict=True):
        assert torch.equal(p, p0)  # frozen: not moved, not decayed
        assert p not in trainer.optimizer.state or not trainer.optimizer.state[p]
    assert any(
        not torch.equal(p, p0) for p, p0 in zip(task.model[2].parameters(), head0, strict=True)
    )
    trainer.cfg = _cfg(steps=20)
    trainer.fit()
    assert any(
        not torch.equal(p, p0) for p, p0 in zip(task.model[0].parameters(), body0, strict=True)
    )


def test_per_group_learning_rates_follow_the_schedule_times_the_multiplier():
    task = TwoPartTask()
    cfg = _cfg(steps=7, warmup=3, lr=0.02)
    seen = []

    def on_step(step, total, logs):
        seen.append({g["layer_group"]: g["lr"] for g in trainer.optimizer.param_groups})

    trainer = Trainer(
        task, cfg, layer_groups=_groups(task, body_start=0, body_mult=0.25), on_step=on_step
    )
    trainer.fit()
    for step, lrs in enumerate(seen):
        assert lrs["head"] == pytest.approx(learning_rate(step, cfg))
        assert lrs["body"] == pytest.approx(0.25 * learning_rate(step, cfg))


def test_a_parameter_in_two_groups_is_rejected_and_freeze_helpers_work():
    task = TwoPartTask()
    p = list(task.model.parameters())
    with pytest.raises(ValueError, match="belongs to layer groups"):
        staged_parameter_groups([LayerGroup("a", p[:2]), LayerGroup("b", p[1:])], 0.0)
    with pytest.raises(ValueError, match="lr_mult"):
        LayerGroup("a", p, lr_mult=-1.0)
    freeze([task.model[0]])
    assert not any(q.requires_grad for q in task.model[0].parameters())
    assert all(q.requires_grad for q in task.model[2].parameters())
    unfreeze([task.model[0]])
    assert all(q.requires_grad for q in task.model.parameters())


def test_frozen_module_through_a_whole_fit_and_resume_with_groups(tmp_path):
    task = TwoPartTask()
    freeze([task.model[0]])
    body0 = [p.detach().clone() for p in task.model[0].parameters()]
    Trainer(task, _cfg(steps=20, ema=0.9)).fit()
    for p, p0 in zip(task.model[0].parameters(), body0, strict=True):
        assert torch.equal(p, p0)
    unfreeze([task.model[0]])
    # a staged run killed at step 10 and resumed equals the uninterrupted run
    a = TwoPartTask()
    Trainer(a, _cfg(steps=20), layer_groups=_groups(a, body_start=5)).fit()

    class Stop(Exception):
        pass

    def stop_at_10(step, total, logs):
        if step == 10:
            raise Stop

    b = TwoPartTask()
    with pytest.raises(Stop):
        Trainer(
            b,
            _cfg(steps=20),
            layer_groups=_groups(b, body_start=5),
            checkpoint_dir=tmp_path / "b",
            on_step=stop_at_10,
        ).fit()
    b2 = TwoPartTask()
    Trainer(
        b2, _cfg(steps=20), layer_groups=_groups(b2, body_start=5), checkpoint_dir=tmp_path / "b"
    ).fit()
    for pa, pb in zip(a.model.parameters(), b2.model.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-7)


def test_keep_best_saves_and_restores_the_best_validating_weights(tmp_path):
    task = TwoPartTask()
    scores = iter([3.0, 1.0, 2.0])
    trainer = Trainer(
        task, _cfg(steps=30), validate=lambda: next(scores), checkpoint_dir=tmp_path, keep_best=True
    )
    snapshots = {}

    def on_step(step, total, logs):
        if step % 10 == 0:
            snapshots[step] = {k: v.clone() for k, v in task.model.state_dict().items()}

    trainer.on_step = on_step
    trainer.fit()
    assert trainer.best == 1.0
    assert trainer.load_best_into_model() == 20
    for k, v in task.model.state_dict().items():
        assert torch.equal(v, snapshots[20][k])
