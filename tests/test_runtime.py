"""Devices and precision: ``runtime.device`` / ``--device``, bf16 autocast, and the
rule that no job makes a tensor without ``device=``.

There is no GPU here, so the device rule is held by running every job with a
*foreign default device*: inside ``torch.device("meta")`` any tensor made without
``device=`` lands on ``meta`` and the first operation that meets a real (CPU)
tensor fails, exactly as a CPU tensor meeting a CUDA model would on a GPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from tertulia import jobs
from tertulia.cli import app
from tertulia.config import ConfigError, RuntimeConfig, load_recipe
from tertulia.jobs import compress_run
from tertulia.runtime import (
    CPU,
    Runtime,
    float32,
    full_precision,
    map_tensors,
    random_like,
    resolve_device,
)
from tertulia.sweep import trial_resources

from .conftest import TINY

runner = CliRunner()

SEQ = [
    "model.d_model=8",
    "model.d_state=8",
    "model.layers=1",
    "train.steps=6",
    "train.batch_size=16",
    "train.warmup=2",
    "train.checkpoint_every=3",
    "train.log_every=3",
]
VELORA = [
    "data.n_math=120",
    "data.n_language=120",
    "data.n_extrapolation=20",
    "math.d_model=8",
    "math.layers=1",
    "math.d_state=4",
    "language.d_model=8",
    "language.layers=1",
    "language.d_state=4",
    "router.d_model=8",
    "math.train.steps=4",
    "language.train.steps=4",
    "phase2.steps=4",
    "finetune.train.steps=4",
    "finetune.schedule=[{groups: [router, fusion], start: 0}]",
    "explain=2",
]
# every job and every path a model can take through it, at toy sizes
JOBS = {
    "forecast": (
        "burgers",
        [
            *TINY,
            "baselines.ssm=[s4d, mamba]",
            "baselines.ssm_width=4",
            "baselines.ssm_state=4",
            "baselines.ssm_layers=1",
            "train.jac_reg=0.1",
            "train.rho_every=2",
        ],
    ),
    "forecast-deq-kalman": (
        "burgers",
        [
            *TINY,
            "train.mode=deq",
            "model.rounds=6",
            "model.cell=kalman",
            "baselines.cell=ssm",
            "baselines.mlp=false",
            "eval.ood.enabled=false",
            "eval.adversarial.enabled=false",
        ],
    ),
    "forecast-async-blocks": (
        "burgers",
        [
            *TINY,
            "model.schedule=async",
            "model.order=random",
            "model.graph.coordinator=true",
            "model.graph.memory_slots=2",
            "model.spectral_norm=0.9",
            "train.blocks.kind=round_robin",
            "train.blocks.every=2",
            "train.optimizer.kind=dmgd",
            "baselines.mlp=false",
            "eval.ood.enabled=false",
            "eval.adversarial.enabled=false",
        ],
    ),
    "sequence-s4d": ("seq-digits", SEQ),
    "sequence-mamba": ("seq-digits", [*SEQ, "model.kind=mamba"]),
    "sequence-hippo": (
        "delay-recall",
        [*SEQ, "data.delay=12", "data.n_train=48", "data.n_test=16", "model.compare_init=none"],
    ),
    "velora": ("velora", [*VELORA, "router.k=2", "fusion.kind=attention"]),
    "lm": (
        "hope-lm",
        [
            "models={transformer: {d: 8, layers: 1, heads: 2}, mamba: {d: 8, layers: 1}, "
            "hope: {d: 8, layers: 1, periods: [1, 2], chunk: 4}}",
            "train.steps=3",
            "data.context=16",
        ],
    ),
    "recall": (
        "recall",
        [
            "models={sliding_attention: {d: 8, layers: 1, heads: 2}, "
            "titans: {d: 8, layers: 1, chunk: 4}}",
            "data.window=8",
            "data.n_test=8",
            "train.steps=3",
        ],
    ),
    "continual": (
        "continual",
        [
            "data.grid=16",
            "data.frames=8",
            "data.n_train=4",
            "data.n_test=2",
            "data.window=2",
            "nus=[0.2, 0.05]",
            "model.d=8",
            "model.hidden=8",
            "train.steps=4",
            "eval_every=2",
        ],
    ),
}
CLASSICAL = {"series": ("nile", []), "island": ("island", ["island.steps=60"])}


def _numbers(obj):
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield float(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)


# --------------------------------------------------------------------- devices


def test_resolve_device_on_a_machine_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" AUTO ") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA device is available here"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda:0")
    with pytest.raises(ConfigError, match=r"unknown device 'tpu'; devices are cpu, cuda"):
        resolve_device("tpu")


def test_resolve_device_picks_this_workers_gpu(monkeypatch):
    """Resolution only: ``cuda`` in a data-parallel worker is cuda:LOCAL_RANK."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match=r"has 2 CUDA devices \(cuda:0 … cuda:1\)"):
        resolve_device("cuda:2")


