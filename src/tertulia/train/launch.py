"""Starting data-parallel workers: ``tertulia run … --nproc N`` and the workers' side.

The launching process runs torch's elastic launcher, as ``torchrun --standalone
--nproc-per-node N -m tertulia …`` does (one node, a free rendezvous port); each
worker it starts runs the same command line with ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` in its environment and joins the process group (:func:`init_worker`):
NCCL on its own GPU (``cuda:LOCAL_RANK``) when the run is on CUDA, else gloo.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.distributed.run import get_args_parser
from torch.distributed.run import run as elastic_run

from ..errors import UserError
from ..runtime import Runtime


def is_worker() -> bool:
    """Whether this process was started as one of several workers (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def init_worker(runtime: Runtime) -> None:
    """Join the process group: NCCL on this rank's GPU when the run is on CUDA, else gloo."""
    if runtime.is_cuda:
        torch.cuda.set_device(runtime.device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if runtime.is_cuda else "gloo")


def launch(words: list[str], nproc: int) -> None:
    """Start ``nproc`` workers running ``tertulia <words>``; wait for them (UserError when
    one fails: it has printed its own error)."""
    args = get_args_parser().parse_args(
        ["--standalone", "--nproc-per-node", str(nproc), "--module", "tertulia", *words]
    )
    try:
        elastic_run(args)
    except Exception as exc:  # ChildFailedError: the workers printed their own error
        raise UserError(
            f"a worker process failed ({type(exc).__name__}); see its output above"
        ) from None
