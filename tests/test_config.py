"""Recipes: shipped ones instantiate, bad keys and values are named, overrides are typed."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tertulia import build, runs
from tertulia.config import Recipe, load_recipe, load_resolved, shipped_recipes
from tertulia.errors import ConfigError


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_instantiates(name, tmp_path):
    recipe = load_recipe(name)
    assert recipe.name == name and recipe.description
    (tmp_path / "config.yaml").write_text(recipe.to_yaml())
    assert load_resolved(tmp_path / "config.yaml") == recipe
    if recipe.task != "forecast":
        return  # classical recipes build no orchestra (tests/test_classical.py runs them)
    orchestra = build.build_orchestra(recipe)
    x = torch.randn(2, recipe.data.window, recipe.data.grid)
    pred = orchestra(x)
    assert pred.mean.shape == (2, recipe.data.grid)
    mlp = build.build_mlp(recipe, params=build.count_parameters(orchestra))
    ratio = build.count_parameters(mlp) / build.count_parameters(orchestra)
    assert 0.9 <= ratio <= 1.1


def test_default_recipe_is_phase_zero():
    r = load_recipe()
    assert (r.name, r.model.cells, r.model.d, r.data.grid, r.model.graph.kind) == (
        "burgers",
        4,
        64,
        128,
        "ring",
    )


def test_set_overrides_are_typed():
    r = load_recipe("burgers", ["model.d=32", "train.steps=2000", "model.schedule=async"])
    assert (r.model.d, r.train.steps, r.model.schedule) == (32, 2000, "async")
    r = load_recipe("burgers", ["model.graph.edges=[[0, 1], [1, 0]]", "model.graph.kind=explicit"])
    assert r.model.graph.edges == [(0, 1), (1, 0)]


@pytest.mark.parametrize(
    "overrides, pieces",
    [
        (["model.dd=3"], ["unknown key 'model.dd'", "did you mean 'd'"]),
        (["modle.d=3"], ["unknown key 'modle'", "did you mean 'model'"]),
        (["train.lr=fast"], ["train.lr", "valid number", "'fast'"]),
        (["model.d=-1"], ["model.d", "greater than or equal to 2"]),
        (["model.schedule=parallel"], ["model.schedule", "'sync' or 'async'"]),
        (["model.d"], ["key.path=value"]),
        (["data.grid=130"], ["not divisible by model.cells=4"]),
        (["model.graph.kind=explicit", "model.graph.edges=[[0, 7]]"], ["naming cell 7", "0..3"]),
        (["train.lr=.nan"], ["train.lr", "(got nan)"]),
        (["data.speed=.inf"], ["non-finite"]),
        (["model.d.x=1"], ["model.d is not a section"]),
    ],
)
def test_bad_overrides_are_named(overrides, pieces):
    with pytest.raises(ConfigError) as info:
        load_recipe("burgers", overrides)
    message = str(info.value)
    assert "\n" not in message
    for piece in pieces:
        assert piece in message, message


def test_unknown_key_in_yaml_file_suggests_closest(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  cels: 8\n")
    with pytest.raises(ConfigError, match="unknown key 'model.cels'.*did you mean 'cells'"):
        load_recipe(str(path))


def test_yaml_file_recipe_and_name_default(tmp_path):
    path = tmp_path / "my_recipe.yaml"
    path.write_text("model:\n  d: 16\n")
    r = load_recipe(str(path))
    assert r.name == "my_recipe" and r.model.d == 16


@pytest.mark.parametrize(
    "text, piece",
    [
        ("model: [1, 2\n", "malformed YAML at line"),
        ("- a\n- b\n", "must be a mapping"),
        ("model:\n  d: {a: 1}\n", "model.d"),
    ],
)
def test_malformed_yaml(tmp_path, text, piece):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=piece):
        load_recipe(str(path))


def test_missing_and_unknown_recipes(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="did you mean 'burgers'"):
        load_recipe("burger")


def test_recipe_defaults_validate():
    Recipe()  # the code defaults alone make a valid recipe


def test_resume_requires_a_run_directory(tmp_path):
    from tertulia.errors import RunDirError

    with pytest.raises(RunDirError, match="not a run directory"):
        runs.require_run_dir(tmp_path)
    with pytest.raises(RunDirError, match="does not exist"):
        runs.require_run_dir(tmp_path / "missing")


def test_config_and_the_light_commands_import_without_torch():
    """``tertulia.config`` never imports torch, and neither do ``import tertulia`` (its
    public names load on first use) and the CLI module: ``--help`` and ``recipes`` start
    in well under a second."""
    code = (
        "import sys\n"
        "import tertulia, tertulia.config, tertulia.cli\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'burgers' in tertulia.config.shipped_recipes()\n"
        "assert tertulia.load_run.__module__ == 'tertulia.jobs'\n"
        "assert 'torch' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
