"""Data-parallel training: 2 gloo processes equal 1 process on the same global batch; a
checkpoint written by 2 processes resumes in 1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from tertulia.config import TrainConfig
from tertulia.data.sequences import SequenceSplit
from tertulia.train import Trainer
from tertulia.train.distributed import shard
from tertulia.train.tasks import ClassifyTask, LabelledBatch

STEPS = 20


def _task() -> ClassifyTask:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, 3, generator=gen)
    y = (x.sum((1, 2)) > 0).long() + (x[:, 0, 0] > 1).long()
    split = SequenceSplit(x, y, classes=3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3))
    return ClassifyTask(model, {"train": split, "val": split, "test": split}, batch_size=16)


def _cfg(steps: int = STEPS) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=16, lr=1e-2, warmup=2, checkpoint_every=10, ema=0.9)


class _Stop(Exception):
    pass


def _stop_at(step: int):
    def cb(s, total, logs):
        if s == step:
            raise _Stop

    return cb


def _worker(rank: int, world: int, folder: str, stop: int | None) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world
    )
    try:
        task = _task()
        trainer = Trainer(
            task,
            _cfg(),
            seed=3,
            checkpoint_dir=Path(folder) / "ckpt",
            on_step=_stop_at(stop) if stop else None,
        )
        try:
            trainer.fit()
        except _Stop:
            pass
        if rank == 0:
            save_file(
                {k: v.contiguous() for k, v in task.model.state_dict().items()},
                str(Path(folder) / "params.safetensors"),
            )
    finally:
        dist.destroy_process_group()


def _spawn(folder: Path, stop: int | None = None) -> dict[str, torch.Tensor]:
    mp.spawn(_worker, args=(2, str(folder), stop), nprocs=2, join=True)
    return load_file(str(folder / "params.safetensors"))


def _single(folder: Path | None = None) -> dict[str, torch.Tensor]:
    task = _task()
    Trainer(task, _cfg(), seed=3, checkpoint_dir=folder).fit()
    return task.model.state_dict()


def test_two_gloo_processes_equal_one_on_the_same_global_batch(tmp_path):
    two = _spawn(tmp_path)
    one = _single()
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-5, atol=1e-5)
    # rank 0 alone wrote the checkpoint: one folder, whole
    assert (tmp_path / "ckpt" / "latest.json").is_file()


def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path):
    _spawn(tmp_path, stop=10)  # both ranks stop right after the step-10 checkpoint
    task = _task()
    summary = Trainer(task, _cfg(), seed=3, checkpoint_dir=tmp_path / "ckpt").fit()
    assert summary.resumed_from == 10 and summary.steps == STEPS
    one = _single()
    for key, value in one.items():
        torch.testing.assert_close(task.model.state_dict()[key], value, rtol=1e-5, atol=1e-5)


def test_a_batch_that_does_not_split_is_refused_before_any_worker_starts(tmp_path):
    from typer.testing import CliRunner

    from tertulia.cli import app

    out = tmp_path / "r"
    result = CliRunner().invoke(app, ["run", "smoke", "--nproc", "3", "--out", str(out)])
    assert result.exit_code == 2 and "--nproc 3 must divide" in result.output
    assert not out.exists()


def test_shard_cuts_every_tensor_of_a_batch():
    batch = LabelledBatch(x=torch.arange(12.0).view(6, 2), y=torch.arange(6))
    part = shard(batch, 1, 3)
    assert torch.equal(part.x, torch.tensor([[4.0, 5.0], [6.0, 7.0]]))
    assert torch.equal(part.y, torch.tensor([2, 3]))
    assert shard((torch.zeros(4), 5), 0, 2)[1] == 5
    with pytest.raises(ValueError, match="divisible"):
        shard(torch.zeros(5), 0, 2)


def test_run_with_two_processes_matches_one_through_the_cli(tmp_path):
    """``tertulia run --nproc 2`` (torch's elastic launcher, gloo) gives the one-process run."""
    import json
    import subprocess
    import sys

    from typer.testing import CliRunner

    from tertulia.cli import app

    from .conftest import TINY

    sets = [a for s in [*TINY, "train.batch_size=8"] for a in ("--set", s)]
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tertulia",
            "run",
            "burgers",
            "--nproc",
            "2",
            "--out",
            str(two),
            *sets,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    one = tmp_path / "one"
    result = CliRunner().invoke(app, ["run", "burgers", "--out", str(one), *sets])
    assert result.exit_code == 0, result.output
    m2 = json.loads((two / "metrics.json").read_text())["models"]
    m1 = json.loads((one / "metrics.json").read_text())["models"]
    for name in ("orchestra", "mlp"):
        assert m2[name]["nrmse_1step"] == pytest.approx(m1[name]["nrmse_1step"], rel=1e-5)
    assert "--nproc 2" in (two / "command.txt").read_text()