def test_runtime_section_validates_and_lands_last_in_the_yaml():
    rec = load_recipe("burgers", ["runtime.device=CUDA:1", "runtime.precision=bf16"])
    assert rec.runtime == RuntimeConfig(device="cuda:1", precision="bf16")
    assert rec.to_yaml().rstrip().endswith("runtime:\n  device: cuda:1\n  precision: bf16")
    assert load_recipe("burgers").runtime == RuntimeConfig()  # cpu, fp32 by default
    with pytest.raises(ConfigError, match=r"runtime.device: unknown device 'gpu'"):
        load_recipe("burgers", ["runtime.device=gpu"])
    with pytest.raises(ConfigError, match=r"runtime.precision: Input should be 'fp32' or 'bf16'"):
        load_recipe("seq-digits", ["runtime.precision=fp16"])
    with pytest.raises(ConfigError, match=r"did you mean 'device'"):
        load_recipe("velora", ["runtime.devise=cpu"])
    changed = rec.with_runtime(device="auto")
    assert changed.runtime.device == "auto" and changed.runtime.precision == "bf16"
    assert rec.runtime.device == "cuda:1"  # a copy, the recipe itself is untouched
    with pytest.raises(ConfigError, match="unknown device"):
        rec.with_runtime(device="npu")


def test_map_tensors_and_runtime_to_walk_batches():
    from dataclasses import dataclass
    from typing import NamedTuple

    @dataclass
    class B:
        x: torch.Tensor
        extra: dict

    class P(NamedTuple):
        a: torch.Tensor
        n: int

    batch = B(torch.ones(2), {"k": [torch.zeros(1), 3], "p": P(torch.ones(1), 5)})
    doubled = map_tensors(lambda t: t * 2, batch)
    assert torch.equal(doubled.x, torch.full((2,), 2.0))
    assert doubled.extra["k"][1] == 3 and isinstance(doubled.extra["p"], P)
    assert doubled.extra["p"].n == 5 and torch.equal(doubled.extra["p"].a, torch.full((1,), 2.0))
    assert CPU.to(batch).x is batch.x  # already there: not copied


def test_random_like_draws_on_the_generators_device_and_repeats():
    like = torch.zeros(3, 4, dtype=torch.float64)
    a = random_like(like, generator=torch.Generator().manual_seed(5), normal=True)
    b = random_like(like, generator=torch.Generator().manual_seed(5), normal=True)
    assert a.dtype == torch.float64 and a.shape == (3, 4) and torch.equal(a, b)
    u = random_like(like, (7,), generator=torch.Generator().manual_seed(1))
    assert u.shape == (7,) and bool(((u >= 0) & (u < 1)).all())


# ------------------------------------------------------------------- precision


def test_bf16_autocast_puts_matmuls_in_bfloat16_and_kernels_in_float32():
    rt = Runtime.resolve("cpu", "bf16")
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with rt.autocast():
        assert lin(x).dtype == torch.bfloat16
        with full_precision(x):
            (xb,) = float32(x.bfloat16())
            assert xb.dtype == torch.float32 and lin(xb).dtype == torch.float32
    with CPU.autocast():
        assert lin(x).dtype == torch.float32
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        Runtime.resolve("cpu", "fp8")


def _scan_inputs(gen):
    B, L, D, N = 2, 9, 3, 4
    return (
        torch.randn(B, L, D, generator=gen),
        torch.rand(B, L, D, generator=gen) * 0.5,
        -torch.rand(D, N, generator=gen) - 0.5,
        torch.randn(B, L, N, generator=gen),
        torch.randn(B, L, N, generator=gen),
    )


