"""Compressed checkpoints that really shrink: a bitmask plus the packed non-zeros.

One safetensors file. For a tensor stored sparse, under its name ``k``:

    k.__mask__    uint8 (⌈N/8⌉,)   positions of the non-zeros, 8 per byte, row-major,
                                     most significant bit first (numpy.packbits)
    k.__values__  (nnz,)            the non-zeros in row-major order: float32, float16,
                                     or int8 with
    k.__scale__   float32 (1,)      the symmetric scale: v ≈ q · scale, scale = max|v| / 127

and the header metadata (safetensors' string map) holds ``format =
"tertulia-sparse/1"``, ``dtype`` and, per sparse tensor, ``shape.k`` (JSON
list) and ``dtype.k`` (its original dtype). Other tensors (biases, norms, or
any tensor not sparse enough to gain) are stored dense under their own name.
A tensor is stored sparse when that is smaller: its bitmask and values take
fewer bytes than the dense array.

Loading restores dense tensors with the zeros in place: exact for float32;
within float16 rounding; within half a quantisation step (scale/2) for int8.

Legend: N entries of a tensor, nnz its non-zeros.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .._io import atomic_write
from ..errors import RunDirError

FORMAT = "tertulia-sparse/1"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8}
_TORCH_DTYPES = {str(d): d for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16)}


def dense_bytes(state_dict: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors as stored densely (their own dtypes)."""
    return int(sum(t.numel() * t.element_size() for t in state_dict.values()))


def _pack(t: torch.Tensor, dtype: str) -> dict[str, torch.Tensor] | None:
    flat = t.detach().cpu().flatten()
    keep = flat != 0
    mask = torch.from_numpy(np.packbits(keep.numpy()))
    values = flat[keep]
    out = {"__mask__": mask}
    if dtype == "int8":
        scale = float(values.abs().max()) / 127.0 if values.numel() else 1.0
        scale = scale or 1.0
        out["__values__"] = torch.round(values.double() / scale).clamp(-127, 127).to(torch.int8)
        out["__scale__"] = torch.tensor([scale], dtype=torch.float32, device="cpu")
    else:
        out["__values__"] = values.to(DTYPES[dtype])
    packed = sum(v.numel() * v.element_size() for v in out.values())
    return out if packed < flat.numel() * flat.element_size() else None


def save_compressed(
    path: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    *,
    dtype: str = "fp32",
) -> dict[str, Any]:
    """Write ``state_dict`` compressed (atomically); return sizes and counts."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    tensors: dict[str, torch.Tensor] = {}
    meta = {"format": FORMAT, "dtype": dtype}
    sparse, nonzero, total = [], 0, 0
    for name, t in state_dict.items():
        if "__" in name:
            raise ValueError(f"tensor name {name!r} contains '__', reserved by the format")
        nonzero += int((t != 0).sum())
        total += t.numel()
        packed = _pack(t, dtype) if t.is_floating_point() and t.numel() > 0 else None
        if packed is None:
            tensors[name] = t.detach().cpu().contiguous()
            continue
        sparse.append(name)
        for suffix, v in packed.items():
            tensors[f"{name}.{suffix}"] = v.contiguous()
        meta[f"shape.{name}"] = json.dumps(list(t.shape))
        meta[f"dtype.{name}"] = str(t.dtype)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return {
        "bytes": Path(path).stat().st_size,
        "dense_bytes": dense_bytes(state_dict),
        "nonzero": nonzero,
        "total": total,
        "sparse_tensors": sparse,
    }


def load_compressed(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Dense tensors again from a file written by :func:`save_compressed`."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        raw = load_file(str(path))
    except (OSError, SafetensorError, ValueError) as exc:
        raise RunDirError(f"{path} is not a readable compressed checkpoint: {exc}") from None
    if meta.get("format") != FORMAT:
        raise RunDirError(f"{path} is not a tertulia compressed checkpoint (format {FORMAT})")
    out: dict[str, torch.Tensor] = {}
    names = {k[len("shape.") :] for k in meta if k.startswith("shape.")}
    for name in names:
        shape = json.loads(meta[f"shape.{name}"])
        dt = _TORCH_DTYPES.get(meta.get(f"dtype.{name}", "torch.float32"), torch.float32)
        n = int(np.prod(shape)) if shape else 1
        bits = np.unpackbits(raw[f"{name}.__mask__"].numpy(), count=n).astype(bool)
        values = raw[f"{name}.__values__"]
        if f"{name}.__scale__" in raw:
            values = values.double() * float(raw[f"{name}.__scale__"][0])
        dense = torch.zeros(n, dtype=dt, device="cpu")
        if int(bits.sum()) != values.numel():
            raise RunDirError(f"{path}: tensor {name} has a mask and values that disagree")
        dense[torch.from_numpy(bits)] = values.to(dt)
        out[name] = dense.view(shape)
    for k, v in raw.items():
        if "__" not in k:
            out[k] = v
    return out
