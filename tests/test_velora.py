"""The VELORA job: three phases through the CLI, frozen experts, metrics contract, bad CSVs."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tertulia.cli import app
from tertulia.config import load_recipe
from tertulia.jobs.velora import build_experts, build_velora, within
from tertulia.nn.velora import Velora
from tertulia.train import load_checkpoint

runner = CliRunner()
TINY = [
    "data.n_math=240",
    "data.n_language=240",
    "data.n_extrapolation=40",
    "math.d_model=16",
    "math.layers=1",
    "math.d_state=8",
    "language.d_model=16",
    "language.layers=1",
    "language.d_state=8",
    "router.d_model=8",
    "math.train.steps=8",
    "language.train.steps=8",
    "phase2.steps=8",
    "finetune.train.steps=8",
    "math.train.checkpoint_every=4",
    "language.train.checkpoint_every=4",
    "phase2.checkpoint_every=4",
    "finetune.train.checkpoint_every=4",
    "finetune.schedule=[{groups: [router, fusion], start: 0}, "
    "{groups: [math.heads, language.head], start: 4, lr_mult: 0.5}]",
    "explain=4",
]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _sets(extra=()):
    out = []
    for s in [*TINY, *extra]:
        out += ["--set", s]
    return out


CONTRACT = (
    "router_accuracy",
    "language_accuracy",
    "math_op_accuracy",
    "math_within_1pct",
    "math_extrapolation_within_1pct",
    "mixed_score",
    "oracle_mixed_score",
)


def test_three_phases_one_by_one_keep_frozen_experts_and_fill_the_contract(tmp_path):
    run = tmp_path / "v"
    first = invoke("run", "velora", "--out", run, "--phase", "experts", *_sets())
    assert first.exit_code == 0, first.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["phases_done"] == ["experts"]
    assert (run / "data" / "math_dataset.csv").is_file()
    assert (run / "data" / "language_dataset.csv").is_file()
    assert (run / "checkpoint" / "math" / "best" / "latest.json").is_file()

    second = invoke("run", "--resume", run, "--phase", "router")
    assert second.exit_code == 0, second.output
    # phase 2 trains router and fusion only: the experts in its best weights are the
    # phase-1 best experts, bit for bit
    phase1, _ = load_checkpoint(run / "checkpoint" / "math" / "best")
    phase2, _ = load_checkpoint(run / "checkpoint" / "router" / "best")
    for key, value in phase1["model"].items():
        assert torch.equal(phase2["model"][f"moe.experts.math.expert.{key}"], value), key
    lang1, _ = load_checkpoint(run / "checkpoint" / "language" / "best")
    for key, value in lang1["model"].items():
        assert torch.equal(phase2["model"][f"moe.experts.language.expert.{key}"], value), key

    third = invoke("run", "--resume", run, "--phase", "finetune")
    assert third.exit_code == 0, third.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["phases_done"] == ["experts", "router", "finetune"]
    row = metrics["models"]["velora"]
    for key in CONTRACT:
        assert key in row, key
    assert set(row["math_within_1pct"]) == {"add", "sub", "mul", "div"}
    for key in CONTRACT:
        values = row[key].values() if isinstance(row[key], dict) else [row[key]]
        assert all(0.0 <= v <= 1.0 for v in values), (key, row[key])
    assert "mixed_score_phase2" in row and "mixed_score_phase3" in row
    assert len(metrics["explanations"]) == 4
    assert all(e["tokens"] for e in metrics["explanations"])
    assert (run / "report.html").is_file()


def test_later_phase_on_a_fresh_directory_is_a_clear_error(tmp_path):
    result = invoke("run", "velora", "--out", tmp_path / "x", "--phase", "router", *_sets())
    assert result.exit_code == 2
    assert "--resume" in result.output and "Traceback" not in result.output
    result = invoke("run", "burgers", "--out", tmp_path / "y", "--phase", "experts")
    assert result.exit_code == 2 and "velora" in result.output


def test_a_bad_user_csv_is_a_one_line_error(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "math_dataset.csv").write_text("text,op,a,b,answer\n3 + 4,add,3,4,8\n")
    (data / "language_dataset.csv").write_text("text,label\nHello there.,statement\n")
    result = invoke("run", "velora", "--out", tmp_path / "run", "--set", f"data.path={data}")
    assert result.exit_code == 2
    assert "row 1" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # nothing written before the data is valid


def test_layer_groups_cover_every_parameter_once_and_within_is_relative():
    recipe = load_recipe("velora", TINY)
    math_expert, language = build_experts(recipe)
    model = build_velora(recipe, math_expert, language)
    assert isinstance(model, Velora)
    groups = model.layer_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    v = torch.tensor([100.9, 101.1, 0.0, -5.0])
    y = torch.tensor([100.0, 100.0, 0.0, 5.0])
    assert within(v, y).tolist() == [True, False, True, False]


def test_unknown_layer_group_is_rejected():
    from tertulia.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown layer group"):
        load_recipe("velora", ["finetune.schedule=[{groups: [math.everything]}]"])


def test_report_escapes_explanations_and_builds_after_phase_one_only(tmp_path):
    from tertulia.report import build_report

    run = tmp_path / "r"
    run.mkdir()
    metrics = {
        "task": "velora",
        "recipe": "velora",
        "phases_done": ["experts", "router"],
        "models": {"velora": {"router_accuracy": 0.995, "math_within_1pct": {"add": 0.97}}},
        "experts": {
            "math": {"op_accuracy": 1.0, "within_1pct_by_op": {op: 0.99 for op in OPS4}},
            "math_extrapolation": {"within_1pct_by_op": {op: 0.9 for op in OPS4}},
            "language": {"accuracy": 0.98, "macro_f1": 0.97, "f1": {"question": 0.96}},
        },
        "phases": {"router": {"test": {"mixed_score": 0.99, "router_accuracy": 0.995}}},
        "arithmetic": {"add": {"W_add": [1.0, 1.0], "W_mul": [0.2, 0.1], "gate": 1.0}},
        "explanations": [
            {
                "domain": "math",
                "routed": "language",
                "probs": {"math": 0.4, "language": 0.6},
                "ambiguous": True,
                "tokens": [["<script>", 0.5], ["3", -0.2]],
            }
        ],
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "train_log.jsonl").write_text(
        "\n".join(json.dumps({"model": "math", "step": s, "loss": 1.0 / s}) for s in range(1, 30))
    )
    html = build_report(run).read_text()
    assert "99.50 %" in html and "&lt;script&gt;" in html and "<script>" not in html
    assert "misrouted" in html and (run / "velora_within.png").is_file()
    del metrics["phases"], metrics["explanations"], metrics["arithmetic"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert "Experts" in build_report(run).read_text()


OPS4 = ("add", "sub", "mul", "div")