def test_delicate_kernels_leave_autocast_and_match_their_float32_selves():
    """Under bf16 autocast the scans, the FFT convolutions, the HiPPO recurrence, the Titans
    writes and the Kalman update compute in float32: fed bf16-rounded inputs they return
    what they return in float32 outside autocast."""
    from tertulia.nn.hippo_memory import HippoMemory
    from tertulia.nn.kalman_cell import KalmanCellBank
    from tertulia.nn.s4d import S4D
    from tertulia.nn.scan import selective_scan
    from tertulia.nn.titans import NeuralMemory

    gen = torch.Generator().manual_seed(0)
    rt = Runtime.resolve("cpu", "bf16")
    rounded = [t.bfloat16() for t in _scan_inputs(gen)]
    with rt.autocast():
        y = selective_scan(*rounded)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, selective_scan(*float32(*rounded)), rtol=0, atol=0)

    torch.manual_seed(0)
    s4d, hippo = S4D(4, N=4), HippoMemory(4, N=4)
    seen = []

    def spy(fn):
        def inner(*args, **kwargs):
            out = fn(*args, **kwargs)
            seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
            return out

        return inner

    s4d.kernel.kernel = spy(s4d.kernel.kernel)  # the SSM convolution kernel
    hippo.memory = spy(hippo.memory)  # the LegS recurrence
    u = torch.randn(2, 12, 4, generator=gen)
    for layer in (s4d, hippo):
        with rt.autocast():
            out = layer(u)
        assert out.dtype == torch.bfloat16  # its output map still runs in bf16
    assert seen == [(False, torch.float32)] * 2

    mem = NeuralMemory(4, chunk=3)
    inner = mem._write_and_read
    calls = []

    def writes(state, *tensors):
        calls.append((torch.is_autocast_enabled("cpu"), {t.dtype for t in tensors}))
        reads, weights, momenta = inner(state, *tensors)
        calls.append({t.dtype for t in [*reads, *weights, *momenta]})
        return reads, weights, momenta

    mem._write_and_read = writes  # the test-time writes and reads of the memory
    with rt.autocast():
        y = mem(torch.randn(2, 7, 4, generator=gen))
    assert y.dtype == torch.bfloat16
    assert calls == [(False, {torch.float32}), {torch.float32}]

    bank = KalmanCellBank(3, d=8, d_msg=2)
    e = torch.randn(2, 3, 8, generator=gen)
    s, m = bank.initial(e), torch.randn(2, 3, 2, generator=gen)
    with rt.autocast():
        out = bank.step(s.bfloat16(), m.bfloat16(), e.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, bank.step(*float32(s.bfloat16(), m.bfloat16(), e.bfloat16())))


# ------------------------------------------------------- the foreign-device run


