"""The main job under every training mode and schedule a recipe can choose."""

from __future__ import annotations

import json
import math

import pytest

from tertulia import pipeline
from tertulia.config import load_recipe

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
    metrics = pipeline.run(recipe, tmp_path / "run")
    orch = metrics["models"]["orchestra"]
    assert all(math.isfinite(v) for v in orch.values()), orch
    assert orch["rounds_mean"] == recipe.model.rounds
    assert ("mlp" in metrics["models"]) == recipe.baselines.mlp
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["models"]["orchestra"] == pytest.approx(orch)


def test_messages_count_edges_of_the_chosen_graph(tmp_path):
    recipe = load_recipe("burgers", TINY + ["model.graph.coordinator=true", "baselines.mlp=false"])
    orch = pipeline.run(recipe, tmp_path / "run")["models"]["orchestra"]
    edges = 8 + 2 * 4  # ring of 4 plus the coordinator's links both ways
    assert orch["messages_per_prediction"] == recipe.model.rounds * edges * recipe.model.d_msg
