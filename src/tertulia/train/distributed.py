"""Data-parallel training on PyTorch's own engine (``torch.distributed``).

Every rank draws the *same* global batch (the trainer's generator is seeded
alike everywhere) and keeps its slice: rank r of N takes rows r·B/N … (r+1)·B/N
of every tensor in the batch (:func:`shard`). The model is wrapped in
``DistributedDataParallel``, which averages the gradients of the N slices, so
with a loss that is a mean over the batch a step of N ranks is the step one
process takes on the whole global batch (to floating-point summation order).
Only rank 0 writes logs, checkpoints and reports; the others wait at a barrier
after each checkpoint, so a resume — with any number of ranks — reads a whole one.

Launch with ``tertulia run RECIPE --nproc N`` (torch's elastic launcher, as
``torchrun --nproc-per-node N -m tertulia run RECIPE``): gloo on CPU, NCCL on GPU.

Legend: N world size, r rank, B global batch size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..runtime import map_tensors, model_device


def active() -> bool:
    """Whether this process is one rank of an initialised process group of size > 1."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes files."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def all_true(flag: bool) -> bool:
    """``flag`` and-ed over every rank (the flag itself when not distributed)."""
    if not active():
        return flag
    # NCCL reduces tensors on this rank's GPU (torch.cuda.set_device), gloo CPU ones
    nccl = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def shard(batch: Any, r: int, n: int) -> Any:
    """Rank ``r``'s slice of ``batch``: every tensor with a leading batch dimension divisible
    by ``n`` is cut along it; dataclasses, tuples, lists and dicts are walked; other values
    (and 0-d tensors) are kept whole."""
    if n == 1:
        return batch

    def cut(t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            return t
        size = t.shape[0]
        if size % n:
            raise ValueError(
                f"a batch of {size} rows does not split over {n} processes; "
                f"use a batch size divisible by {n}"
            )
        step = size // n
        return t[r * step : (r + 1) * step]

    return map_tensors(cut, batch)


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` when distributed, else ``model`` itself.

    ``find_unused_parameters`` is on: some models leave parameters out of a step's
    graph. It costs a graph traversal per step (``benchmarks/ddp.py`` measures the
    total); ``static_graph`` would skip it but gave ranks that drift apart from the
    one-process run on the Burgers recipe, so it stays off."""
    if not active():
        return model

    device = model_device(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)
