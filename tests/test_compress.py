"""Compression: enforced masks, thresholds, the cubic schedule, SNR importance, packed storage."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tertulia.compress import (
    Masks,
    Pruner,
    cubic_schedule,
    load_compressed,
    magnitude_masks,
    prunable,
    save_compressed,
    snr_importance,
    sparsity_report,
    threshold_masks,
)
from tertulia.errors import RunDirError
from tertulia.nn import Orchestra, make_graph


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_pruned_weights_and_their_adam_moments_stay_exactly_zero():
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    masks = Masks(magnitude_masks(prunable(model), 0.6))
    masks.attach(model, opt)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        x = torch.randn(32, 8, generator=gen)
        loss = (model(x) - x[:, :4]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = dict(model.named_parameters())
    for name, m in masks.masks.items():
        p = params[name]
        assert (p[~m] == 0).all() and (p[m] != 0).all()
        for key in ("exp_avg", "exp_avg_sq"):
            assert (opt.state[p][key][~m] == 0).all()
    masks.detach()


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_masks_prune_exactly_the_smallest(scope):
    params = prunable(_mlp())
    masks = magnitude_masks(params, 0.7, scope=scope)
    if scope == "layer":
        for k, p in params.items():
            assert int((~masks[k]).sum()) == round(0.7 * p.numel())
    total = sum(p.numel() for p in params.values())
    assert sum(int((~m).sum()) for m in masks.values()) == pytest.approx(round(0.7 * total), abs=1)
    if scope == "global":
        kept = torch.cat([p.detach().abs()[masks[k]] for k, p in params.items()])
        gone = torch.cat([p.detach().abs()[~masks[k]] for k, p in params.items()])
        assert gone.max() <= kept.min()
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_masks(params, 1.0)
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks(params, 0.5, scope="row")


def test_threshold_masks_are_the_seeds_rule():
    w = {"w": torch.tensor([[0.05, -0.2], [0.1, -0.01]])}
    assert threshold_masks(w, 0.1)["w"].tolist() == [[False, True], [True, False]]


def test_cubic_schedule_hits_its_targets_and_is_monotone():
    values = [cubic_schedule(t, start=10, end=110, final=0.9, every=10) for t in range(130)]
    assert values[0] == 0.0 and values[10] == 0.0
    assert values[110] == 0.9 and values[129] == 0.9
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert values[60] == pytest.approx(0.9 + (0.0 - 0.9) * 0.5**3)
    with pytest.raises(ValueError, match="end"):
        cubic_schedule(0, start=5, end=5, final=0.5)


def test_pruner_masks_only_grow_and_reach_the_final_sparsity():
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = Pruner(model, final=0.8, start=0, end=40, every=10)
    pruner.attach(opt)
    seen = []
    gen = torch.Generator().manual_seed(1)
    for t in range(50):
        pruner.step(t)
        before = {k: m.clone() for k, m in pruner.masks.masks.items()}
        x = torch.randn(16, 8, generator=gen)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append(before)
        if t:
            for k in before:
                assert not (seen[-1][k] & ~seen[-2][k]).any()  # never un-pruned
    assert pruner.masks.sparsity() == pytest.approx(0.8, abs=0.01)
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.8, abs=0.01)
    with pytest.raises(ValueError, match="schedule"):
        Pruner(model, schedule="random")
    with pytest.raises(ValueError, match="threshold"):
        Pruner(model, schedule="threshold")


def test_snr_keeps_a_small_weight_the_data_pins_down():
    """Two inputs: one with a small true weight seen at large scale, one irrelevant and noisy."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.05, 0.08]]))
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(5):
        x = torch.randn(64, 2, generator=gen) * torch.tensor([20.0, 0.1])
        y = 0.05 * x[:, :1] + 0.01 * torch.randn(64, 1, generator=gen)
        batches.append((x, y))

    def loss_fn(batch):
        x, y = batch
        return F.mse_loss(model(x), y, reduction="none").squeeze(-1)

    params = prunable(model)
    snr = snr_importance(model, params, loss_fn, batches)
    by_magnitude = magnitude_masks(params, 0.5)["weight"]
    by_snr = magnitude_masks(params, 0.5, importance=snr)["weight"]
    assert by_magnitude.tolist() == [[False, True]]  # magnitude keeps the larger, useless one
    assert by_snr.tolist() == [[True, False]]  # SNR keeps the one the data determines


def test_orchestra_stacked_weights_are_prunable_and_stay_finite():
    orch = Orchestra(grid=16, window=2, graph=make_graph("ring", 2), d=8, d_msg=4, d_key=4, halo=1)
    params = prunable(orch)
    assert any(p.ndim == 3 for p in params.values())  # stacked (n, I, O) weights
    Masks(magnitude_masks(params, 0.9)).apply(orch)
    pred = orch(torch.randn(3, 2, 16))
    assert torch.isfinite(pred.mean).all() and torch.isfinite(pred.log_var).all()


