"""Atomic file writes: write to a temporary file beside the target, fsync, rename.

A reader (or a process killed mid-write) therefore sees either the old file or
the new one, never a torn one.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def secondary_rank() -> bool:
    """True in the ranks > 0 of a ``torch.distributed`` run: they write no files."""
    if "torch.distributed" not in sys.modules:
        return False
    import torch.distributed as dist  # lazy: loaded only where a distributed run has it

    return dist.is_available() and dist.is_initialized() and dist.get_rank() != 0


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` then atomically move ``tmp_path`` onto ``path``.

    The file gets ordinary permissions (0666 minus the umask), not the 0600
    of ``mkstemp``, so reports and checkpoints can be shared. In ranks > 0 of a
    distributed run nothing is written: rank 0 owns the run directory.
    """
    path = Path(path)
    if secondary_rank():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            writer(tmp)
        except Exception as exc:
            raise as_os_error(exc, path) from exc
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def as_os_error(exc: Exception, path: str | os.PathLike) -> Exception:
    """``exc`` itself, or, when a library reports a failed system call in its message (as
    safetensors does: ``… (os error 28)``), the OSError it stands for, naming ``path``."""
    if isinstance(exc, OSError):
        return exc
    found = _OS_ERROR.search(str(exc))
    if found is None:
        return exc
    code = int(found.group(1))
    return OSError(code, os.strerror(code), str(path))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, _write)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, _write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def json_safe(obj: Any) -> Any:
    """NaN/Inf are not JSON: non-finite floats become null, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def append_line(path: str | os.PathLike, line: str) -> Path:
    """Append one line to a text file, atomically (the old content is never half-written)."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    return atomic_write_text(path, old + line.rstrip("\n") + "\n")
