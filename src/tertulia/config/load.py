"""Loading recipes: shipped names or YAML paths, ``--set`` overrides, dispatch on ``task``.

Pipeline: ``load_recipe(name_or_path, overrides)`` → YAML dict → overrides applied on
the dict → the recipe class of its ``task`` (:data:`TASKS`) validated → returned. A run's
resolved ``config.yaml`` is read back by :func:`load_resolved`.

YAML is read with :class:`RecipeLoader` (``1e-3`` is a float). A key that is not a key
of the recipe's task but is one of another task's (``train.mode`` on an ``lm`` recipe)
is named as such, with the tasks it applies to (:func:`unknown_key_in_task`).
"""

from __future__ import annotations

import codecs
import difflib
import math
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from .base import (
    Section,
    TrainLoopConfig,
    format_validation_error,
    section_class,
    unknown_key_message,
)
from .classical import IslandRecipe, SeriesRecipe
from .continual import ContinualRecipe
from .forecast import ForecastTrainConfig, Recipe
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


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading exponent floats as YAML 1.2 does.

    PyYAML follows YAML 1.1, where ``1e-3`` and ``1.0e3`` are strings; with strict
    recipe types a string is not a number, so this loader reads them as floats.
    """


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """``text`` parsed by :class:`RecipeLoader` (yaml.YAMLError when malformed)."""
    return yaml.load(text, Loader=RecipeLoader)  # a SafeLoader: no arbitrary objects


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping of a recipe (or resolved config) file; ConfigError with one line when the
    file cannot be read, is not UTF-8, is malformed, empty or not a mapping."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        utf16 = raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
        hint = " (it starts like UTF-16)" if utf16 else ""
        raise ConfigError(
            f"{path} is not UTF-8 text: byte {exc.start} is {raw[exc.start]:#04x}{hint}; "
            "save the recipe as UTF-8"
        ) from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(
            f"{path} is empty: a recipe is a YAML mapping with at least one key, e.g. "
            "'task: forecast' or 'model: {cells: 8}'; 'tertulia show burgers' prints a full one"
        )
    if not isinstance(data, dict):
        kind = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
        raise ConfigError(
            f"{path}: a recipe must be a mapping of sections (key: value lines, e.g. "
            f"'task: forecast'), got a YAML {kind.get(type(data), type(data).__name__)}"
        )
    return data


# ---------------------------------------------------------------- unknown keys


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models an annotation holds (``X``, ``X | None``, ``dict[K, X]``, …)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in get_args(annotation):
        yield from _models_in(arg)


def sections(cls: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """``(path, class)`` of ``cls`` (path ``""``) and of every section below it.

    A section inside a mapping or a list (``models.hope``) gets ``*`` for its key or index.
    """
    yield prefix, cls
    for name, field in cls.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        direct = section_class(cls, name)
        for sub in _models_in(field.annotation):
            yield from sections(sub, path if sub is direct else f"{path}.*")


def _related(a: type[BaseModel], b: type[BaseModel]) -> bool:
    """Whether two sections belong to one family: they share a base below :class:`Section`
    (every train class shares :class:`TrainLoopConfig`; every recipe :class:`RecipeBase`)."""
    return bool(set(a.__mro__) & set(b.__mro__) - set(Section.__mro__))


def unknown_key_in_task(path: str, key: str, cls: type[BaseModel], *, task: str, name: str) -> str:
    """The message for ``key`` (at ``path``), not a key of ``cls`` in a ``task`` recipe.

    When a related section of another task's recipe has the key (``train.mode`` is a key
    of forecast recipes, not of ``lm`` ones) the message says so and lists this
    section's keys; otherwise it is :func:`~tertulia.config.base.unknown_key_message`.
    """
    section = path.rpartition(".")[0]
    elsewhere: dict[str, list[str]] = {}
    for other, recipe_cls in TASKS.items():
        if other == task:
            continue
        for where, sub in sections(recipe_cls):
            if key in sub.model_fields and _related(sub, cls):
                elsewhere.setdefault(other, []).append(f"{where}.{key}" if where else key)
    if not elsewhere:
        return unknown_key_message(path, key, cls)
    same = [t for t, ps in elsewhere.items() if path in ps]
    parts = [f"{_and(same)} recipes"] if same else []
    parts += [f"{t} recipes as {', '.join(ps)}" for t, ps in elsewhere.items() if t not in same]
    close = difflib.get_close_matches(key, list(cls.model_fields), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    listed = ", ".join(cls.model_fields)
    return (
        f"{path} is not a key of {task} recipes ({name}): it applies to {' and to '.join(parts)}"
        f"; {hint}{section + ' ' if section else ''}keys of {task} recipes are: {listed}"
    )


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` to a nested dict; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r} must look like key.path=value, e.g. model.d=32")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {assignment!r} has an empty key")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node: Any = data
    model_cls: type[BaseModel] | None = recipe_class(data)
    task = str(data.get("task", "forecast"))
    for i, part in enumerate(parts):
        path = ".".join(parts[: i + 1])
        if model_cls is not None and part not in model_cls.model_fields:
            name = str(data.get("name", task))
            raise ConfigError(unknown_key_in_task(path, part, model_cls, task=task, name=name))
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
    """``data`` validated as the recipe of its task; ConfigError with one line naming the
    first problem (and how many more there are)."""
    cls = recipe_class(data, source)
    task, name = str(data.get("task", "forecast")), str(data.get("name", source))
    try:
        recipe = cls.model_validate(data)
    except ValidationError as exc:
        message = format_validation_error(
            exc,
            source,
            cls,
            unknown=lambda path, key, at: unknown_key_in_task(path, key, at, task=task, name=name),
        )
        raise ConfigError(message) from None
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
    data.setdefault("name", path.stem)  # before the overrides: their messages name the recipe
    for assignment in overrides or []:
        apply_override(data, assignment)
    return validate_recipe(data, source=str(path.name if path.parent == recipes_dir() else path))


def load_resolved(path: Path) -> AnyRecipe:
    """Load the resolved ``config.yaml`` of a run directory.

    A ``config.yaml`` written before each job got its own train keys carries the
    orchestra's train keys (``mode``, ``deq``, …) in every recipe; no job but
    forecasting ever read them, so they are dropped (:func:`drop_unread_train_keys`).
    """
    data = read_yaml(path)
    drop_unread_train_keys(data, recipe_class(data, str(path)))
    return validate_recipe(data, source=str(path))


def drop_unread_train_keys(data: dict[str, Any], cls: type[BaseModel]) -> None:
    """Remove from every train section of ``data`` (a ``cls`` recipe) the keys of the old
    shared train section (:class:`~tertulia.config.ForecastTrainConfig`'s) that its own
    train class lacks: resolved configs of older runs wrote them for every job."""
    for where, section in sections(cls):
        if not issubclass(section, TrainLoopConfig) or "*" in where.split("."):
            continue
        node: Any = data
        for part in where.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            for key in set(ForecastTrainConfig.model_fields) - set(section.model_fields):
                node.pop(key, None)
