"""Checkpoints that are corrupt or do not fit the model fail with one RunDirError line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from tertulia.config import TrainConfig
from tertulia.errors import RunDirError
from tertulia.train import Trainer, load_checkpoint, save_checkpoint
from tertulia.train.checkpoint import checkpoint_folder, load_weights
from tertulia.train.tasks import TaskBase


def _save(directory, model=None):
    model = nn.Linear(3, 2) if model is None else model
    folder = save_checkpoint(
        directory, step=5, groups={"model": model.state_dict()}, meta={"model": "toy"}
    )
    return folder, model


def _one_line(exc: pytest.ExceptionInfo, *names: str) -> str:
    message = str(exc.value)
    assert "\n" not in message
    for name in names:
        assert name in message, (name, message)
    return message


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path):
    path.write_bytes(b"this is not a safetensors file, it was overwritten" * 4)


def _zero(path):
    path.write_bytes(b"")


def _json_instead(path):
    path.write_text('{"model": "toy"}')


@pytest.mark.parametrize("damage", [_truncate, _zero, _garbage, _json_instead])
def test_a_damaged_safetensors_file_is_one_line_naming_it(tmp_path, damage):
    folder, _ = _save(tmp_path)
    damage(folder / "model.safetensors")
    with pytest.raises(RunDirError) as exc:
        load_checkpoint(tmp_path)
    _one_line(exc, str(folder / "model.safetensors"), "safetensors")


@pytest.mark.parametrize("text", ["", "{not json", "[1, 2]", '{"step": "five"}', "\x00\xff"])
def test_an_unreadable_meta_json_is_one_line_naming_it(tmp_path, text):
    folder, _ = _save(tmp_path)
    (folder / "meta.json").write_text(text, encoding="latin-1")
    with pytest.raises(RunDirError) as exc:
        load_checkpoint(tmp_path)
    _one_line(exc, str(folder / "meta.json"))


@pytest.mark.parametrize("text", ["", "{", '{"dir": 3}', '{"dir": "../elsewhere"}', "[]"])
def test_a_broken_latest_pointer_is_one_line(tmp_path, text):
    _save(tmp_path)
    (tmp_path / "latest.json").write_text(text)
    with pytest.raises(RunDirError) as exc:
        load_checkpoint(tmp_path)
    _one_line(exc, "latest.json")


def test_a_pointer_to_a_missing_folder_and_a_missing_group(tmp_path):
    folder, _ = _save(tmp_path)
    with pytest.raises(RunDirError) as exc:
        load_checkpoint(tmp_path, require=("model", "train_state"))
    _one_line(exc, "train_state.safetensors", "missing")
    (folder / "model.safetensors").rename(tmp_path / "moved")
    (tmp_path / "latest.json").write_text(json.dumps({"step": 5, "dir": "step-00000009"}))
    with pytest.raises(RunDirError) as exc:
        checkpoint_folder(tmp_path)
    _one_line(exc, "step-00000009", "does not exist")


def test_load_weights_of_another_shape_names_the_file_and_the_tensor(tmp_path):
    folder, _ = _save(tmp_path, nn.Linear(3, 2))
    groups, _ = load_checkpoint(tmp_path)
    source = folder / "model.safetensors"
    wider = nn.Linear(3, 4)
    before = wider.weight.detach().clone()
    with pytest.raises(RunDirError) as exc:
        load_weights(wider, groups["model"], source=source)
    message = _one_line(exc, str(source), "config.yaml", "weight", "(2, 3)", "(4, 3)")
    assert message.startswith(f"{source}: the weights do not fit the model of config.yaml (")
    assert message.endswith("was config.yaml edited?") and "torch.Size" not in message
    assert torch.equal(wider.weight, before)
    with pytest.raises(RunDirError) as exc:  # missing and unexpected keys too
        load_weights(nn.Sequential(nn.Linear(3, 2)), groups["model"], source=source)
    _one_line(exc, str(source), "config.yaml")
    good = nn.Linear(3, 2)
    load_weights(good, groups["model"], source=source)
    assert torch.equal(good.weight, groups["model"]["weight"])


class _Task(TaskBase):
    def __init__(self, width: int):
        self.model = nn.Linear(3, width)

    def sample_batch(self, generator):
        return torch.randn(8, 3, generator=generator)

    def loss(self, batch, step=0):
        loss = self.forward_module(batch).pow(2).mean()
        return loss, {"loss": float(loss.detach())}


def _cfg(**kw):
    return TrainConfig(**({"steps": 4, "batch_size": 8, "checkpoint_every": 2} | kw))


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resuming_a_model_whose_shape_changed_is_one_line(tmp_path, ema):
    Trainer(_Task(2), _cfg(ema=ema), checkpoint_dir=tmp_path).fit()
    with pytest.raises(RunDirError) as exc:
        Trainer(_Task(5), _cfg(steps=8, ema=ema), checkpoint_dir=tmp_path).fit()
    _one_line(exc, "model.safetensors", "config.yaml")


def test_resuming_from_a_damaged_train_state_is_one_line(tmp_path):
    Trainer(_Task(2), _cfg(), checkpoint_dir=tmp_path).fit()
    folder = checkpoint_folder(tmp_path)
    _truncate(folder / "train_state.safetensors")
    with pytest.raises(RunDirError) as exc:
        Trainer(_Task(2), _cfg(steps=8), checkpoint_dir=tmp_path).fit()
    _one_line(exc, str(folder / "train_state.safetensors"))
    (folder / "train_state.safetensors").unlink()
    with pytest.raises(RunDirError) as exc:
        Trainer(_Task(2), _cfg(steps=8), checkpoint_dir=tmp_path).fit()
    _one_line(exc, "train_state.safetensors", "missing")


def _cli(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "tertulia", "run", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_resume_from_a_truncated_checkpoint_is_an_error_line_not_a_traceback(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "TERTULIA_CACHE": str(tmp_path / "cache")}
    sets = ["train.steps=20", "train.checkpoint_every=10", "train.threads=1"]
    first = _cli("smoke", "--out", str(run_dir), *[a for s in sets for a in ("--set", s)], env=env)
    assert first.returncode == 0, first.stderr
    damaged = sorted((run_dir / "checkpoint" / "orchestra").glob("step-*/*.safetensors"))
    assert damaged
    for path in damaged:
        _truncate(path)
    resumed = _cli("smoke", "--resume", str(run_dir), env=env)
    assert resumed.returncode == 2, resumed.stderr
    assert "Traceback" not in resumed.stderr
    # the CLI's progress lines come first; the failure is one line, the last
    errors = [line for line in resumed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and resumed.stderr.rstrip().endswith(errors[0]), resumed.stderr
    assert any(str(path) in errors[0] for path in damaged), resumed.stderr
