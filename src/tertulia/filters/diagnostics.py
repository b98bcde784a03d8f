"""Residual diagnostics of a fitted state-space model (Durbin & Koopman §2.12).

If the model is right, the standardised one-step prediction errors
``e_t = v_t / √F_t`` are independent N(0, 1). Three tests check it:

* **Independence** — Ljung–Box ``Q(k) = n(n+2) Σ_{j≤k} r_j² / (n−j)`` with
  ``r_j`` the sample autocorrelations; χ²(k) under the null.
* **Homoscedasticity** — ``H(h) = Σ_{last h} e_t² / Σ_{first h} e_t²`` with
  ``h = round(n/3)``; F(h, h) under the null, two-sided.
* **Normality** — Jarque–Bera ``n/6 (S² + (K−3)²/4)`` from the skewness S and
  kurtosis K; χ²(2) under the null.

Missing values (NaN) and the diffuse start are dropped before testing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from ..errors import DataError


def autocorrelation(e: np.ndarray, lags: int) -> np.ndarray:
    """Sample autocorrelations ``r_1 … r_lags`` of ``e`` (mean removed, biased denominator)."""
    e = np.asarray(e, dtype=np.float64)
    e = e - e.mean()
    denom = float(e @ e)
    if denom == 0.0:
        return np.zeros(lags)
    return np.array([float(e[j:] @ e[:-j]) / denom for j in range(1, lags + 1)])


@dataclass
class Diagnostics:
    """Test statistics and p-values of the standardised residuals."""

    n: int
    ljung_box_lags: int
    ljung_box: float
    ljung_box_p: float
    heteroscedasticity: float
    heteroscedasticity_p: float
    jarque_bera: float
    jarque_bera_p: float
    skewness: float
    kurtosis: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def residual_diagnostics(residuals: np.ndarray, *, lags: int | None = None) -> Diagnostics:
    """Ljung–Box, heteroscedasticity H and Jarque–Bera tests of standardised residuals.

    ``residuals`` may hold NaN (missing steps), which are dropped. ``lags``
    defaults to ``min(10, n // 5)``.
    """
    e = np.asarray(residuals, dtype=np.float64).ravel()
    e = e[np.isfinite(e)]
    n = int(e.size)
    if n < 8:
        raise DataError(f"residual diagnostics need at least 8 observed residuals; got {n}")
    k = int(lags) if lags is not None else max(1, min(10, n // 5))
    if not 1 <= k < n:
        raise DataError(f"Ljung–Box lags must be in 1..{n - 1}; got {k}")
    r = autocorrelation(e, k)
    q = float(n * (n + 2) * np.sum(r**2 / (n - np.arange(1, k + 1))))
    h = int(round(n / 3))
    head, tail = float(e[:h] @ e[:h]), float(e[-h:] @ e[-h:])
    big_h = tail / head if head > 0 else float("inf")
    p_h = float(2 * min(stats.f.cdf(big_h, h, h), stats.f.sf(big_h, h, h)))
    centred = e - e.mean()
    m2 = float(np.mean(centred**2))
    skew = float(np.mean(centred**3) / m2**1.5) if m2 > 0 else 0.0
    kurt = float(np.mean(centred**4) / m2**2) if m2 > 0 else 3.0
    jb = n / 6.0 * (skew**2 + (kurt - 3.0) ** 2 / 4.0)
    return Diagnostics(
        n=n,
        ljung_box_lags=k,
        ljung_box=q,
        ljung_box_p=float(stats.chi2.sf(q, k)),
        heteroscedasticity=big_h,
        heteroscedasticity_p=p_h,
        jarque_bera=float(jb),
        jarque_bera_p=float(stats.chi2.sf(jb, 2)),
        skewness=skew,
        kurtosis=kurt,
    )
