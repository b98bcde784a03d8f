"""Tests for tertulia.metrics: hand-computed values, scipy references, Monte Carlo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from tertulia.metrics import (
    DEFAULT_LEVELS,
    calibration_curve,
    coverage,
    crps_gaussian,
    gaussian_nll,
    gaussian_scores,
    miscalibration_area,
    nrmse,
    rmse,
    sigma_rel_error,
)

# --------------------------------------------------------------------------- nrmse, rmse


def test_nrmse_hand_computed_is_mean_of_per_sample_ratios():
    true = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    pred = torch.tensor([[6.0, 8.0], [0.0, 3.0]])
    # sample 0: ‖(3, 4)‖ / ‖(3, 4)‖ = 5 / 5 = 1
    # sample 1: ‖(0, 1)‖ / ‖(0, 2)‖ = 1 / 2 = 0.5
    # mean = 0.75 (a global ratio would give √26 / √29 ≈ 0.947)
    assert nrmse(pred, true) == pytest.approx(0.75, abs=1e-12)


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 1.25, 3.0])
def test_nrmse_of_scaled_prediction_is_abs_scale_minus_one(scale):
    true = torch.randn(5, 3, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert nrmse(scale * true, true) == pytest.approx(abs(scale - 1.0), abs=1e-12)


def test_nrmse_norm_runs_over_all_non_leading_axes():
    g = torch.Generator().manual_seed(1)
    true = torch.randn(4, 3, 8, generator=g)
    pred = true + 0.1 * torch.randn(4, 3, 8, generator=g)
    by_hand = np.mean(
        [
            np.linalg.norm((pred[n] - true[n]).numpy()) / np.linalg.norm(true[n].numpy())
            for n in range(4)
        ]
    )
    assert nrmse(pred, true) == pytest.approx(by_hand, rel=1e-6)


def test_nrmse_zero_truth_is_finite():
    zeros = torch.zeros(2, 8)
    assert nrmse(zeros, zeros) == 0.0
    assert math.isfinite(nrmse(torch.ones(2, 8), zeros))


def test_nrmse_one_dimensional_input_is_one_sample():
    # ‖(0, 1)‖ / ‖(3, 4)‖ = 1 / 5
    assert nrmse(torch.tensor([3.0, 5.0]), torch.tensor([3.0, 4.0])) == pytest.approx(0.2)


def test_rmse_hand_computed():
    # √((1 + 4 + 9 + 16) / 4) = √7.5
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert rmse(pred, torch.zeros(2, 2)) == pytest.approx(math.sqrt(7.5), abs=1e-12)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        rmse(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="same shape"):
        nrmse(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="same shape"):
        crps_gaussian(torch.zeros(3), torch.zeros(3), torch.ones(2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_any_float_dtype_returns_python_float(dtype):
    y = torch.tensor([0.5, -1.0, 2.0], dtype=dtype)
    mean = torch.tensor([0.0, 0.0, 1.0], dtype=dtype)
    std = torch.tensor([1.0, 2.0, 0.5], dtype=dtype)
    ref = crps_gaussian(y.double(), mean.double(), std.double())
    out = crps_gaussian(y, mean, std)
    assert type(out) is float
    assert out == pytest.approx(ref, rel=1e-12)  # these values are exact in every dtype
    assert type(nrmse(y, mean + 1)) is float
    assert type(gaussian_nll(y, mean, torch.log(std**2))) is float


# --------------------------------------------------------------------------- NLL, CRPS


def test_gaussian_nll_hand_computed():
    # y = 1, μ = 0, σ² = 1: ½(log 2π + 0 + 1) = ½(1.8378770664 + 1) = 1.4189385332
    # y = 0, μ = 0, σ² = e²: ½(log 2π + 2 + 0) = 1.9189385332
    y = torch.tensor([1.0, 0.0])
    out = gaussian_nll(y, torch.zeros(2), torch.tensor([0.0, 2.0]))
    assert out == pytest.approx((1.4189385332 + 1.9189385332) / 2, abs=1e-9)


def test_gaussian_nll_matches_scipy():
    rng = np.random.default_rng(0)
    y, mean = rng.normal(size=50), rng.normal(size=50)
    std = rng.uniform(0.1, 3.0, size=50)
    ref = -stats.norm.logpdf(y, loc=mean, scale=std).mean()
    out = gaussian_nll(torch.tensor(y), torch.tensor(mean), torch.tensor(np.log(std**2)))
    assert out == pytest.approx(ref, rel=1e-12)


def test_crps_hand_computed_at_the_mean():
    # z = 0: σ(0 + 2φ(0) − 1/√π) = σ(2/√(2π) − 1/√π) = σ(0.7978845608 − 0.5641895835)
    out = crps_gaussian(torch.zeros(2), torch.zeros(2), torch.tensor([1.0, 2.0]))
    assert out == pytest.approx(0.2336949773 * (1 + 2) / 2, abs=1e-9)


def test_crps_far_from_the_mean_tends_to_abs_error():
    # |z| ≫ 1: CRPS ≈ |y − μ| − σ/√π
    out = crps_gaussian(torch.tensor([50.0]), torch.tensor([0.0]), torch.tensor([1.0]))
    assert out == pytest.approx(50.0 - 1 / math.sqrt(math.pi), abs=1e-9)


@pytest.mark.parametrize(
    ("y", "mu", "sigma"), [(0.3, -0.2, 0.7), (2.0, 0.0, 1.0), (-1.5, 1.0, 2.5)]
)
def test_crps_matches_integral_definition(y, mu, sigma):
    # CRPS(F, y) = ∫ (F(x) − 1[x ≥ y])² dx with F the scipy normal CDF
    left, _ = integrate.quad(lambda x: stats.norm.cdf(x, mu, sigma) ** 2, -np.inf, y)
    right, _ = integrate.quad(lambda x: stats.norm.sf(x, mu, sigma) ** 2, y, np.inf)
    out = crps_gaussian(torch.tensor([y]), torch.tensor([mu]), torch.tensor([sigma]))
    assert out == pytest.approx(left + right, rel=1e-7)


def test_crps_matches_monte_carlo_energy_form():
    # CRPS = E|X − y| − ½ E|X − X'|, X, X' ~ N(μ, σ²) independent
    g = torch.Generator().manual_seed(3)
    y, mu, sigma = 0.8, 0.1, 1.3
    x = mu + sigma * torch.randn(400_000, generator=g, dtype=torch.float64)
    x2 = mu + sigma * torch.randn(400_000, generator=g, dtype=torch.float64)
    mc = float((x - y).abs().mean() - 0.5 * (x - x2).abs().mean())
    out = crps_gaussian(torch.tensor([y]), torch.tensor([mu]), torch.tensor([sigma]))
    assert out == pytest.approx(mc, abs=5e-3)


# --------------------------------------------------------------------------- coverage, calibration


def test_coverage_hand_computed():
    # μ = 0, σ = 1; z_0.5 = 0.6745, z_0.9 = 1.6449
    y = torch.tensor([0.5, 1.0, 1.5, 2.5])
    zeros, ones = torch.zeros(4), torch.ones(4)
    assert coverage(y, zeros, ones, 0.5) == 0.25  # only 0.5 inside ±0.6745
    assert coverage(y, zeros, ones, 0.9) == 0.75  # 0.5, 1.0, 1.5 inside ±1.6449
    assert coverage(y, zeros, ones, 0.0) == 0.0
    assert coverage(y, zeros, ones, 1.0) == 1.0
    # a wider σ widens the interval: ±2 · 0.6745 now holds 0.5 and 1.0
    assert coverage(y, zeros, 2 * ones, 0.5) == 0.5


def test_coverage_rejects_level_outside_unit_interval():
    with pytest.raises(ValueError, match="level"):
        coverage(torch.zeros(2), torch.zeros(2), torch.ones(2), 1.5)
    with pytest.raises(ValueError, match="level"):
        calibration_curve(torch.zeros(2), torch.zeros(2), torch.ones(2), [0.5, -0.1])


def _gaussian_samples(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(n, generator=g, dtype=torch.float64)
    std = 0.2 + torch.rand(n, generator=g, dtype=torch.float64)
    y = mean + std * torch.randn(n, generator=g, dtype=torch.float64)
    return y, mean, std


def test_calibrated_gaussian_has_coverage_near_level_and_small_area():
    y, mean, std = _gaussian_samples(200_000, seed=4)
    observed = calibration_curve(y, mean, std, DEFAULT_LEVELS)
    np.testing.assert_allclose(observed, DEFAULT_LEVELS, atol=0.006)
    assert miscalibration_area(DEFAULT_LEVELS, observed) < 0.005


def test_over_confident_model_has_low_coverage_and_large_area():
    y, mean, std = _gaussian_samples(50_000, seed=5)
    observed = calibration_curve(y, mean, 0.3 * std, DEFAULT_LEVELS)
    # exact: coverage(ℓ) = 2Φ(0.3 z_ℓ) − 1
    z = stats.norm.ppf((1 + np.array(DEFAULT_LEVELS)) / 2)
    np.testing.assert_allclose(observed, 2 * stats.norm.cdf(0.3 * z) - 1, atol=0.01)
    assert all(o < level for o, level in zip(observed, DEFAULT_LEVELS, strict=True))
    assert miscalibration_area(DEFAULT_LEVELS, observed) > 0.2


def test_miscalibration_area_hand_computed():
    # points (0, 0), (0.5, 0), (1, 1): |diff| = 0, 0.5, 0
    # area = ½·0.5·(0 + 0.5) + ½·0.5·(0.5 + 0) = 0.25
    assert miscalibration_area([0.5], [0.0]) == pytest.approx(0.25)
    assert miscalibration_area([0.5], [0.5]) == 0.0
    # order of the levels does not matter; given end points are not duplicated
    # points (0, 0), (0.25, 0.5), (0.75, 0.5), (1, 1): |diff| = 0, 0.25, 0.25, 0
    # area = ½·0.25·0.25 + 0.5·0.25 + ½·0.25·0.25 = 0.1875
    assert miscalibration_area([0.75, 0.25], [0.5, 0.5]) == pytest.approx(0.1875)
    assert miscalibration_area([0.0, 0.25, 0.75, 1.0], [0.0, 0.5, 0.5, 1.0]) == pytest.approx(
        0.1875
    )


def test_miscalibration_area_length_mismatch_raises():
    with pytest.raises(ValueError, match="same length"):
        miscalibration_area([0.1, 0.2], [0.1])


# --------------------------------------------------------------------------- sigma, bundle


def test_sigma_rel_error_hand_computed():
    s = torch.tensor([3.0, 4.0])  # ‖σ‖ = 5
    assert sigma_rel_error(s, s) == 0.0
    assert sigma_rel_error(torch.tensor([3.0, 5.0]), s) == pytest.approx(0.2)  # 1 / 5
    assert sigma_rel_error(2 * s, s) == pytest.approx(1.0)
    assert sigma_rel_error(torch.zeros(2), s) == pytest.approx(1.0)


def test_gaussian_scores_bundles_the_individual_metrics():
    y, mean, std = _gaussian_samples(1000, seed=6)
    levels = [0.2, 0.5, 0.8]
    scores = gaussian_scores(y, mean, std, levels=levels)
    assert set(scores) == {
        "nll",
        "crps",
        "coverage_50",
        "coverage_90",
        "coverage_95",
        "miscalibration_area",
        "calibration",
    }
    assert scores["nll"] == pytest.approx(gaussian_nll(y, mean, torch.log(std**2)), rel=1e-12)
    assert scores["crps"] == pytest.approx(crps_gaussian(y, mean, std), rel=1e-12)
    assert scores["coverage_90"] == coverage(y, mean, std, 0.9)
    assert scores["coverage_95"] == coverage(y, mean, std, 0.95)
    assert scores["calibration"] == calibration_curve(y, mean, std, levels)
    assert scores["coverage_50"] == scores["calibration"][1]
    assert scores["miscalibration_area"] == pytest.approx(
        miscalibration_area(levels, scores["calibration"])
    )
    assert len(gaussian_scores(y, mean, std)["calibration"]) == len(DEFAULT_LEVELS)
