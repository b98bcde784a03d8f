"""Recipes: shipped ones instantiate, bad keys and values are named, overrides are typed."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

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
        (["model.graph.kind=explicit", "model.graph.edges=[[0, 7]]"], ["names cell 7", "0..3"]),
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


# ------------------------------------------------- each job gets only its train keys

# the orchestra's train keys, each with a value valid for a forecasting recipe
ORCHESTRA_KEYS = [
    "mode=deq",
    "grad_rounds=1",
    "loss=beta_nll",
    "beta=0.3",
    "consistency=0.2",
    "state_norm=0.1",
    "cell_weights=[1, 1, 1, 1]",
    "deq.tol=0.001",
    "blocks.kind=round_robin",
    "jac_reg=0.5",
    "jac_reg_every=2",
    "jac_reg_samples=2",
    "rho_every=5",
]
# every train section of every shipped recipe that is not a forecasting one
NON_FORECAST_TRAIN = [
    ("seq-digits", "sequence", "train"),
    ("delay-recall", "sequence", "train"),
    ("compress-mnist", "sequence", "train"),
    ("hope-lm", "lm", "train"),
    ("recall", "recall", "train"),
    ("continual", "continual", "train"),
    ("velora", "velora", "math.train"),
    ("velora", "velora", "language.train"),
    ("velora", "velora", "phase2"),
    ("velora", "velora", "finetune.train"),
]


@pytest.mark.parametrize("assignment", ORCHESTRA_KEYS)
@pytest.mark.parametrize("name, task, section", NON_FORECAST_TRAIN)
def test_orchestra_train_keys_are_refused_by_other_jobs(name, task, section, assignment):
    key = assignment.split("=")[0].split(".")[0]
    with pytest.raises(ConfigError) as info:
        load_recipe(name, [f"{section}.{assignment}"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{section}.{key} is not a key of {task} recipes ({name})")
    assert "it applies to forecast recipes" in message
    assert f"{section} keys of {task} recipes are: steps, batch_size, lr" in message


@pytest.mark.parametrize("assignment", ORCHESTRA_KEYS)
def test_orchestra_train_keys_still_apply_to_forecasting(assignment):
    key, value = assignment.split("=")
    recipe = load_recipe("burgers", [f"train.{assignment}"])
    got = recipe.train
    for part in key.split("."):
        got = getattr(got, part)
    assert str(got) == value or got == yaml.safe_load(value)


def test_hope_lm_train_mode_message_is_the_documented_one():
    with pytest.raises(ConfigError) as info:
        load_recipe("hope-lm", ["train.mode=deq"])
    assert str(info.value) == (
        "train.mode is not a key of lm recipes (hope-lm): it applies to forecast recipes; "
        "train keys of lm recipes are: steps, batch_size, lr, weight_decay, clip, threads, "
        "warmup, min_lr_ratio, ema, checkpoint_every, log_every, nan_patience, optimizer"
    )


@pytest.mark.parametrize(
    "assignment", ["warmup=0", "ema=0.5", "optimizer.kind=dmgd", "log_every=5"]
)
def test_continual_refuses_the_trainer_keys_its_own_loop_ignores(assignment):
    with pytest.raises(ConfigError, match="is not a key of continual recipes"):
        load_recipe("continual", [f"train.{assignment}"])


def test_continual_refuses_a_data_file():
    with pytest.raises(ConfigError, match="data.path.*does not apply to continual recipes"):
        load_recipe("continual", ["data.path=x.npz"])


def test_each_job_has_its_own_train_class():
    from tertulia.config import ForecastTrainConfig, TrainConfig, TrainLoopConfig

    expected = {"forecast": ForecastTrainConfig, "continual": TrainLoopConfig}
    for name in shipped_recipes():
        recipe = load_recipe(name)
        sections = [recipe.train] if hasattr(recipe, "train") else []
        if recipe.task == "velora":
            sections = [recipe.math.train, recipe.language.train, recipe.phase2]
            sections.append(recipe.finetune.train)
        for section in sections:
            assert type(section) is expected.get(recipe.task, TrainConfig), (name, section)


def test_a_yaml_recipe_with_an_orchestra_key_names_the_job(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("task: lm\ntrain:\n  steps: 3\n  jac_reg: 1.0\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(str(path))
    message = str(info.value)
    assert "train.jac_reg is not a key of lm recipes (mine)" in message
    assert "applies to forecast recipes" in message


def test_a_key_of_no_job_still_gets_the_closest_match():
    with pytest.raises(ConfigError, match="unknown key 'train.stpes'.*did you mean 'steps'"):
        load_recipe("hope-lm", ["train.stpes=3"])


def test_train_keys_keep_one_order_in_every_dump():
    from tertulia.config import ForecastTrainConfig
    from tertulia.config.base import TRAIN_KEY_ORDER

    assert set(ForecastTrainConfig.model_fields) == set(TRAIN_KEY_ORDER)
    assert list(ForecastTrainConfig().model_dump()) == list(TRAIN_KEY_ORDER)
    lm = list(load_recipe("hope-lm").train.model_dump())
    assert lm == [k for k in TRAIN_KEY_ORDER if k in lm]


def test_an_older_runs_config_with_orchestra_keys_still_loads(tmp_path):
    """Resolved configs written before the split carry the orchestra's train keys in every
    recipe; they were never read, so reading the run back drops them."""
    from tertulia.config import ForecastTrainConfig

    recipe = load_recipe("hope-lm")
    data = yaml.safe_load(recipe.to_yaml())
    data["train"] = {**ForecastTrainConfig().model_dump(mode="json"), **data["train"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert load_resolved(tmp_path / "config.yaml") == recipe
    with pytest.raises(ConfigError, match="train.mode is not a key of lm recipes"):
        load_recipe(str(tmp_path / "config.yaml"))


# --------------------------------------------------------- strict types and nonsense


@pytest.mark.parametrize(
    "assignment, pieces",
    [
        ("model.cells=true", ["model.cells", "valid integer", "(got True)", "not a number"]),
        ("train.lr=false", ["train.lr", "(got False)", "not a number"]),
        ("model.d=8.0", ["model.d", "valid integer", "(got 8.0)", "without a decimal point"]),
        ("model.d='8'", ["model.d", "(got '8')", "without quotes"]),
        ("train.lr='0.1'", ["train.lr", "(got '0.1')", "without quotes"]),
        ("name=2024", ["name", "valid string", "(got 2024)", "quote it"]),
        ("data.cache=1", ["data.cache", "valid boolean"]),
    ],
)
def test_strict_types_refuse_conversions(assignment, pieces):
    with pytest.raises(ConfigError) as info:
        load_recipe("burgers", [assignment])
    for piece in pieces:
        assert piece in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "assignment, key, value",
    [
        ("train.lr=1", "lr", 1.0),
        ("train.lr=1e-3", "lr", 1e-3),
        ("train.lr=2.5E-4", "lr", 2.5e-4),
        ("train.lr=1.0e-2", "lr", 1e-2),
        ("train.steps=32", "steps", 32),
    ],
)
def test_numbers_arrive_with_their_type(assignment, key, value):
    got = getattr(load_recipe("burgers", [assignment]).train, key)
    assert got == value and type(got) is type(value)


def test_yaml_exponent_floats_in_a_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 1.0e-5\n")
    recipe = load_recipe(str(path))
    assert recipe.train.lr == 1e-3 and recipe.train.weight_decay == 1e-5
    (tmp_path / "quoted.yaml").write_text("model:\n  d: '8'\n")
    with pytest.raises(ConfigError, match="model.d.*without quotes"):
        load_recipe(str(tmp_path / "quoted.yaml"))


@pytest.mark.parametrize("text", ["", "\n\n   \n", "# nothing here\n# at all\n"])
def test_an_empty_recipe_file_is_named(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_recipe(str(path))
    assert str(info.value).startswith(f"{path} is empty: a recipe is a YAML mapping with at least")


def test_a_recipe_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "utf16.yaml"
    path.write_bytes(b"\xff\xfe name: x")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text.*UTF-16"):
        load_recipe(str(path))


@pytest.mark.parametrize("text, kind", [("just words\n", "string"), ("42\n", "number")])
def test_a_scalar_recipe_is_named(tmp_path, text, kind):
    path = tmp_path / "scalar.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"must be a mapping.*got a YAML {kind}"):
        load_recipe(str(path))


def test_edges_need_the_explicit_kind_and_no_self_loops():
    with pytest.raises(ConfigError, match="model.graph.kind='ring' builds its own"):
        load_recipe("burgers", ["model.graph.edges=[[0, 1]]"])
    with pytest.raises(ConfigError, match=r"edge \(2, 2\) of model.graph.edges is a self-loop"):
        load_recipe("burgers", ["model.graph.kind=explicit", "model.graph.edges=[[2, 2]]"])
    recipe = load_recipe("burgers", ["model.graph.kind=explicit", "model.graph.edges=[[0, 1]]"])
    assert recipe.model.graph.edges == [(0, 1)]
    with pytest.raises(ConfigError, match=r"model.graph.edges.0.1.*valid integer.*\(got True\)"):
        load_recipe("burgers", ["model.graph.kind=explicit", "model.graph.edges=[[0, true]]"])


def test_the_grid_split_is_checked_with_a_data_file_too():
    with pytest.raises(ConfigError, match="data.grid=30 is not divisible by model.cells=4"):
        load_recipe("burgers", ["data.path=x.npz", "data.grid=30"])
    with pytest.raises(ConfigError, match="model.halo=9 is larger than half a patch.*at most 8"):
        load_recipe("burgers", ["data.grid=64", "model.halo=9"])
