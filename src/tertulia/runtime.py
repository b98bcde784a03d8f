"""Where models run and in what precision: a recipe's ``runtime`` section, ``--device``.

``runtime.device`` is ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the CUDA device
when there is one, else the CPU); ``runtime.precision`` is ``fp32`` or ``bf16``.
In ``bf16`` the forward passes run under ``torch.autocast(dtype=bfloat16)``:
matrix products in bfloat16, while weights, optimiser state, gradients of the
weights, losses and metrics stay float32, and the numerically delicate kernels
(selective and HiPPO scans, FFT convolutions, Kalman recursions, the solvers'
residuals) leave autocast and compute in float32 or float64 (:func:`full_precision`).

What the rest of the package does so that a model runs on any device:

* models are built on the CPU from the recipe's seed, then moved
  (:meth:`Runtime.place`): one seed gives the same initial weights everywhere;
* data sets are made or read on the CPU and moved to the device once by the task
  that owns them (laptop-scale scientific data: a few MB);
* random draws that pick batches, orders and probes come from CPU generators
  (checkpointed, and equal on every device) and are moved where they are used;
* every tensor made inside a forward pass takes ``device=`` (and ``dtype=``) from
  its inputs. ``tests/test_runtime.py`` holds this by running every job with a
  foreign default device (``meta``): a tensor made without ``device=`` lands there
  and fails the run.

Legend: none (no tensors of fixed shape here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from .errors import ConfigError

T = TypeVar("T")
M = TypeVar("M", bound=nn.Module)
Precision = Literal["fp32", "bf16"]

DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
_DEVICE_RE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")
_HALF = (torch.float16, torch.bfloat16)


def check_device_spec(spec: str) -> str:
    """``spec`` normalised (``'CUDA:0 '`` → ``'cuda:0'``) if it names a device kind; else
    ConfigError. Whether the device exists is :func:`resolve_device`'s question."""
    norm = str(spec).strip().lower()
    if not _DEVICE_RE.match(norm):
        raise ConfigError(f"unknown device {spec!r}; devices are {DEVICE_CHOICES}")
    return norm


def _local_rank() -> int | None:
    """This process's rank on its node under torchrun / ``--nproc``, else None."""
    value = os.environ.get("LOCAL_RANK")
    if value is None or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return int(value)


def resolve_device(spec: str) -> torch.device:
    """The ``torch.device`` that ``spec`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``) means here.

    ``cuda`` (and ``auto`` on a CUDA machine) is this process's GPU: ``cuda:LOCAL_RANK``
    in a data-parallel worker, else the current CUDA device. A CUDA device that this
    machine lacks is a ConfigError naming what there is.
    """
    norm = check_device_spec(spec)
    if norm == "cpu" or (norm == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(
            f"device {norm!r}: no CUDA device is available here (torch {torch.__version__}, "
            f"{build}); use --device cpu or --device auto"
        )
    count = torch.cuda.device_count()
    if ":" in norm:
        index = int(norm.split(":")[1])
    else:
        rank = _local_rank()
        index = rank if rank is not None else torch.cuda.current_device()
    if index >= count:
        raise ConfigError(
            f"device {norm!r}: this machine has {count} CUDA device{'s' * (count != 1)} "
            f"(cuda:0 … cuda:{count - 1})"
        )
    return torch.device("cuda", index)


def map_tensors(fn: Callable[[torch.Tensor], Any], obj: T) -> T:
    """``obj`` with ``fn`` applied to every tensor in it: dataclasses, named tuples,
    tuples, lists and dicts are walked; other values are kept as they are."""
    if torch.is_tensor(obj):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj, **{f.name: map_tensors(fn, getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        )
    if isinstance(obj, tuple):
        items = [map_tensors(fn, v) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)  # type: ignore[return-value]
    if isinstance(obj, list):
        return [map_tensors(fn, v) for v in obj]  # type: ignore[return-value]
    if isinstance(obj, dict):
        return {k: map_tensors(fn, v) for k, v in obj.items()}  # type: ignore[return-value]
    return obj


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer (the CPU for an empty model)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@dataclass(frozen=True)
class Runtime:
    """A resolved device and precision: where a job's models, batches and forwards go.

    >>> rt = Runtime.resolve("auto", "bf16")                    # doctest: +SKIP
    >>> model = rt.place(model); batch = rt.to(batch)           # doctest: +SKIP
    >>> with rt.autocast(): pred = model(batch.x)               # doctest: +SKIP
    """

    device: torch.device = torch.device("cpu")
    precision: Precision = "fp32"

    @classmethod
    def resolve(cls, device: str = "cpu", precision: str = "fp32") -> Runtime:
        if precision not in PRECISIONS:
            raise ConfigError(
                f"unknown precision {precision!r}; precisions are {', '.join(PRECISIONS)}"
            )
        return cls(resolve_device(device), precision)  # type: ignore[arg-type]

    @classmethod
    def of(cls, recipe: Any) -> Runtime:
        """The runtime a recipe asks for (its ``runtime`` section; CPU, fp32 without one)."""
        section = getattr(recipe, "runtime", None)
        if section is None:
            return cls()
        return cls.resolve(section.device, section.precision)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward-pass context: bf16 autocast on this device, or nothing in fp32."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def place(self, module: M) -> M:
        """``module`` moved to the device (in place, as ``nn.Module.to`` does)."""
        return module.to(self.device)

    def to(self, obj: T) -> T:
        """``obj`` with every tensor in it moved to the device (see :func:`map_tensors`)."""
        dev = self.device
        return map_tensors(lambda t: t if t.device == dev else t.to(dev, non_blocking=True), obj)

    def describe(self) -> dict[str, Any]:
        """JSON for metrics.json: the device, its name, the precision."""
        name = torch.cuda.get_device_name(self.device) if self.is_cuda else "cpu"
        return {"device": str(self.device), "device_name": name, "precision": self.precision}


CPU = Runtime()
"""The CPU in float32: the default of every task and of the library's functions."""


def full_precision(x: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    """A region outside autocast on ``x``'s device: for scans, FFTs and recursions whose
    accuracy bfloat16 would ruin. Cast half inputs with :func:`float32` inside it."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def float32(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each tensor, half-precision ones (bf16, fp16) cast to float32; others untouched."""
    return tuple(t.float() if t.dtype in _HALF else t for t in tensors)


@contextlib.contextmanager
def on_cpu() -> Iterator[None]:
    """Tensors made without ``device=`` inside go to the CPU: the scope in which models are
    built (seeded CPU initialisation) and data sets are made, whatever the default device."""
    with torch.device("cpu"):
        yield


def random_like(
    like: torch.Tensor,
    shape: tuple[int, ...] | torch.Size | None = None,
    *,
    generator: torch.Generator | None = None,
    normal: bool = False,
) -> torch.Tensor:
    """Uniform [0, 1) (or, with ``normal``, standard normal) draws of ``shape`` (default
    ``like``'s) in ``like``'s dtype and on its device. With a ``generator`` the draws are
    made on the generator's device and moved: a CPU generator gives the same numbers for
    a model on any device."""
    shape = like.shape if shape is None else shape
    where = generator.device if generator is not None else like.device
    fn = torch.randn if normal else torch.rand
    return fn(shape, generator=generator, dtype=like.dtype, device=where).to(like.device)
