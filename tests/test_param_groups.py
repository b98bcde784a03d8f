"""Optimiser groups from the modules' own declarations (``optim_groups``), not hidden tags.

``param_groups_before.json`` holds, for the recipes whose models carry their own
settings, the optimiser groups (settings and parameter names, in order) the trainer
built *before* the declarations replaced the hidden ``_optim`` attributes; the groups
built now must be the same, parameter for parameter, so old checkpoints resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tertulia.config import TrainConfig, load_recipe
from tertulia.train import Trainer
from tertulia.train.groups import build_optimizer, declared_settings, parameter_groups
from tertulia.train.tasks import TaskBase

BEFORE = json.loads((Path(__file__).parent / "param_groups_before.json").read_text())
SETTINGS = ("lr", "weight_decay", "betas", "period", "lr_scale")


class _ModelOnly(TaskBase):
    def __init__(self, model: nn.Module):
        self.model = model

    def sample_batch(self, generator):
        raise NotImplementedError

    def loss(self, batch, step=0):
        raise NotImplementedError


def _forecast(sets: list[str], name: str) -> tuple[nn.Module, TrainConfig]:
    from tertulia.data import load_dataset
    from tertulia.jobs import forecast

    recipe = load_recipe("smoke", sets)
    torch.manual_seed(0)
    return forecast.build_models(recipe, load_dataset(recipe.data))[name], recipe.train


def _build(entry: str) -> tuple[nn.Module, TrainConfig]:
    recipe_name, model_name = entry.split("/")
    if recipe_name.startswith("smoke"):
        extra = {"smoke": [], "smoke+ssm": ["model.cell=ssm"]}
        sets = extra.get(recipe_name, ["train.optimizer.kind=dmgd"])
        return _forecast(sets, model_name)
    recipe = load_recipe(recipe_name)
    torch.manual_seed(0)
    if recipe_name in ("seq-digits", "delay-recall"):
        from tertulia.jobs import sequence

        init = sequence.model_inits(recipe)[model_name]
        return sequence.build_sequence_model(recipe, 8, 10, init, steps=8), recipe.train
    if recipe_name == "hope-lm":
        from tertulia.jobs.lm import build_lm

        m = recipe.models[model_name]
        return build_lm(model_name, m, 40, recipe.data.context), recipe.train
    from tertulia.jobs import velora

    math_expert, language = velora.build_experts(recipe)
    if model_name == "math":
        return math_expert, recipe.math.train
    return velora.build_velora(recipe, math_expert, language), recipe.finetune.train


def _groups(trainer: Trainer) -> list[dict]:
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    out = []
    for g in trainer.optimizer.param_groups:
        settings = {k: g[k] for k in SETTINGS if k in g}
        if "betas" in settings:
            settings["betas"] = list(settings["betas"])
        out.append({"settings": settings, "params": [names[id(p)] for p in g["params"]]})
    return out


@pytest.mark.parametrize("entry", sorted(BEFORE))
def test_optimiser_groups_are_those_of_the_hidden_tags(entry):
    model, cfg = _build(entry)
    trainer = Trainer(_ModelOnly(model), cfg)
    assert type(trainer.optimizer).__name__ == BEFORE[entry]["optimizer"]
    got = _groups(trainer)
    want = BEFORE[entry]["groups"]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g["params"] == w["params"]
        assert g["settings"].keys() == w["settings"].keys()
        for key, value in w["settings"].items():
            assert g["settings"][key] == pytest.approx(value, rel=1e-15), (key, w["params"][:2])


@pytest.mark.parametrize("entry", sorted(BEFORE))
def test_no_parameter_carries_a_hidden_attribute(entry):
    model, _ = _build(entry)
    assert all(not vars(p) for p in model.parameters())


class _Bank(nn.Module):
    def __init__(self, settings: dict):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4))
        self.b = nn.Parameter(torch.zeros(4))
        self.settings = settings

    def optim_groups(self) -> list[dict]:
        return [{"params": [self.w], **self.settings}]


def test_declarations_are_found_in_any_submodule_and_merged_by_settings():
    inner = {"weight_decay": 0.0, "lr": 1e-3}
    model = nn.Sequential(nn.Linear(4, 4), nn.ModuleList([_Bank(inner), _Bank(inner)]))
    groups = parameter_groups(model, 0.1)
    assert [len(g["params"]) for g in groups] == [1, 3, 2]  # decay, no decay, the banks
    assert groups[2]["lr"] == 1e-3 and groups[2]["weight_decay"] == 0.0
    assert groups[2]["params"] == [model[1][0].w, model[1][1].w]
    assert groups[0]["params"] == [model[0].weight] and groups[0]["weight_decay"] == 0.1


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"momentum": 0.5}, "unknown setting 'momentum'"),
        ({"lr": 1e-3, "lr_mult": 2.0}, "lr or lr_mult"),
        ({"period": 0}, "period"),
        ({"period": 1.5}, "period"),
    ],
)
def test_bad_declarations_are_rejected(settings, match):
    with pytest.raises(ValueError, match=match):
        declared_settings(_Bank(settings))


def test_a_parameter_declared_twice_differently_is_rejected():
    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.bank = _Bank({"weight_decay": 0.0})

        def optim_groups(self):
            return [{"params": [self.bank.w], "period": 2}]

    with pytest.raises(ValueError, match="_Bank"):
        declared_settings(Outer())


def test_lr_mult_and_lr_scale_the_schedule():
    model = nn.Sequential(_Bank({"lr_mult": 0.25}), _Bank({"lr": 5e-3, "period": 3}))
    cfg = TrainConfig(lr=1e-2, steps=10)
    optimizer = build_optimizer(parameter_groups(model, 0.0), cfg)
    assert type(optimizer).__name__ == "MultiFrequency"
    scale = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    assert scale[id(model[0].w)] == pytest.approx(0.25)
    assert scale[id(model[1].w)] == pytest.approx(0.5)
    assert scale[id(model[0].b)] == 1.0
    assert all("lr_mult" not in g for g in optimizer.param_groups)
