"""Checkpoints: safetensors for tensors, JSON for everything else; never pickle.

Layout of one model's checkpoint folder::

    checkpoint/<model>/
        latest.json                 {"step": 400, "dir": "step-00000400"}
        step-00000400/
            model.safetensors       raw weights (state_dict)
            ema.safetensors         EMA weights, when EMA is on
            train_state.safetensors optimiser moments, RNG states
            meta.json               step, counters, optimiser groups, config …

A save writes a fresh ``step-*`` folder under a temporary name, renames it into
place, then atomically replaces ``latest.json`` and only then deletes older
folders. A process killed at any instant leaves ``latest.json`` pointing at a
complete checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .._io import as_os_error, atomic_write_json
from ..errors import RunDirError

LATEST = "latest.json"


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    step: int,
    groups: dict[str, dict[str, torch.Tensor]],
    meta: dict[str, Any],
) -> Path:
    """Write ``groups`` (name → tensors) and ``meta`` as the checkpoint of ``step``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = directory / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:  # a full disk leaves no half-written folder behind, and the last checkpoint stands
        for group, tensors in groups.items():
            path = tmp / f"{group}.safetensors"
            try:
                save_file(_contiguous(tensors), str(path))
            except Exception as exc:  # safetensors reports I/O failures as its own error
                raise as_os_error(exc, path) from exc
        with open(tmp / "meta.json", "w", encoding="utf-8") as fh:
            json.dump({**meta, "step": step}, fh, indent=2)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = directory / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_json(directory / LATEST, {"step": step, "dir": name})
    for old in directory.iterdir():
        if old.name != name and (old.name.startswith("step-") or old.name.startswith(".step-")):
            shutil.rmtree(old, ignore_errors=True)
    return final


def has_checkpoint(directory: str | os.PathLike) -> bool:
    return (Path(directory) / LATEST).is_file()


def latest_step(directory: str | os.PathLike) -> int | None:
    """Step of the latest complete checkpoint, or None when there is none."""
    try:
        return int(json.loads((Path(directory) / LATEST).read_text())["step"])
    except (OSError, ValueError, KeyError):
        return None


def checkpoint_folder(directory: str | os.PathLike) -> Path:
    """The folder of the latest checkpoint in ``directory`` (what ``latest.json`` names).

    Raises:
        RunDirError: no ``latest.json``, or one that is not a pointer to a folder here.
    """
    directory = Path(directory)
    pointer = directory / LATEST
    if not pointer.is_file():
        raise RunDirError(f"{directory} holds no checkpoint (no {LATEST})")
    try:
        latest = json.loads(pointer.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunDirError(
            f"{pointer}: not a readable JSON checkpoint pointer ({_first(exc)})"
        ) from None
    name = latest.get("dir") if isinstance(latest, dict) else None
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise RunDirError(f'{pointer}: no "dir" naming the checkpoint folder')
    folder = directory / name
    if not folder.is_dir():
        raise RunDirError(f"{pointer} names {folder}, which does not exist")
    return folder


def load_checkpoint(
    directory: str | os.PathLike, *, require: Sequence[str] = ()
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read the latest checkpoint: (group name → tensors, meta with its ``step``).

    ``require`` names groups that must be there (``"model"`` → ``model.safetensors``).

    Raises:
        RunDirError: one line naming the file and what is wrong with it: no checkpoint,
            an unreadable, truncated or overwritten ``.safetensors`` file or
            ``meta.json``, a required group missing.
    """
    folder = checkpoint_folder(directory)
    meta_path = folder / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{meta_path}: missing from the checkpoint") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunDirError(f"{meta_path}: not readable JSON ({_first(exc)})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise RunDirError(f'{meta_path}: not a checkpoint\'s meta (no integer "step")')
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for f in sorted(folder.glob("*.safetensors")):
        try:
            groups[f.name.removesuffix(".safetensors")] = load_file(str(f))
        except (SafetensorError, OSError, ValueError) as exc:
            raise RunDirError(
                f"{f}: not a readable safetensors file, truncated or overwritten? ({_first(exc)})"
            ) from None
    for name in require:
        if name not in groups:
            raise RunDirError(f"{folder / (name + '.safetensors')}: missing from the checkpoint")
    return groups, meta


def load_weights(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str | os.PathLike
) -> None:
    """``model.load_state_dict(state)`` (strict), with a one-line error when they differ.

    Raises:
        RunDirError: ``"{source}: the weights do not fit the model of config.yaml
            (<first reason>); was config.yaml edited?"`` for a missing, unexpected or
            differently shaped tensor.
    """
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RunDirError(
            f"{source}: the weights do not fit the model of config.yaml ({_state_reason(exc)}); "
            "was config.yaml edited?"
        ) from None


def _first(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _state_reason(exc: RuntimeError) -> str:
    """The first problem ``load_state_dict`` lists (past its 'Error(s) in loading' header),
    with the count of the others."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    if not lines:
        return type(exc).__name__
    first = re.sub(r"torch\.Size\(\[(.*?)\]\)", r"(\1)", lines[0].rstrip("."))
    return first + (f"; and {len(lines) - 1} more" if len(lines) > 1 else "")


# ------------------------------------------------------------- optimiser state


def optimizer_to_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state_dict into safetensors-able tensors and JSON."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    *,
    source: str | os.PathLike = "the checkpoint",
) -> None:
    """Load what :func:`optimizer_to_tensors` split back into ``optimizer``.

    Raises:
        RunDirError: naming ``source`` when the saved state does not fit the optimiser
            (other parameter groups, a malformed entry).
    """
    try:
        state: dict[int, dict[str, Any]] = {}
        for name, value in tensors.items():
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
        for pid, extra in meta.get("scalars", {}).items():
            state.setdefault(int(pid), {}).update(extra)
        groups = []
        for g in meta["param_groups"]:
            g = dict(g)
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
            groups.append(g)
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RunDirError(
            f"{source}: the optimiser state does not fit this model's optimiser ({_first(exc)}); "
            "was config.yaml edited?"
        ) from None
