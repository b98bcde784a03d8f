"""Bad recipes, keys, types and data paths through the real CLI: exit code 2, one line
starting with ``error:`` that explains the problem, and never a traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tertulia.cli import app

runner = CliRunner()


def _refused(*args: str) -> str:
    """The one line of a command refused with exit code 2."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(
    "recipe, assignment, pieces",
    [
        (
            "hope-lm",
            "train.mode=deq",
            [
                "train.mode is not a key of lm recipes (hope-lm)",
                "it applies to forecast recipes",
                "train keys of lm recipes are: steps, batch_size, lr",
            ],
        ),
        ("recall", "train.blocks.kind=round_robin", ["train.blocks", "recall recipes (recall)"]),
        ("seq-digits", "train.jac_reg=1", ["train.jac_reg is not a key of sequence recipes"]),
        ("velora", "phase2.consistency=0.5", ["phase2.consistency", "velora recipes (velora)"]),
        ("continual", "train.ema=0.5", ["train.ema is not a key of continual recipes"]),
        ("burgers", "model.cells=true", ["model.cells", "(got True)", "not a number"]),
        ("burgers", "model.d=8.0", ["model.d", "(got 8.0)", "without a decimal point"]),
        ("burgers", "model.d='8'", ["model.d", "(got '8')", "without quotes"]),
        ("burgers", "model.graph.edges=[[0, 1]]", ["model.graph.kind='ring' builds its own"]),
    ],
)
def test_a_key_or_value_that_would_do_nothing_is_refused(recipe, assignment, pieces):
    line = _refused("show", recipe, "--set", assignment)
    for piece in pieces:
        assert piece in line, line


@pytest.mark.parametrize("assignment", ["train.lr=1", "model.d=32", "train.lr=1e-3"])
def test_numbers_that_fit_are_accepted(assignment):
    result = runner.invoke(app, ["show", "burgers", "--set", assignment])
    assert result.exit_code == 0, result.output
    key, value = assignment.split(".")[1].split("=")
    shown = {"1": "1.0", "32": "32", "1e-3": "0.001"}[value]
    assert f"\n  {key}: {shown}\n" in result.output


@pytest.mark.parametrize(
    "content, pieces",
    [
        (b"", ["is empty", "a recipe is a YAML mapping with at least one key"]),
        (b"  \n# only a comment\n\n", ["is empty", "tertulia show burgers"]),
        (b"\xff\xfe name: x", ["is not UTF-8 text", "byte 0 is 0xff", "UTF-16"]),
        (b"name: caf\xe9\n", ["is not UTF-8 text", "byte 9 is 0xe9"]),
        (b"- model\n- train\n", ["must be a mapping", "got a YAML list"]),
        (b"burgers\n", ["must be a mapping", "got a YAML string"]),
        (b"3.5\n", ["must be a mapping", "got a YAML number"]),
    ],
)
def test_a_recipe_file_that_is_no_recipe(tmp_path, content, pieces):
    path = tmp_path / "mine.yaml"
    path.write_bytes(content)
    line = _refused("show", str(path))
    for piece in pieces:
        assert piece in line, line


@pytest.mark.parametrize(
    "recipe, sets, pieces",
    [
        ("burgers", ["data.path={dir}"], ["is a folder", ".npz or .safetensors file"]),
        ("nile", ["data.source=csv", "data.path={dir}"], ["is a folder", "CSV file"]),
        ("hope-lm", ["data.source=file", "data.path={dir}"], ["is a folder", "UTF-8 text file"]),
        (
            "seq-digits",
            ["data.kind=mnist", "data.path={file}"],
            ["is a file, not a folder of IDX files"],
        ),
        ("velora", ["data.path={file}"], ["is a file", "math_dataset.csv"]),
    ],
)
def test_a_data_path_of_the_wrong_kind_is_named(tmp_path, recipe, sets, pieces):
    folder = tmp_path / "data"
    folder.mkdir()
    file = tmp_path / "data.txt"
    file.write_text("not data\n")
    args = []
    for s in sets:
        args += ["--set", s.format(dir=folder, file=file)]
    line = _refused("run", recipe, "--out", str(tmp_path / "run"), *args)
    for piece in pieces:
        assert piece in line, line
    assert not (tmp_path / "run" / "metrics.json").exists()
