"""Loading recipes: shipped names or YAML paths, ``--set`` overrides, dispatch on ``task``.

Pipeline: ``load_recipe(name_or_path, overrides)`` → YAML dict → overrides applied on
the dict → the recipe class of its ``task`` (:data:`TASKS`) validated → returned. A run's
resolved ``config.yaml`` is read back by :func:`load_resolved`.
"""

from __future__ import annotations

import difflib
import math
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from .base import format_validation_error, section_class, unknown_key_message
from .classical import IslandRecipe, SeriesRecipe
from .continual import ContinualRecipe
from .forecast import Recipe
from .lm import LMRecipe
from .recall import RecallRecipe
from .sequence import SequenceRecipe
from .velora import VeloraRecipe

AnyRecipe = (
    Recipe
    | IslandRecipe
    | SeriesRecipe
    | SequenceRecipe
    | VeloraRecipe
    | ContinualRecipe
    | LMRecipe
    | RecallRecipe
)

TASKS: dict[str, type[BaseModel]] = {
    "forecast": Recipe,
    "island": IslandRecipe,
    "series": SeriesRecipe,
    "sequence": SequenceRecipe,
    "velora": VeloraRecipe,
    "continual": ContinualRecipe,
    "lm": LMRecipe,
    "recall": RecallRecipe,
}


def recipe_class(data: dict[str, Any], source: str = "recipe") -> type[BaseModel]:
    """The recipe model of ``data['task']`` (``forecast`` when absent)."""
    task = data.get("task", "forecast")
    if task not in TASKS:
        raise ConfigError(f"{source}: unknown task {task!r}; tasks are: {', '.join(TASKS)}")
    return TASKS[task]


# --------------------------------------------------------------------- loading


def recipes_dir() -> Path:
    return Path(str(resources.files("tertulia") / "recipes"))


def shipped_recipes() -> dict[str, Path]:
    """Name → path of every recipe shipped in the package."""
    return {p.stem: p for p in sorted(recipes_dir().glob("*.yaml"))}


def recipe_description(path: Path) -> str:
    data = yaml.safe_load(path.read_text()) or {}
    return str(data.get("description", ""))


def resolve_recipe_path(name_or_path: str) -> Path:
    shipped = shipped_recipes()
    if name_or_path in shipped:
        return shipped[name_or_path]
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in name_or_path:
        if not p.is_file():
            raise ConfigError(f"recipe file {name_or_path!r} does not exist")
        return p
    close = difflib.get_close_matches(name_or_path, list(shipped), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"unknown recipe {name_or_path!r}{hint} shipped recipes: {', '.join(shipped)}; "
        "or give a path to a .yaml file"
    )


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc.strerror}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` to a nested dict; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r} must look like key.path=value, e.g. model.d=32")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {assignment!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node: Any = data
    model_cls: type[BaseModel] | None = recipe_class(data)
    for i, part in enumerate(parts):
        path = ".".join(parts[: i + 1])
        if model_cls is not None and part not in model_cls.model_fields:
            raise ConfigError(unknown_key_message(path, part, model_cls))
        if i == len(parts) - 1:
            node[part] = value
            break
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {path} is not a section")
        node = child
        model_cls = section_class(model_cls, part) if model_cls else None


def validate_recipe(data: dict[str, Any], source: str = "recipe") -> AnyRecipe:
    cls = recipe_class(data, source)
    try:
        recipe = cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, cls)) from None
    for v in _floats(recipe.model_dump()):
        if not math.isfinite(v):
            raise ConfigError(f"{source}: non-finite number {v} in recipe; values must be finite")
    return recipe


def _floats(obj: Any):
    if isinstance(obj, float):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _floats(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _floats(v)


def load_recipe(name_or_path: str = "burgers", overrides: list[str] | None = None) -> AnyRecipe:
    """Load a shipped recipe by name (or a YAML path), apply ``--set`` overrides, validate."""
    path = resolve_recipe_path(name_or_path)
    data = read_yaml(path)
    for assignment in overrides or []:
        apply_override(data, assignment)
    data.setdefault("name", path.stem)
    return validate_recipe(data, source=str(path.name if path.parent == recipes_dir() else path))


def load_resolved(path: Path) -> AnyRecipe:
    """Load the resolved ``config.yaml`` of a run directory."""
    return validate_recipe(read_yaml(path), source=str(path))
