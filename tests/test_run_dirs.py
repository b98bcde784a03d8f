"""A run directory nothing can corrupt: the lock, filesystem failures, advice that works.

Every case goes through the real CLI (the typer app in-process, or ``python -m
tertulia`` in a subprocess where two processes must race) and checks the one
``error:`` line, the exit code 2, and that nothing already written was lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tertulia import runs
from tertulia.cli import app

runner = CliRunner()
SMOKE = ["--set", "train.steps=6", "--set", "train.checkpoint_every=3"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def tertulia(*args, env=None, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "tertulia", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kw,
    )


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != runs.LOCK_FILE
    }


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "smoke"
    result = invoke("run", "smoke", "--out", out, *SMOKE)
    assert result.exit_code == 0, result.output
    return out


# ----------------------------------------------------------------------- lock


def test_two_runs_started_together_one_runs_the_other_names_the_holder(tmp_path):
    out = tmp_path / "race"
    env = {**os.environ, "TERTULIA_CACHE": str(tmp_path / "cache")}  # both generate the data
    args = ["run", "smoke", "--out", out, "--set", "train.steps=40"]
    first, second = tertulia(*args, env=env), tertulia(*args, env=env)
    results = [(p, *p.communicate(timeout=300)) for p in (first, second)]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [(p.returncode, err[-500:]) for p, _, err in results]
    winner = next(p for p, _, _ in results if p.returncode == 0)
    loser_err = next(err for p, _, err in results if p.returncode == 2)
    assert f"in use by process {winner.pid}" in loser_err
    assert "Traceback" not in loser_err
    # the run is whole: one config, one command line, every model's checkpoint, metrics
    assert (out / "command.txt").read_text().count("tertulia run") == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["orchestra"]["steps"] == 40


@pytest.mark.parametrize(
    "command",
    [
        ["run", "smoke", "--out", "{run}"],
        ["run", "--resume", "{run}"],
        ["eval", "{run}"],
        ["report", "{run}"],
        ["compress", "{run}", "--sparsity", "0.5", "--out", "{tmp}/c"],
        ["export", "{run}", "--onnx"],
    ],
    ids=["run", "resume", "eval", "report", "compress", "export"],
)
def test_a_run_being_written_refuses_every_other_command(smoke_run, tmp_path, command):
    before = snapshot(smoke_run)
    lock = runs.acquire(smoke_run, command="tertulia run smoke --out x")  # a writer
    try:
        args = [a.format(run=smoke_run, tmp=tmp_path) for a in command]
        line = one_error_line(invoke(*args))
    finally:
        lock.release()
    assert f"in use by process {os.getpid()} (tertulia run smoke --out x" in line
    assert snapshot(smoke_run) == before
    assert not (tmp_path / "c").exists()  # compress left no half-made folder


def test_readers_share_a_run_but_keep_writers_out(smoke_run):
    reader = runs.acquire(smoke_run, shared=True)
    try:
        other = runs.acquire(smoke_run, shared=True)  # two readers at once
        other.release()
        with pytest.raises(runs.RunDirError, match="in use"):
            runs.acquire(smoke_run)
    finally:
        reader.release()
    runs.acquire(smoke_run).release()  # free again


def test_a_stale_lock_is_taken_over_with_a_warning(smoke_run):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (smoke_run / runs.LOCK_FILE).write_text(f"{gone.pid}\n{time.time()}\ntertulia run smoke\n")
    result = invoke("report", smoke_run)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and f"process {gone.pid}" in result.output
    assert "interrupted" in result.output
    assert (smoke_run / runs.LOCK_FILE).read_text() == ""  # released cleanly


def test_a_run_that_fails_on_bad_data_leaves_no_folder(tmp_path):
    out = tmp_path / "bad"
    result = invoke("run", "burgers", "--out", out, "--set", f"data.path={tmp_path}/none.npz")
    one_error_line(result)
    assert not out.exists()


# ---------------------------------------------------------------- filesystems


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)


@pytest.fixture
def tiny_disk(tmp_path):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=256k")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture
def read_only(tmp_path):
    folder = tmp_path / "ro"
    _mount_tmpfs(folder, "ro,size=64k")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(tiny_disk):
    out = tiny_disk / "run"
    result = invoke("run", "smoke", "--out", out, *SMOKE)
    line = one_error_line(result)
    assert "No space left on device" in line and "--resume" in line
    leftovers = [p.name for p in tiny_disk.rglob("*") if ".tmp" in p.name]
    assert leftovers == []
    assert (out / "config.yaml").is_file()  # what was written stays readable
    assert "name: smoke" in (out / "config.yaml").read_text()


def test_a_read_only_folder_is_one_line(read_only):
    line = one_error_line(invoke("run", "smoke", "--out", read_only / "run", *SMOKE))
    assert "Read-only file system" in line and str(read_only / "run") in line


def test_a_file_where_a_folder_should_be_is_one_line(tmp_path):
    blocker = tmp_path / "plain.txt"
    blocker.write_text("keep me")
    line = one_error_line(invoke("run", "smoke", "--out", blocker / "run", *SMOKE))
    assert "Not a directory" in line or "not a folder" in line
    assert blocker.read_text() == "keep me"


def test_a_name_too_long_is_one_line(tmp_path):
    line = one_error_line(invoke("run", "smoke", "--out", tmp_path / ("x" * 300), *SMOKE))
    assert "too long" in line


# ------------------------------------------------------------ advice that works


def test_out_naming_a_file_says_so_without_suggesting_resume(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    line = one_error_line(invoke("run", "smoke", "--out", target))
    assert "is a file" in line and "--resume" not in line
    assert target.read_text() == "mine"


def test_out_naming_a_folder_that_is_not_a_run_does_not_suggest_resume(tmp_path):
    (tmp_path / "data.csv").write_text("1,2\n")
    line = one_error_line(invoke("run", "smoke", "--out", tmp_path))
    assert "not empty and holds no run" in line and "--resume" not in line


def test_out_naming_a_run_suggests_resume(smoke_run):
    line = one_error_line(invoke("run", "smoke", "--out", smoke_run))
    assert f"--resume {smoke_run}" in line


def test_resume_on_a_file_says_it_is_a_file(tmp_path):
    target = tmp_path / "run.yaml"
    target.write_text("name: smoke\n")
    line = one_error_line(invoke("run", "--resume", target))
    assert "is a file" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["rnu"], "Did you mean 'run'"),
        (["xyzzy"], "commands are: compress, eval, export"),
        (["run", "--ot", "x"], "--out"),
        (["eval"], "Missing argument"),
    ],
)
def test_unknown_commands_and_options_are_one_line_with_the_closest_name(args, expected):
    done = subprocess.run(
        [sys.executable, "-m", "tertulia", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert expected in lines[0]
    assert "╭" not in done.stderr  # not click's usage box


# ------------------------------------------------------- corrupt checkpoints


@pytest.fixture
def copied_run(smoke_run, tmp_path) -> Path:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(smoke_run, copy)
    return copy


def _weights(run: Path) -> Path:
    return next((run / "checkpoint" / "orchestra").glob("step-*/ema.safetensors"))


@pytest.mark.parametrize("damage", ["truncated", "zero-byte", "overwritten"])
@pytest.mark.parametrize("command", ["eval", "export", "compress"])
def test_a_corrupt_checkpoint_is_one_line_naming_the_file(copied_run, tmp_path, damage, command):
    path = _weights(copied_run)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "zero-byte": b"", "overwritten":
                      b"not a safetensors file at all" * 8}[damage])  # fmt: skip
    before = snapshot(copied_run)
    args = {
        "eval": ["eval", copied_run],
        "export": ["export", copied_run, "--onnx"],
        "compress": ["compress", copied_run, "--out", tmp_path / "c", "--finetune-steps", "2"],
    }[command]
    line = one_error_line(invoke(*args))
    assert "ema.safetensors" in line
    assert snapshot(copied_run) == before  # the run is left as it was
    assert not (tmp_path / "c").exists()


def test_a_config_edited_so_shapes_no_longer_match_is_one_line(copied_run):
    config = copied_run / "config.yaml"
    config.write_text(config.read_text().replace("  d: 16\n", "  d: 24\n", 1))
    line = one_error_line(invoke("eval", copied_run))
    assert "do not fit the model of config.yaml" in line and "safetensors" in line
