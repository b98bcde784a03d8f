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
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .._io import atomic_write_json
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
    for group, tensors in groups.items():
        save_file(_contiguous(tensors), str(tmp / f"{group}.safetensors"))
    with open(tmp / "meta.json", "w", encoding="utf-8") as fh:
        json.dump({**meta, "step": step}, fh, indent=2)
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
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


def load_checkpoint(
    directory: str | os.PathLike,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read the latest checkpoint: (group name → tensors, meta)."""
    directory = Path(directory)
    pointer = directory / LATEST
    if not pointer.is_file():
        raise RunDirError(f"{directory} holds no checkpoint (no {LATEST})")
    try:
        latest = json.loads(pointer.read_text())
        folder = directory / latest["dir"]
        meta = json.loads((folder / "meta.json").read_text())
        groups = {
            f.name.removesuffix(".safetensors"): load_file(str(f))
            for f in sorted(folder.glob("*.safetensors"))
        }
    except (OSError, ValueError, KeyError) as exc:
        raise RunDirError(f"checkpoint in {directory} is unreadable: {exc}") from None
    return groups, meta


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
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
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
