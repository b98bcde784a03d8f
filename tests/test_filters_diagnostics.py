"""Residual diagnostics and the offline series loader."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import statsmodels.api as sm

from tertulia.data.real import load_series
from tertulia.errors import DataError
from tertulia.filters.diagnostics import autocorrelation, residual_diagnostics


def test_diagnostics_match_statsmodels_on_nile_residuals():
    from statsmodels.stats.diagnostic import acorr_ljungbox
    from statsmodels.stats.stattools import jarque_bera

    y = load_series(name="Nile").y
    mod = sm.tsa.UnobservedComponents(y, "local level")
    mod.ssm.initialize_diffuse()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod.loglikelihood_burn = 1
        res = mod.smooth([15098.5, 1469.2])
    e = res.filter_results.standardized_forecasts_error[0][1:]
    d = residual_diagnostics(e, lags=10)
    lb = acorr_ljungbox(e, lags=[10])
    assert d.ljung_box == pytest.approx(float(lb["lb_stat"].iloc[0]), rel=1e-10)
    assert d.ljung_box_p == pytest.approx(float(lb["lb_pvalue"].iloc[0]), rel=1e-8)
    jb, jb_p, skew, kurt = jarque_bera(e)
    assert d.jarque_bera == pytest.approx(float(jb), rel=1e-10)
    assert d.jarque_bera_p == pytest.approx(float(jb_p), rel=1e-8)
    assert (d.skewness, d.kurtosis) == pytest.approx((float(skew), float(kurt)), rel=1e-10)
    h, h_p = res.test_heteroskedasticity("breakvar")[0]
    assert d.heteroscedasticity == pytest.approx(float(h), rel=1e-10)
    assert d.heteroscedasticity_p == pytest.approx(float(h_p), rel=1e-8)


def test_white_noise_passes_and_a_random_walk_fails():
    rng = np.random.default_rng(0)
    e = rng.standard_normal(400)
    assert residual_diagnostics(e).ljung_box_p > 0.01
    walk = np.cumsum(e)
    assert residual_diagnostics((walk - walk.mean()) / walk.std()).ljung_box_p < 1e-6
    assert abs(autocorrelation(e, 3)).max() < 0.15


def test_diagnostics_drop_nan_and_refuse_too_short():
    e = np.r_[np.random.default_rng(1).standard_normal(50), np.nan]
    assert residual_diagnostics(e).n == 50
    with pytest.raises(DataError, match="at least 8"):
        residual_diagnostics(np.ones(5))


def test_nile_and_lynx_load_offline():
    nile = load_series(name="Nile")
    assert len(nile) == 100 and nile.t[0] == 1871 and nile.y[0] == 1120
    lynx = load_series(name="lynx", transform="log10", missing=[3])
    assert len(lynx) == 114 and np.isnan(lynx.y[3]) and lynx.observed == 113
    assert lynx.y[0] == pytest.approx(np.log10(269))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "Nilee"}, "no item 'Nilee'"),
        ({"column": "flow"}, "no column 'flow'"),
        ({"source": "csv", "path": "/does/not/exist.csv"}, "does not exist"),
        ({"missing": [500]}, "outside the series"),
        ({"missing": list(range(100))}, "no observations"),
    ],
)
def test_series_bad_input(kwargs, match):
    with pytest.raises(DataError, match=match) as info:
        load_series(**kwargs)
    assert "\n" not in str(info.value)


def test_csv_series_with_missing_and_bad_values(tmp_path):
    path = tmp_path / "flow.csv"
    path.write_text("time,value\n1,3.5\n2,NA\n3,4.0\n")
    s = load_series(source="csv", path=str(path))
    assert np.isnan(s.y[1]) and s.y[2] == 4.0 and list(s.t) == [1, 2, 3]
    path.write_text("time,value\n1,3.5\n2,abc\n")
    with pytest.raises(DataError, match="row 2 is 'abc'"):
        load_series(source="csv", path=str(path))
    path.write_text("time,value\n1,-3\n")
    with pytest.raises(DataError, match="positive"):
        load_series(source="csv", path=str(path), transform="log")
