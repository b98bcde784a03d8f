"""The main job under every training mode and schedule a recipe can choose."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tertulia import jobs
from tertulia.config import load_recipe
from tertulia.jobs import forecast

from .conftest import TINY


@pytest.mark.parametrize(
    "variant",
    [
        ["train.mode=truncated", "train.grad_rounds=1"],
        ["model.schedule=async", "model.order=random"],
        ["model.graph.coordinator=true", "model.graph.memory_slots=2"],
        ["model.graph.kind=explicit", "model.graph.edges=[[0, 1], [1, 2], [2, 3], [3, 0]]"],
        ["train.loss=beta_nll", "train.state_norm=0.01", "train.cell_weights=[1, 2, 1, 1]"],
        ["data.equation=heat", "baselines.mlp=false"],
        ["data.equation=advection", "model.graph.kind=chain", "model.kernel=loop"],
    ],
    ids=["truncated", "async-random", "hub-memory", "explicit", "beta-nll", "heat", "advection"],
)
def test_pipeline_variants_produce_finite_metrics(tmp_path, variant):
    recipe = load_recipe("burgers", TINY + variant + ["baselines.persistence=false"])
    metrics = jobs.run(recipe, tmp_path / "run")
    orch = metrics["models"]["orchestra"]
    assert all(math.isfinite(v) for v in orch.values()), orch
    assert orch["rounds_mean"] == recipe.model.rounds
    assert ("mlp" in metrics["models"]) == recipe.baselines.mlp
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["models"]["orchestra"] == pytest.approx(orch)


def test_messages_count_edges_of_the_chosen_graph(tmp_path):
    recipe = load_recipe("burgers", TINY + ["model.graph.coordinator=true", "baselines.mlp=false"])
    orch = jobs.run(recipe, tmp_path / "run")["models"]["orchestra"]
    edges = 8 + 2 * 4  # ring of 4 plus the coordinator's links both ways
    assert orch["messages_per_prediction"] == recipe.model.rounds * edges * recipe.model.d_msg


@pytest.mark.parametrize(
    "variant",
    [
        ["model.skip=input", "model.spectral_norm=0.8", "train.jac_reg=0.5", "train.rho_every=2"],
        ["train.deq.backward=phantom", "model.solver.kind=broyden"],
        ["model.solver.kind=picard", "model.solver.damping=0.7", "train.deq.solver=picard"],
    ],
    ids=["implicit-sn-jacreg", "phantom-broyden", "picard"],
)
def test_deq_pipeline_reports_solver_and_robustness(tmp_path, variant):
    recipe = load_recipe("burgers", TINY + ["train.mode=deq", "model.rounds=30", *variant])
    metrics = jobs.run(recipe, tmp_path / "run")
    orch = metrics["models"]["orchestra"]
    assert all(math.isfinite(v) for v in orch.values()), orch
    assert 1 <= orch["iterations_mean"] <= 30 and 0 <= orch["converged_fraction"] <= 1
    assert 0 < orch["rho_mean"] <= orch["rho_max"] and 0 <= orch["rho_below_1"] <= 1
    curves = metrics["curves"]
    assert len(curves["rho"]) == len(curves["iterations"])
    train = metrics["train"]["orchestra"]
    assert train["mode"] == "deq" and train["peak_activation_mb"] > 0
    if recipe.train.deq.backward == "implicit":
        assert train["backward_iterations_mean"] >= 1
    else:
        assert "backward_iterations_mean" not in train
    logs = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").open()]
    orch_logs = [r for r in logs if r.get("model") == "orchestra" and "loss" in r]
    assert all("iterations" in r and "unconverged" in r for r in orch_logs)
    if recipe.train.jac_reg:
        assert all(r["jac_reg"] > 0 and r["rho"] > 0 for r in orch_logs)
    rob = metrics["robustness"]
    assert set(rob["ood"]) == set(rob["adversarial"]) == {"orchestra", "mlp", "persistence"}
    assert [c["name"] for c in rob["ood"]["orchestra"]["conditions"]] == [
        "nu=0.1",
        "amplitude=2",
        "noise×3",
    ]
    methods = {(r["method"], r["eps"]) for r in rob["adversarial"]["orchestra"]["rows"]}
    assert methods == {("none", 0.0), ("fgsm", 0.01), ("fgsm", 0.05), ("pgd", 0.01), ("pgd", 0.05)}
    assert (tmp_path / "run" / "report.html").is_file()


def test_unconverged_forward_solves_are_counted_not_hidden(tmp_path):
    recipe = load_recipe(
        "burgers",
        TINY + ["train.mode=deq", "model.rounds=1", "model.tol=1e-12", "baselines.mlp=false"],
    )
    metrics = jobs.run(recipe, tmp_path / "run")
    assert metrics["train"]["orchestra"]["unconverged_fraction"] == 1.0
    assert metrics["models"]["orchestra"]["converged_fraction"] == 0.0


def test_block_training_leaves_the_other_cells_untouched(tmp_path):
    from tertulia.train import load_checkpoint

    recipe = load_recipe(
        "burgers",
        TINY
        + [
            "baselines.mlp=false",
            "train.blocks.kind=custom",
            "train.blocks.schedule=[[0, 1]]",
            "train.blocks.shared=false",
            "eval.ood.enabled=false",
            "eval.adversarial.enabled=false",
        ],
    )
    jobs.run(recipe, tmp_path / "run")
    start = forecast.build_trainable_models(recipe)["orchestra"]  # same seed: the initial weights
    groups, _ = load_checkpoint(tmp_path / "run" / "checkpoint" / "orchestra")
    trained = groups["model"]
    rows_checked = 0
    for name, p in start.named_parameters():
        node_rows = next((r for q, r in start.per_cell_parameters() if q is p), None)
        if node_rows is None:  # shared: frozen too (shared=false)
            assert torch.equal(trained[name], p.detach()), name
            continue
        for k, node in enumerate(node_rows):
            same = torch.equal(trained[name][k], p.detach()[k])
            assert same == (node not in (0, 1)), (name, node)
            rows_checked += 1
    assert rows_checked > 0
