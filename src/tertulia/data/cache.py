"""On-disk cache of generated arrays, one safetensors file per key.

A key is a JSON-able dict (for datasets: the data-affecting config fields plus a
generator version). Its name on disk is::

    sha256( json.dumps(key, sort_keys=True, separators=(",", ":")) ).hex  +  ".safetensors"

The canonical JSON is also stored in the file's metadata and checked on read, so a
stale or foreign file is rebuilt. Files are written atomically
(``tertulia._io.atomic_write``); a corrupt or unreadable file is rebuilt, never fatal;
nothing is ever pickled. Directory: ``$TERTULIA_CACHE``, else
``$XDG_CACHE_HOME/tertulia``, else ``~/.cache/tertulia``.

Axes: arrays are stored as given (any shape); the cache does not interpret them.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from .._io import atomic_write
from ..errors import DataError

_METADATA_KEY = "tertulia_cache_key"


def cache_dir() -> Path:
    """``$TERTULIA_CACHE``, else ``$XDG_CACHE_HOME/tertulia``, else ``~/.cache/tertulia``."""
    explicit = os.environ.get("TERTULIA_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "tertulia"
    return Path.home() / ".cache" / "tertulia"


def canonical_json(key: dict[str, Any]) -> str:
    """Sorted keys, no whitespace: equal dicts give equal strings."""
    try:
        return json.dumps(key, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DataError(f"cache key is not plain finite JSON: {exc}") from None


def cache_key(key: dict[str, Any]) -> str:
    """Hex sha256 of the canonical JSON of ``key``."""
    return hashlib.sha256(canonical_json(key).encode("utf-8")).hexdigest()


def cache_path(key: dict[str, Any], *, directory: Path | None = None) -> Path:
    """Where the arrays for ``key`` live."""
    return (directory or cache_dir()) / f"{cache_key(key)}.safetensors"


def _read(path: Path, expected: str) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if the file is missing, unreadable or for another key."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as fh:
            if (fh.metadata() or {}).get(_METADATA_KEY) != expected:
                return None
            return {name: fh.get_tensor(name) for name in fh.keys()}
    except (OSError, ValueError, SafetensorError):
        return None


def load_or_build(
    key: dict[str, Any],
    build: Callable[[], dict[str, np.ndarray]],
    *,
    directory: Path | None = None,
) -> dict[str, np.ndarray]:
    """Return the cached arrays for ``key``, or ``build()`` them, store them and return them.

    A cache that cannot be written (read-only directory, full disk) only warns: the
    freshly built arrays are returned all the same.
    """
    expected = canonical_json(key)
    path = cache_path(key, directory=directory)
    cached = _read(path, expected)
    if cached is not None:
        return cached
    built = build()
    if not isinstance(built, dict) or not all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in built.items()
    ):
        raise TypeError("build() must return a dict of str → numpy arrays")
    arrays = {k: np.ascontiguousarray(v) for k, v in built.items()}

    def _write(tmp: str) -> None:
        save_file(arrays, tmp, metadata={_METADATA_KEY: expected})

    try:
        atomic_write(path, _write)
    except OSError as exc:
        warnings.warn(f"could not write data cache {path}: {exc}", stacklevel=2)
    return arrays
