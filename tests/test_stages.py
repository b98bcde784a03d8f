"""Staged training: layer groups that unfreeze at given steps with their own rates; best weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tertulia.config import TrainConfig
from tertulia.train import Trainer, learning_rate
from tertulia.train.stages import LayerGroup, freeze, staged_parameter_groups, unfreeze
from tertulia.train.tasks import TaskBase


class TwoPartTask(TaskBase):
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


# --------------------------------------------- the model's own settings on the staged path


class _Declaring(nn.Module):
    """A body whose bias declares its own base lr and betas, and a head with a period."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))

    def optim_groups(self):
        return [
            {"params": [self.body.bias], "lr": 0.04, "betas": (0.5, 0.9), "weight_decay": 0.0},
            {"params": [self.head.weight], "period": 2},
        ]


class _DeclaringTask(TwoPartTask):
    def __init__(self):
        self.model = _Declaring()
        self.w = torch.tensor([[1.0, -2.0, 0.5]])


def _declaring_groups(task, body_mult=0.5):
    return [
        LayerGroup("head", list(task.model.head.parameters()), lr_mult=1.0, start=0),
        LayerGroup("body", list(task.model.body.parameters()), lr_mult=body_mult, start=0),
    ]


def test_staged_groups_keep_the_models_own_settings():
    task = _DeclaringTask()
    cfg = _cfg(steps=6, warmup=0, lr=0.02, weight_decay=0.1)
    seen = []

    def on_step(step, total, logs):
        (group,) = [g for g in trainer.optimizer.param_groups if g.get("betas") == (0.5, 0.9)]
        seen.append(group["lr"] / learning_rate(step - 1, trainer.cfg))

    trainer = Trainer(task, cfg, layer_groups=_declaring_groups(task), on_step=on_step)
    assert type(trainer.optimizer).__name__ == "MultiFrequency"  # the head's period
    by_param = {id(p): g for g in trainer.optimizer.param_groups for p in g["params"]}
    bias = by_param[id(task.model.body.bias)]
    assert bias["betas"] == (0.5, 0.9) and bias["weight_decay"] == 0.0
    assert bias["lr_scale"] == pytest.approx(0.5 * 0.04 / 0.02)  # layer mult × own base rate
    assert by_param[id(task.model.body.weight)]["weight_decay"] == 0.1
    assert by_param[id(task.model.body.weight)]["lr_scale"] == pytest.approx(0.5)
    assert by_param[id(task.model.head.weight)]["period"] == 2
    assert by_param[id(task.model.head.bias)]["period"] == 1
    head_w = task.model.head.weight.detach().clone()
    trainer.cfg = _cfg(steps=1, warmup=0, lr=0.02, weight_decay=0.1)
    trainer.fit()
    assert torch.equal(task.model.head.weight, head_w)  # period 2: not stepped at call 1
    trainer.cfg = cfg
    trainer.fit()
    assert not torch.equal(task.model.head.weight, head_w)
    assert seen == pytest.approx([0.5 * 0.04 / 0.02] * 6)


@pytest.mark.parametrize("memory", ["linear", "mlp"])
def test_the_staged_path_uses_the_configured_optimizer(memory):
    task = TwoPartTask()
    cfg = _cfg(steps=12, optimizer={"kind": "dmgd", "memory": memory})
    trainer = Trainer(task, cfg, layer_groups=_groups(task, body_start=4))
    assert type(trainer.optimizer).__name__ == "DMGD"
    body0 = [p.detach().clone() for p in task.model[0].parameters()]
    trainer.cfg = _cfg(steps=4, optimizer={"kind": "dmgd", "memory": memory})
    trainer.fit()
    assert all(torch.equal(p, q) for p, q in zip(task.model[0].parameters(), body0, strict=True))
    trainer.cfg = cfg
    trainer.fit()
    assert not all(
        torch.equal(p, q) for p, q in zip(task.model[0].parameters(), body0, strict=True)
    )


def test_the_math_expert_inside_a_composite_keeps_its_bank_settings_when_staged():
    from tertulia.nn.text_experts import ARITH_LR, MathExpert

    torch.manual_seed(0)
    expert = MathExpert(8, 1, 4, hidden=8)
    composite = nn.ModuleDict({"math": expert, "router": nn.Linear(4, 2)})

    class Task(TwoPartTask):
        def __init__(self):
            self.model = composite

    groups = [
        LayerGroup("router", list(composite["router"].parameters()), lr_mult=1.0),
        LayerGroup("math", list(expert.parameters()), lr_mult=0.1),
    ]
    trainer = Trainer(Task(), _cfg(lr=1e-3), layer_groups=groups)
    by_param = {id(p): g for g in trainer.optimizer.param_groups for p in g["params"]}
    for p in expert.arith.parameters():
        g = by_param[id(p)]
        assert g["betas"] == (0.9, 0.99) and g["weight_decay"] == 0.0
        assert g["lr_scale"] == pytest.approx(0.1 * ARITH_LR / 1e-3)
    for p in expert.op_head.parameters():
        assert by_param[id(p)]["lr_scale"] == pytest.approx(0.1)
        assert by_param[id(p)]["betas"] == (0.9, 0.999)