def _sparse_state(sparsity=0.9):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.Linear(64, 10))
    Masks(magnitude_masks(prunable(model), sparsity)).apply(model)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd["stacked"] = torch.where(torch.rand(3, 5, 7) < 0.9, 0.0, torch.randn(3, 5, 7))
    return sd


def test_fp32_round_trip_is_exact_and_quantised_ones_are_within_their_step(tmp_path):
    sd = _sparse_state()
    save_compressed(tmp_path / "a.safetensors", sd, dtype="fp32")
    back = load_compressed(tmp_path / "a.safetensors")
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    save_compressed(tmp_path / "h.safetensors", sd, dtype="fp16")
    half = load_compressed(tmp_path / "h.safetensors")
    for k in sd:
        torch.testing.assert_close(half[k], sd[k].half().float(), rtol=0, atol=0)
    save_compressed(tmp_path / "q.safetensors", sd, dtype="int8")
    q = load_compressed(tmp_path / "q.safetensors")
    for k, v in sd.items():
        if v.ndim >= 2:
            step = float(v.abs().max()) / 127
            assert (q[k] - v).abs().max() <= step / 2 + 1e-7
            assert torch.equal(q[k] == 0, v == 0)


def test_bytes_on_disk_shrink_at_ninety_percent(tmp_path):
    sd = _sparse_state(0.9)
    del sd["stacked"]
    dense = tmp_path / "dense.safetensors"
    from safetensors.torch import save_file

    save_file(sd, str(dense))
    ratios = {}
    for dtype in ("fp32", "fp16", "int8"):
        info = save_compressed(tmp_path / f"{dtype}.safetensors", sd, dtype=dtype)
        ratios[dtype] = info["bytes"] / dense.stat().st_size
    assert ratios["fp16"] <= 0.15 and ratios["int8"] <= 0.08, ratios
    assert ratios["int8"] < ratios["fp16"] < ratios["fp32"] < 0.25


def test_foreign_or_truncated_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(RunDirError, match="not a readable"):
        load_compressed(bad)
    good = tmp_path / "g.safetensors"
    save_compressed(good, _sparse_state())
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(RunDirError):
        load_compressed(cut)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(2)}, str(plain))
    with pytest.raises(RunDirError, match="not a tertulia compressed"):
        load_compressed(plain)


def test_compress_command_on_a_run_writes_the_contract_and_a_report(tmp_path):
    from typer.testing import CliRunner

    from tertulia.cli import app

    from .conftest import TINY

    runner = CliRunner()
    sets = [a for s in TINY for a in ("--set", s)]
    run = tmp_path / "run"
    assert runner.invoke(app, ["run", "burgers", "--out", str(run), *sets]).exit_code == 0
    out = tmp_path / "small"
    result = runner.invoke(
        app,
        [
            "compress",
            str(run),
            "--sparsity",
            "0.8",
            "--finetune-steps",
            "6",
            "--out",
            str(out),
            "--dtype",
            "int8",
        ],
    )
    assert result.exit_code == 0, result.output
    import json

    m = json.loads((out / "metrics.json").read_text())
    assert set(m["dense"]) == {"metric", "bytes", "nonzero"}
    assert set(m["compressed"]) == {"metric", "bytes", "nonzero", "sparsity"}
    assert m["compressed"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    # a tiny model: its dense biases and norms weigh as much as the pruned matrices
    assert m["compressed"]["bytes"] < 0.6 * m["dense"]["bytes"]
    assert m["compressed"]["nonzero"] < m["dense"]["nonzero"]
    assert (out / "report.html").is_file() and (out / "hist_orchestra.png").is_file()
    bad = runner.invoke(
        app, ["compress", str(run), "--sparsity", "1.5", "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code == 2 and "sparsity" in bad.output
    again = runner.invoke(app, ["compress", str(run), "--out", str(out)])
    assert again.exit_code == 2 and "not empty" in again.output


@pytest.mark.parametrize("compressed", [False, True])
def test_onnx_export_matches_pytorch(tmp_path, compressed):
    from tertulia.compress.export import check_onnx, export_onnx

    torch.manual_seed(0)
    orch = Orchestra(grid=16, window=2, graph=make_graph("ring", 2), d=8, d_msg=4, d_key=4, halo=1)
    if compressed:
        Masks(magnitude_masks(prunable(orch), 0.8)).apply(orch)
        save_compressed(tmp_path / "c.safetensors", orch.state_dict(), dtype="fp16")
        orch.load_state_dict(load_compressed(tmp_path / "c.safetensors"))
    x = torch.randn(5, 2, 16)
    wrapped, path = export_onnx(orch, x, tmp_path / "o.onnx")
    assert check_onnx(path, wrapped, x) < 1e-5
    # the batch axis is dynamic: another batch size runs through the same file
    assert check_onnx(path, wrapped, torch.randn(2, 2, 16)) < 1e-5
    mlp = _mlp()
    wrapped, path = export_onnx(mlp, torch.randn(3, 8), tmp_path / "m.onnx")
    assert check_onnx(path, wrapped, torch.randn(7, 8)) < 1e-5
