r"""Accuracy and uncertainty metrics for point and Gaussian forecasts.

All functions are pure: they take torch tensors of any float dtype (or anything
``torch.as_tensor`` accepts), compute in float64 and return Python floats unless
stated. Shapes of the arguments must match exactly (no silent broadcasting);
reductions run over *all* points.

Axes
----
    N   samples (the leading axis; ``nrmse`` averages over it)
    ...  any further axes (time, grid G, channels); treated as one point set
    L   nominal levels of a calibration curve

Formulas (per point y, predictive mean μ, standard deviation σ, z = (y − μ)/σ;
Φ / φ the standard normal CDF / density):

    nrmse          (1/N) Σ_n ‖p_n − t_n‖₂ / max(‖t_n‖₂, ε)      (PDEBench)
    rmse           √( mean (p − t)² )
    gaussian_nll   mean ½ ( log 2π + log σ² + (y − μ)² / σ² )
    crps_gaussian  mean σ [ z (2Φ(z) − 1) + 2φ(z) − 1/√π ]
                   (Gneiting & Raftery 2007; = E|X − y| − ½ E|X − X'|, X, X' ~ N(μ, σ²))
    coverage(ℓ)    mean 1[ |y − μ| ≤ z_ℓ σ ],  z_ℓ = Φ⁻¹((1 + ℓ)/2)
    calibration    [coverage(ℓ) for ℓ in levels]
    miscal. area   ∫₀¹ |observed(ℓ) − ℓ| dℓ by the trapezoid rule over the
                   levels with the end points (0, 0) and (1, 1) added
    sigma_rel_err  ‖σ̂ − σ‖₂ / max(‖σ‖₂, ε)

A perfectly calibrated model has coverage(ℓ) ≈ ℓ and a miscalibration area ≈ 0;
an over-confident one (σ too small) has coverage(ℓ) < ℓ and a large area (at
most ½).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "DEFAULT_LEVELS",
    "calibration_curve",
    "coverage",
    "crps_gaussian",
    "gaussian_nll",
    "gaussian_scores",
    "miscalibration_area",
    "nrmse",
    "rmse",
    "sigma_rel_error",
]

#: Nominal levels 0.05, 0.10, …, 0.95 used by :func:`gaussian_scores` by default.
DEFAULT_LEVELS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))

# Guard against division by a zero norm (an all-zero target field).
_EPS = 1e-12
_LOG_2PI = math.log(2.0 * math.pi)
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _f64(x: Any) -> torch.Tensor:
    """``x`` as a float64 tensor: a tensor on its own device, anything else on the CPU."""
    if torch.is_tensor(x):
        return x.detach().to(torch.float64)
    return torch.as_tensor(x, dtype=torch.float64, device="cpu")


def _same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )


def _gaussian_args(
    y: Any, mean: Any, spread: Any, spread_name: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y, mean, spread = _f64(y), _f64(mean), _f64(spread)
    _same_shape("y", y, "mean", mean)
    _same_shape("y", y, spread_name, spread)
    if y.numel() == 0:
        raise ValueError("y must have at least one element")
    return y, mean, spread


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"level must be in [0, 1], got {level}")
    return level


def nrmse(pred: Any, true: Any) -> float:
    """PDEBench normalised RMSE: mean over samples of ‖pred − true‖₂ / ‖true‖₂.

    The norm runs over all non-leading axes of each sample. A 0-d or 1-d input
    is one sample. ‖true‖₂ is floored at 1e-12.
    """
    p, t = _f64(pred), _f64(true)
    _same_shape("pred", p, "true", t)
    if p.numel() == 0:
        raise ValueError("pred must have at least one element")
    if p.ndim < 2:
        p, t = p.reshape(1, -1), t.reshape(1, -1)
    p, t = p.reshape(p.shape[0], -1), t.reshape(t.shape[0], -1)  # (N, P)
    err = torch.linalg.vector_norm(p - t, dim=1)  # (N,)
    ref = torch.linalg.vector_norm(t, dim=1).clamp_min(_EPS)  # (N,)
    return float((err / ref).mean())


def rmse(pred: Any, true: Any) -> float:
    """Root mean squared error over all points: √(mean (pred − true)²)."""
    p, t = _f64(pred), _f64(true)
    _same_shape("pred", p, "true", t)
    if p.numel() == 0:
        raise ValueError("pred must have at least one element")
    return float(((p - t) ** 2).mean().sqrt())


def gaussian_nll(y: Any, mean: Any, log_var: Any) -> float:
    """Mean Gaussian negative log-likelihood ½(log 2π + log σ² + (y − μ)²/σ²)."""
    y, mean, log_var = _gaussian_args(y, mean, log_var, "log_var")
    nll = 0.5 * (_LOG_2PI + log_var + (y - mean) ** 2 * torch.exp(-log_var))
    return float(nll.mean())


def crps_gaussian(y: Any, mean: Any, std: Any) -> float:
    """Mean closed-form CRPS of N(μ, σ²) at y: σ[z(2Φ(z) − 1) + 2φ(z) − 1/√π]."""
    y, mean, std = _gaussian_args(y, mean, std, "std")
    z = (y - mean) / std
    cdf = torch.special.ndtr(z)
    pdf = _INV_SQRT_2PI * torch.exp(-0.5 * z**2)
    crps = std * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - _INV_SQRT_PI)
    return float(crps.mean())


def _coverage(y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, level: float) -> float:
    if level >= 1.0:  # z = ∞: every finite point is inside (avoids ∞·0 for σ = 0)
        return 1.0
    z = torch.tensor((1.0 + level) / 2.0, dtype=torch.float64, device="cpu")
    half_width = float(torch.special.ndtri(z))
    inside = (y - mean).abs() <= half_width * std
    return float(inside.to(torch.float64).mean())


def coverage(y: Any, mean: Any, std: Any, level: float) -> float:
    """Fraction of y inside the central interval μ ± Φ⁻¹((1 + level)/2) σ."""
    y, mean, std = _gaussian_args(y, mean, std, "std")
    return _coverage(y, mean, std, _check_level(level))


def calibration_curve(y: Any, mean: Any, std: Any, levels: Sequence[float]) -> list[float]:
    """Observed coverage of the central interval at each nominal level."""
    y, mean, std = _gaussian_args(y, mean, std, "std")
    return [_coverage(y, mean, std, _check_level(level)) for level in levels]


def miscalibration_area(levels: Sequence[float], observed: Sequence[float]) -> float:
    """Area between the calibration curve and the diagonal over [0, 1].

    Points are sorted by level; (0, 0) and (1, 1) are added unless a level is
    already exactly 0 or 1; the trapezoid rule integrates |observed − nominal|.
    """
    nominal = [_check_level(level) for level in levels]
    obs = [float(o) for o in observed]
    if len(nominal) != len(obs):
        raise ValueError(
            f"levels and observed must have the same length, got {len(nominal)} and {len(obs)}"
        )
    points = sorted(zip(nominal, obs, strict=True))
    if not points or points[0][0] > 0.0:
        points.insert(0, (0.0, 0.0))
    if points[-1][0] < 1.0:
        points.append((1.0, 1.0))
    area = 0.0
    for (x0, o0), (x1, o1) in zip(points[:-1], points[1:], strict=True):
        area += 0.5 * (x1 - x0) * (abs(o0 - x0) + abs(o1 - x1))
    return area


def sigma_rel_error(std_pred: Any, std_true: Any) -> float:
    """Relative L2 error of a predicted standard deviation: ‖σ̂ − σ‖₂ / ‖σ‖₂."""
    s_hat, s = _f64(std_pred), _f64(std_true)
    _same_shape("std_pred", s_hat, "std_true", s)
    if s.numel() == 0:
        raise ValueError("std_pred must have at least one element")
    err = torch.linalg.vector_norm(s_hat - s)
    return float(err / torch.linalg.vector_norm(s).clamp_min(_EPS))


def gaussian_scores(
    y: Any, mean: Any, std: Any, *, levels: Sequence[float] = DEFAULT_LEVELS
) -> dict[str, float | list[float]]:
    """All Gaussian scores of one model in one dict.

    Keys: ``nll``, ``crps``, ``coverage_50``, ``coverage_90``, ``coverage_95``,
    ``miscalibration_area`` (floats) and ``calibration`` (list of the observed
    coverage at each of ``levels``, in the given order).
    """
    y, mean, std = _gaussian_args(y, mean, std, "std")
    observed = calibration_curve(y, mean, std, levels)
    return {
        "nll": gaussian_nll(y, mean, 2.0 * torch.log(std)),
        "crps": crps_gaussian(y, mean, std),
        "coverage_50": _coverage(y, mean, std, 0.50),
        "coverage_90": _coverage(y, mean, std, 0.90),
        "coverage_95": _coverage(y, mean, std, 0.95),
        "miscalibration_area": miscalibration_area(levels, observed),
        "calibration": observed,
    }