class _StrayTensor(nn.Module):
    """A forward that makes a tensor without device= (the bug the harness exists for)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(x) + torch.ones(3)


def test_the_foreign_device_harness_catches_a_tensor_made_without_device():
    model = _StrayTensor()
    x = torch.randn(2, 3)
    model(x)  # fine on the default device …
    with torch.device("meta"), pytest.raises(RuntimeError, match="meta"):
        model(x)  # … and caught once the default device is not the model's


@pytest.mark.parametrize("job", list(JOBS))
def test_every_job_runs_with_a_foreign_default_device(job, tmp_path):
    recipe, sets = JOBS[job]
    rec = load_recipe(recipe, sets)
    with torch.device("meta"):
        metrics = jobs.run(rec, tmp_path / "run")
    assert metrics["runtime"] == {"device": "cpu", "device_name": "cpu", "precision": "fp32"}
    values = list(_numbers(metrics["models"]))
    assert values and all(math.isfinite(v) for v in values)
    assert (tmp_path / "run" / "report.html").is_file()


def test_the_foreign_device_changes_no_number(tmp_path):
    rec = load_recipe("burgers", TINY)
    plain = jobs.run(rec, tmp_path / "plain")
    with torch.device("meta"):
        foreign = jobs.run(rec, tmp_path / "foreign")
    assert foreign["models"] == plain["models"]


QUICK = ["eval.ood.enabled=false", "eval.adversarial.enabled=false", "baselines.persistence=false"]


@pytest.mark.parametrize("recipe, sets", [("burgers", [*TINY, *QUICK]), JOBS["sequence-s4d"]])
def test_eval_and_compress_run_with_a_foreign_default_device(recipe, sets, tmp_path):
    run = tmp_path / "run"
    jobs.run(load_recipe(recipe, sets), run)
    with torch.device("meta"):
        again = jobs.evaluate_run(run, device="cpu")
        res = compress_run(run, tmp_path / "c", sparsity=0.5, finetune_steps=2)
    assert again["models"]
    assert all(math.isfinite(e["compressed"]["metric"]) for e in res["models"].values())
    assert res["runtime"]["device"] == "cpu"


@pytest.mark.parametrize("job", list(CLASSICAL))
def test_classical_jobs_run_with_a_foreign_default_device(job, tmp_path):
    recipe, sets = CLASSICAL[job]
    with torch.device("meta"):
        jobs.run(load_recipe(recipe, sets), tmp_path / "run")
    assert (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.parametrize("setting", ["runtime.precision=bf16", "runtime.device=cuda"])
def test_classical_jobs_refuse_gpu_and_bf16(setting, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # even where there is one
    with pytest.raises(ConfigError, match="fitted on the CPU in float64"):
        jobs.run(load_recipe("nile", [setting]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------ bf16


@pytest.mark.parametrize("job", ["forecast", "forecast-deq-kalman", "sequence-mamba", "lm"])
def test_jobs_train_and_judge_in_bf16(job, tmp_path):
    recipe, sets = JOBS[job]
    metrics = jobs.run(load_recipe(recipe, [*sets, "runtime.precision=bf16"]), tmp_path / "r")
    assert metrics["runtime"]["precision"] == "bf16"
    values = list(_numbers(metrics["models"]))
    assert values and all(math.isfinite(v) for v in values)


def test_bf16_forecast_stays_close_to_fp32(tmp_path):
    sets = [*TINY, "train.steps=30", "eval.ood.enabled=false", "eval.adversarial.enabled=false"]
    full = jobs.run(load_recipe("burgers", sets), tmp_path / "fp32")
    half = jobs.run(load_recipe("burgers", [*sets, "runtime.precision=bf16"]), tmp_path / "b")
    for name in ("orchestra", "mlp"):
        a, b = full["models"][name]["nrmse_1step"], half["models"][name]["nrmse_1step"]
        assert a != b  # bf16 really ran …
        assert abs(a - b) / a < 0.05  # … and trained the same model to within 5 %


# ------------------------------------------------------------------------- CLI


def _sets(sets):
    out = []
    for s in sets:
        out += ["--set", s]
    return out


def test_cli_device_cuda_without_a_gpu_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "r"
    for args in (["--device", "cuda"], ["--device", "tpu"], ["--precision", "fp16"]):
        res = runner.invoke(app, ["run", "smoke", "--out", str(out), *args])
        assert res.exit_code == 2, res.output
        assert res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1
        assert "Traceback" not in res.output
        assert not out.exists()


def test_cli_precision_is_recorded_and_fixed_for_the_run(tmp_path):
    out = tmp_path / "r"
    sets = [*SEQ, "model.kind=mamba", "model.compare_init=none"]
    res = runner.invoke(
        app,
        ["run", "seq-digits", "--out", str(out), "--device", "auto", "--precision", "bf16"]
        + _sets(sets),
    )
    assert res.exit_code == 0, res.output
    saved = load_recipe(str(out / "config.yaml"))
    assert saved.runtime == RuntimeConfig(device="auto", precision="bf16")
    assert json.loads((out / "metrics.json").read_text())["runtime"]["precision"] == "bf16"
    assert "--precision bf16" in (out / "command.txt").read_text()
    bad = runner.invoke(app, ["run", "--resume", str(out), "--precision", "fp32"])
    assert bad.exit_code == 2 and "trains in bf16" in bad.output
    ok = runner.invoke(app, ["run", "--resume", str(out), "--device", "cpu"])  # moves freely
    assert ok.exit_code == 0, ok.output
    assert "--device cpu" in (out / "command.txt").read_text().splitlines()[-1]
    ev = runner.invoke(app, ["eval", str(out), "--device", "cpu"])
    assert ev.exit_code == 0, ev.output


def test_sweep_resources_per_trial(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trial_resources("cpu", local=True) == {"cpu": 1}
    assert trial_resources("auto", local=True) == {"cpu": 1}
    with pytest.raises(ConfigError, match="no CUDA device"):
        trial_resources("cuda", local=True)  # before Ray starts anything
    assert trial_resources("cuda", local=False) == {"cpu": 1, "gpu": 1.0}  # the cluster's GPUs
    assert trial_resources("cuda", local=False, gpus_per_trial=0.25) == {"cpu": 1, "gpu": 0.25}
    assert trial_resources("auto", local=False) == {"cpu": 1}
    assert trial_resources("auto", local=False, gpus_per_trial=1) == {"cpu": 1, "gpu": 1.0}
    with pytest.raises(ConfigError, match="Ray hands every trial its own GPU"):
        trial_resources("cuda:1", local=False)


def test_library_models_follow_their_device(tmp_path):
    """load_run puts the models on the run's device (here the CPU) and they predict there."""
    run = tmp_path / "run"
    jobs.run(load_recipe("burgers", TINY), run)
    loaded = jobs.load_run(run, device="auto")
    for model in loaded.models.values():
        assert all(p.device.type == "cpu" for p in model.parameters())
    rec = loaded.recipe
    pred = loaded.models["orchestra"](torch.randn(2, rec.data.window, rec.data.grid))
    assert pred.mean.shape == (2, rec.data.grid)
    assert Path(run / "metrics.json").is_file()
