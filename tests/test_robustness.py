"""OOD test sets and adversarial attacks (tertulia.robustness)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from tertulia import build
from tertulia.config import AdversarialConfig, DataConfig, OODConfig, load_recipe
from tertulia.data import load_dataset
from tertulia.nn.heads import Prediction
from tertulia.robustness import (
    attack,
    evaluate_adversarial,
    evaluate_ood,
    ood_datasets,
    spearman,
)
from tertulia.train.tasks import gaussian_nll_points

from .conftest import TINY


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("smoke", TINY)


@pytest.fixture(scope="module")
def test_split(recipe):
    return load_dataset(recipe.data)["test"]


@pytest.fixture
def orchestra(recipe):
    torch.manual_seed(0)
    return build.build_orchestra(recipe)


class LinearGaussian(nn.Module):
    """μ = w ⊙ x_last, log σ² = lv: ∇_{x_last} NLL = −w (y − μ) e^{−lv}, other frames 0."""

    def __init__(self, grid: int):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, grid))
        self.lv = nn.Parameter(torch.tensor(-1.0))

    def forward(self, x: torch.Tensor) -> Prediction:
        mean = self.w * x[:, -1]
        return Prediction(mean=mean, log_var=self.lv.expand_as(mean))


def _nll(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        p = model(x)
        return gaussian_nll_points(y, p.mean, p.log_var).mean(-1)  # (B,)


def _relative_linf(x: torch.Tensor, xa: torch.Tensor) -> torch.Tensor:
    rms = x.flatten(1).pow(2).mean(-1).sqrt()
    return (xa - x).flatten(1).abs().amax(-1) / rms


def _finite_numbers(obj) -> bool:
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return True
    if isinstance(obj, (int, float)):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_finite_numbers(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite_numbers(v) for v in obj)
    return False


# ----------------------------------------------------------------------------- attacks


def test_fgsm_matches_the_known_gradient_and_pgd_is_at_least_as_strong():
    g = torch.Generator().manual_seed(1)
    model = LinearGaussian(16)
    x = torch.randn(5, 3, 16, generator=g)
    y = model(x).mean.detach() + torch.where(torch.rand(5, 16, generator=g) < 0.5, -1.0, 1.0)
    eps = 0.05
    radius = eps * x.flatten(1).pow(2).mean(-1).sqrt()[:, None]
    fgsm = attack(model, x, y, eps=eps, method="fgsm")
    # ∇ NLL w.r.t. x_last is −w (y − μ) e^{−lv}; earlier frames have zero gradient.
    expected = radius * torch.sign(-model.w.detach() * (y - model(x).mean.detach()))
    torch.testing.assert_close(fgsm[:, -1] - x[:, -1], expected)
    torch.testing.assert_close(fgsm[:, :-1], x[:, :-1])
    pgd = attack(model, x, y, eps=eps, method="pgd", steps=5, generator=g)
    clean, j_fgsm, j_pgd = _nll(model, x, y), _nll(model, fgsm, y), _nll(model, pgd, y)
    assert (j_fgsm > clean).all()
    assert (j_pgd > clean).all()
    assert (j_pgd >= j_fgsm - 1e-5).all()
    assert model.w.grad is None and model.lv.grad is None


def test_mse_objective_raises_the_squared_error():
    torch.manual_seed(2)
    model = LinearGaussian(8)
    x, y = torch.randn(4, 2, 8), torch.randn(4, 8)
    for method in ("fgsm", "pgd"):
        xa = attack(model, x, y, eps=0.1, method=method, objective="mse")
        with torch.no_grad():
            before = (model(x).mean - y).pow(2).mean(-1)
            after = (model(xa).mean - y).pow(2).mean(-1)
        assert (after > before).all(), method


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_attack_respects_the_budget_and_leaves_the_model_alone(orchestra, test_split, method):
    torch.manual_seed(3)
    x = torch.as_tensor(test_split.y[:, :2]) * torch.tensor([1.0, 0.3, 2.0])[:, None, None]
    y = torch.as_tensor(test_split.y[:, 2])
    orchestra.train()
    for eps in (0.01, 0.2):
        xa = attack(orchestra, x, y, eps=eps, method=method, steps=3)
        assert xa.shape == x.shape and not xa.requires_grad
        ratio = _relative_linf(x, xa)
        assert (ratio <= eps + 1e-6).all(), ratio
        assert (ratio > 0.5 * eps).all()  # it did move
        assert (_nll(orchestra, xa, y) > _nll(orchestra, x, y)).all()
    assert orchestra.training  # mode restored
    assert all(p.grad is None for p in orchestra.parameters())


def test_attack_works_under_no_grad_and_rejects_bad_arguments():
    model = LinearGaussian(8)
    x, y = torch.randn(2, 2, 8), torch.randn(2, 8)
    with torch.no_grad():
        xa = attack(model, x, y, eps=0.1, method="fgsm")
    assert not torch.equal(xa, x)
    with pytest.raises(ValueError, match="method"):
        attack(model, x, y, eps=0.1, method="cw")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps"):
        attack(model, x, y, eps=-0.1, method="fgsm")


def test_pgd_is_reproducible_with_the_same_generator_seed(orchestra, test_split):
    x = torch.as_tensor(test_split.y[:, :2])
    y = torch.as_tensor(test_split.y[:, 2])

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return attack(orchestra, x, y, eps=0.1, method="pgd", steps=2, generator=g)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ----------------------------------------------------------------------------- OOD sets


def test_ood_datasets_apply_each_shift(recipe):
    spec = OODConfig(nu=[0.01, 0.5], amplitude=[3.0], noise=[3.0], n=4)
    sets = ood_datasets(recipe.data, spec)
    assert list(sets) == ["nu=0.01", "nu=0.5", "amplitude=3", "noise×3"]
    assert sets.skipped == {}
    assert sets.shifts["nu=0.5"] == {"nu": 0.5} and sets.shifts["noise×3"] == {"noise": 3.0}
    for traj in sets.values():
        assert traj.u.shape == (4, recipe.data.frames, recipe.data.grid)
    # noise×3: σ = 3 (σ0 + σ1 |u|)
    noisy = sets["noise×3"]
    base = recipe.data.noise
    np.testing.assert_allclose(
        noisy.sigma, 3 * (base.sigma0 + base.sigma1 * np.abs(noisy.u)), rtol=1e-5, atol=1e-7
    )
    # amplitude: bigger initial fields than a base-amplitude set
    peak0 = {k: np.abs(v.u[:, 0]).max(-1).mean() for k, v in sets.items()}
    assert peak0["amplitude=3"] > 2 * peak0["noise×3"]

    # nu: a larger viscosity dissipates more energy
    def kept(traj) -> float:
        return float(
            (np.linalg.norm(traj.u[:, -1], axis=-1) / np.linalg.norm(traj.u[:, 0], axis=-1)).mean()
        )

    assert kept(sets["nu=0.5"]) < kept(sets["nu=0.01"]) - 0.1
    # a distinct stream: not the ICs of the test split
    test = load_dataset(recipe.data)["test"]
    assert not np.allclose(sets["noise×3"].u[:3, 0], test.u[:3, 0])
    # cached and deterministic
    again = ood_datasets(recipe.data, spec)
    np.testing.assert_array_equal(again["nu=0.5"].y, sets["nu=0.5"].y)
    fresh = ood_datasets(recipe.data.model_copy(update={"cache": False}), spec)
    np.testing.assert_array_equal(fresh["amplitude=3"].y, sets["amplitude=3"].y)


def test_ood_datasets_skip_failing_conditions_with_a_reason(recipe):
    # max_mode 11 is above the 2/3 cut of a 32-point solver grid: every condition fails
    data = DataConfig(grid=32, refine=1, frames=6, ic={"max_mode": 11}, cache=False)
    sets = ood_datasets(data, OODConfig(nu=[0.02], amplitude=[2.0], noise=[3.0], n=2))
    assert len(sets) == 0
    assert set(sets.skipped) == {"nu=0.02", "amplitude=2", "noise×3"}
    assert all("max_mode" in why for why in sets.skipped.values())
    # a tiny viscosity under-resolves the fronts: Gibbs overshoot breaks the max principle
    sets = ood_datasets(recipe.data, OODConfig(nu=[0.001, 0.1], amplitude=[], noise=[], n=4))
    assert list(sets) == ["nu=0.1"]
    assert "maximum principle" in sets.skipped["nu=0.001"]
    # nothing to shift for user data; advection has no viscosity
    assert ood_datasets(recipe.data.model_copy(update={"path": "x.npz"}), OODConfig()) == {}
    adv = recipe.data.model_copy(update={"equation": "advection", "cache": False})
    sets = ood_datasets(adv, OODConfig(nu=[0.02], amplitude=[], noise=[2.0], n=2))
    assert list(sets) == ["noise×2"] and "nu=0.02" in sets.skipped


def test_spearman():
    assert spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 50), rng.normal(size=50)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)


# ----------------------------------------------------------------------------- end to end


def test_evaluate_ood_end_to_end(recipe, test_split, orchestra):
    sets = ood_datasets(recipe.data, OODConfig(nu=[0.02, 0.001], amplitude=[2.0], n=3))
    orchestra.train()
    res = evaluate_ood(orchestra, test_split, sets, window=recipe.data.window, batch_size=7)
    json.dumps(res, allow_nan=False)
    assert _finite_numbers(res)
    assert set(res) == {"in_distribution", "conditions", "spearman_std_error", "skipped"}
    assert list(res["skipped"]) == ["nu=0.001"]
    scores = {"samples", "nrmse", "rmse", "nll", "coverage_90", "std_pred", "std_true"}
    assert scores <= set(res["in_distribution"])
    assert res["in_distribution"]["samples"] == 3 * (recipe.data.frames - recipe.data.window)
    names = [c["name"] for c in res["conditions"]]
    assert names == ["nu=0.02", "amplitude=2", "noise×3"]
    for c in res["conditions"]:
        assert scores | {"shift", "nrmse_ratio", "rmse_ratio", "std_ratio", "sigma_grows"} <= set(c)
        assert c["rmse_ratio"] == pytest.approx(c["rmse"] / res["in_distribution"]["rmse"])
        assert c["sigma_grows"] == (c["std_ratio"] > 1)
        assert c["spearman_std_error"] is not None
    assert res["conditions"][1]["shift"] == {"amplitude": 2.0}
    assert -1 <= res["spearman_std_error"] <= 1
    assert orchestra.training
    capped = evaluate_ood(orchestra, test_split, {}, window=recipe.data.window, max_samples=5)
    assert capped["in_distribution"]["samples"] == 5 and capped["conditions"] == []


def test_evaluate_adversarial_end_to_end(recipe, test_split, orchestra):
    cfg = AdversarialConfig(eps=[0.01, 0.1], pgd_steps=2, samples=10)
    res = evaluate_adversarial(orchestra, test_split, cfg, window=recipe.data.window, seed=3)
    json.dumps(res, allow_nan=False)
    assert _finite_numbers(res)
    assert res["samples"] == 10
    assert [(r["method"], r["eps"]) for r in res["rows"]] == [
        ("none", 0.0),
        ("fgsm", 0.01),
        ("fgsm", 0.1),
        ("pgd", 0.01),
        ("pgd", 0.1),
    ]
    keys = {"nrmse", "rmse", "nll", "coverage_90", "std_pred", "nrmse_ratio", "nll_delta"}
    clean = res["rows"][0]
    for r in res["rows"]:
        assert keys <= set(r)
        assert r["nll_delta"] == pytest.approx(r["nll"] - clean["nll"])
    assert all(r["nll_delta"] > 0 for r in res["rows"][1:])  # the attacks hurt
    assert res["rows"][2]["nll_delta"] > res["rows"][1]["nll_delta"]  # more ε, more harm
    assert all(p.grad is None for p in orchestra.parameters())
    again = evaluate_adversarial(orchestra, test_split, cfg, window=recipe.data.window, seed=3)
    assert again == res
    everything = AdversarialConfig(eps=[0.01], pgd_steps=1, samples=10_000)
    assert evaluate_adversarial(orchestra, test_split, everything, window=2)["samples"] == 18
