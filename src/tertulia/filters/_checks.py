"""Shape and covariance checks shared by the linear state-space tools.

Every check raises :class:`tertulia.errors.ShapeError` or
:class:`tertulia.errors.CovarianceError` (both :class:`UserError`) with one line
that names the offending matrix, what it is, and what is allowed.
"""

from __future__ import annotations

import torch

from ..errors import CovarianceError, ShapeError


def as_tensor(name: str, value, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``value`` as a floating tensor of ``dtype``; non-finite entries are refused."""
    try:
        t = torch.as_tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ShapeError(f"{name} is not a numeric array: {exc}") from None
    if not torch.isfinite(t).all():
        raise ShapeError(f"{name} has NaN or infinite entries; matrices must be finite")
    return t


def check_square(name: str, m: torch.Tensor) -> int:
    """``m`` is (…, n, n); returns ``n``."""
    if m.dim() < 2 or m.shape[-1] != m.shape[-2]:
        raise ShapeError(f"{name} must be square (n, n); got shape {tuple(m.shape)}")
    return int(m.shape[-1])


def check_shape(name: str, m: torch.Tensor, rows: int | None, cols: int | None) -> None:
    """``m`` is (…, rows, cols); ``None`` leaves a dimension free."""
    want = f"({'p' if rows is None else rows}, {'m' if cols is None else cols})"
    if m.dim() < 2:
        raise ShapeError(f"{name} must be a matrix {want}; got shape {tuple(m.shape)}")
    if (rows is not None and m.shape[-2] != rows) or (cols is not None and m.shape[-1] != cols):
        raise ShapeError(f"{name} must have shape {want}; got {tuple(m.shape[-2:])}")


def check_covariance(name: str, m: torch.Tensor, *, rtol: float = 1e-8) -> None:
    """``m`` is square, symmetric (to ``rtol`` of its scale) and positive semi-definite."""
    check_square(name, m)
    scale = m.abs().amax().clamp_min(1e-300)
    asym = (m - m.transpose(-1, -2)).abs().amax()
    if asym > rtol * scale:
        raise CovarianceError(
            f"{name} is not symmetric (max |M - Mᵀ| = {asym.item():.3g}); covariances must be"
            " symmetric positive semi-definite"
        )
    eig = torch.linalg.eigvalsh(0.5 * (m + m.transpose(-1, -2)))
    low = eig.amin()
    if low < -1e-10 * scale:
        raise CovarianceError(
            f"{name} is not positive semi-definite (smallest eigenvalue {low.item():.3g});"
            " covariances must be symmetric positive semi-definite"
        )
