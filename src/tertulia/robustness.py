r"""Robustness of a forecaster: out-of-distribution test sets and adversarial windows.

Out of distribution (OOD). One test set per shifted quantity, everything else as
trained (:class:`~tertulia.config.OODConfig`)::

    nu=ν'        data.nu ← ν'                          (viscosity / diffusivity)
    amplitude=A' data.ic.amplitude ← A'                (initial-condition size)
    noise×f      σ0 ← f σ0,  σ1 ← f σ1,  so σ ← f (σ0 + σ1 |u|)

Each set holds ``spec.n`` trajectories drawn from
``SeedSequence([data.seed, 7919, crc32(name)])``, a stream apart from the
train/val/test streams (``SeedSequence(data.seed).spawn(3)``) and from every other
condition, and fixed by the condition's name alone (adding a condition does not
change the others). A set is skipped, with its reason, when the generator raises
:class:`~tertulia.errors.DataError` (non-finite Burgers, unresolved modes …) or
when it breaks the maximum principle that all three equations obey,
``max_{x,t} |u| ≤ max_x |u0|`` (checked against the band-limited maximum of
``u0`` with 1 % slack): an under-resolved pseudo-spectral Burgers solution
overshoots there (Gibbs) long before it becomes non-finite.

Scores per set, on at most ``max_samples`` (trajectory, t) samples, evenly spaced
over the set's sample index (:class:`~tertulia.train.tasks.Split`)::

    nrmse, rmse        predictive mean μ vs the clean next frame u
    nll, coverage_90   N(μ, σ̂²) vs the noisy next frame y
    std_pred, std_true mean of σ̂ and of the true noise σ over all points
    ratios             nrmse_ratio, rmse_ratio, std_ratio = OOD / in-distribution
    spearman_std_error Spearman ρ between per-sample σ̄_b = mean_g σ̂_bg and
                       e_b = √(mean_g (μ_bg − u_bg)²)   (None if either is constant)

Adversarial. For a window ``x_b`` (w, G) the attacker may add ``δ_b`` with
``‖δ_b‖∞ ≤ ε_b = ε · RMS(x_b)``, ``RMS(x_b) = √(mean_{w,g} x_b²)``, and maximises
the per-sample objective ``J_b`` (mean over the grid of the Gaussian NLL of y, or
of ``(μ − y)²``), summed over the batch::

    FGSM   δ = ε_b sign(∇ₓ J)
    PGD    δ⁰ ~ U(−ε_b, ε_b);  δ^{k+1} = Π_ε(δ^k + α sign(∇ₓ J(x + δ^k))),  α = 2.5 ε_b / K

``Π_ε`` clips into the box; PGD returns, per sample, the best of its K+1 iterates
(the objective never decreases against the random start).

Legend: B batch, w window, G grid, N trajectories, T frames, S samples, K PGD steps.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from . import metrics as M
from .config import AdversarialConfig, DataConfig, OODConfig
from .data.cache import load_or_build
from .data.pde import Trajectories, dataset_key, simulate
from .errors import DataError
from .runtime import CPU, Runtime, random_like
from .train.tasks import Split, gaussian_nll_points

__all__ = [
    "MAX_SAMPLES",
    "OODSets",
    "attack",
    "evaluate_adversarial",
    "evaluate_ood",
    "ood_datasets",
    "spearman",
]

MAX_SAMPLES = 4096
"""Default cap on the samples scored per OOD set (evenly spaced over the set)."""

_OOD_STREAM = 7919  # second entry of every OOD SeedSequence: apart from train/val/test
_MAX_PRINCIPLE_SLACK = 1.01
_UPSAMPLE = 8  # band-limited maximum of u0 on 8× the grid


# ----------------------------------------------------------------------------- OOD sets


class OODSets(dict[str, Trajectories]):
    """Condition name → shifted test set, plus what each shift was and what was skipped.

    ``shifts[name]`` is e.g. ``{"nu": 0.02}``; ``skipped[name]`` the reason a condition
    has no set. A plain ``dict`` otherwise.
    """

    def __init__(self) -> None:
        super().__init__()
        self.shifts: dict[str, dict[str, float]] = {}
        self.skipped: dict[str, str] = {}


def _conditions(data: DataConfig, spec: OODConfig) -> list[tuple[str, str, float, DataConfig]]:
    """(name, quantity, value, shifted config) for every requested condition, in order."""
    out: list[tuple[str, str, float, DataConfig]] = []
    for v in spec.nu:
        out.append((f"nu={v:g}", "nu", float(v), data.model_copy(update={"nu": float(v)})))
    for v in spec.amplitude:
        ic = data.ic.model_copy(update={"amplitude": float(v)})
        out.append((f"amplitude={v:g}", "amplitude", float(v), data.model_copy(update={"ic": ic})))
    for f in spec.noise:
        noise = data.noise.model_copy(
            update={"sigma0": data.noise.sigma0 * f, "sigma1": data.noise.sigma1 * f}
        )
        out.append((f"noise×{f:g}", "noise", float(f), data.model_copy(update={"noise": noise})))
    return out


def _check_maximum_principle(traj: Trajectories) -> None:
    """Raise DataError if some trajectory exceeds the band-limited max of its u0."""
    u0 = traj.u[:, 0].astype(np.float64)  # (N, G)
    g = u0.shape[-1]
    fine = np.fft.irfft(np.fft.rfft(u0), n=_UPSAMPLE * g) * _UPSAMPLE  # (N, 8G)
    bound = np.abs(fine).max(-1) * _MAX_PRINCIPLE_SLACK + 1e-6  # (N,)
    peak = np.abs(traj.u).max(axis=(1, 2))  # (N,)
    bad = peak > bound
    if bad.any():
        worst = float((peak / np.maximum(bound / _MAX_PRINCIPLE_SLACK, 1e-12)).max())
        raise DataError(
            f"{int(bad.sum())} of {len(bad)} trajectories break the maximum principle "
            f"(max|u| up to {worst:.3g}× max|u0|): under-resolved; raise nu, grid or refine"
        )


def _simulate_checked(cfg: DataConfig, n: int, seed: np.random.SeedSequence) -> Trajectories:
    traj = simulate(cfg, n, seed)
    _check_maximum_principle(traj)
    return traj


def _arrays(traj: Trajectories) -> dict[str, np.ndarray]:
    return {"u": traj.u, "y": traj.y, "sigma": traj.sigma, "dt": np.array([traj.dt])}


def ood_datasets(data: DataConfig, spec: OODConfig) -> OODSets:
    """One test set of ``spec.n`` trajectories per shifted ν, amplitude and noise factor.

    Names: ``"nu=0.02"``, ``"amplitude=2"``, ``"noise×3"`` (values as ``{:g}``;
    repeated values give one set). Sets are cached like the main dataset when
    ``data.cache`` is true (key: :func:`~tertulia.data.pde.dataset_key` of the shifted
    config plus the condition, n and the OOD stream). A condition whose generation
    fails or breaks the maximum principle is left out and its reason recorded in
    ``.skipped``; ``nu`` conditions of the advection equation (which has no ν) too.
    User data (``data.path`` set) has no generator to shift: the result is empty.
    """
    sets = OODSets()
    if data.path:
        return sets
    for name, quantity, value, cfg in _conditions(data, spec):
        if name in sets or name in sets.skipped:
            continue
        if quantity == "nu" and cfg.equation == "advection":
            sets.skipped[name] = "the advection equation does not depend on nu"
            continue
        seed = np.random.SeedSequence([data.seed, _OOD_STREAM, zlib.crc32(name.encode())])
        try:
            if cfg.cache:
                key = {**dataset_key(cfg), "ood": {"condition": name, "n": spec.n}}
                arrays = load_or_build(
                    key, lambda c=cfg, s=seed: _arrays(_simulate_checked(c, spec.n, s))
                )
                traj = Trajectories(
                    u=arrays["u"], y=arrays["y"], sigma=arrays["sigma"], dt=float(arrays["dt"][0])
                )
                _check_maximum_principle(traj)
            else:
                traj = _simulate_checked(cfg, spec.n, seed)
        except (DataError, KeyError) as exc:
            sets.skipped[name] = " ".join(str(exc).split())
            continue
        sets[name] = traj
        sets.shifts[name] = {quantity: value}
    return sets


def _shift_from_name(name: str) -> dict[str, float]:
    """Inverse of the naming of :func:`ood_datasets` (``{}`` for a foreign name)."""
    for quantity, sep in (("nu", "="), ("amplitude", "="), ("noise", "×")):
        prefix = quantity + sep
        if name.startswith(prefix):
            try:
                return {quantity: float(name[len(prefix) :])}
            except ValueError:
                return {}
    return {}


# ----------------------------------------------------------------------------- scoring


def _num(x: float) -> float | None:
    """A float for JSON: None where it is NaN/Inf."""
    x = float(x)
    return x if math.isfinite(x) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None where either is missing or ``b`` is not positive."""
    return _num(a / b) if a is not None and b is not None and b > 0 else None


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float | None:
    """Spearman rank correlation (average ranks for ties); None if either side is constant."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman needs equal lengths, got {a.size} and {b.size}")
    if a.size < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    ra, rb = rankdata(a) - (a.size + 1) / 2, rankdata(b) - (b.size + 1) / 2
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return _num(float((ra * rb).sum()) / den) if den > 0 else None


def _rows(n: int, cap: int) -> torch.Tensor:
    """``cap`` evenly spaced indices of ``range(n)`` (all of them if ``n ≤ cap``)."""
    if n <= cap:
        return torch.arange(n, device="cpu")
    return torch.unique(torch.linspace(0, n - 1, cap, device="cpu").round().long())


def _forward(model: nn.Module, x: torch.Tensor, runtime: Runtime) -> Any:
    """``model(x)`` under the runtime's autocast; mean and log-variance in float32."""
    with runtime.autocast():
        pred = model(x)
    pred.mean, pred.log_var = pred.mean.float(), pred.log_var.float()
    return pred


@torch.no_grad()
def _predict(
    model: nn.Module, split: Split, rows: torch.Tensor, batch_size: int, runtime: Runtime = CPU
) -> dict[str, torch.Tensor]:
    """Predictions on ``split``'s samples ``rows``: mean, log_var, std, y, u, sigma (S, G),
    on the CPU."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("mean", "log_var", "y", "u", "sigma")}
    for start in range(0, len(rows), batch_size):
        batch = split.batch(rows[start : start + batch_size])
        pred = _forward(model, batch.x, runtime)
        for key, val in (
            ("mean", pred.mean),
            ("log_var", pred.log_var),
            ("y", batch.y),
            ("u", batch.u),
            ("sigma", batch.sigma),
        ):
            out[key].append(val.detach().float().cpu())
    res = {k: torch.cat(v) for k, v in out.items()}
    res["std"] = torch.exp(0.5 * res["log_var"])
    return res


def _scores(p: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Point and Gaussian scores of predictions ``p`` (see module docstring)."""
    per_sample_err = (p["mean"] - p["u"]).double().pow(2).mean(-1).sqrt()  # (S,)
    per_sample_std = p["std"].double().mean(-1)  # (S,)
    return {
        "samples": int(p["mean"].shape[0]),
        "nrmse": _num(M.nrmse(p["mean"], p["u"])),
        "rmse": _num(M.rmse(p["mean"], p["u"])),
        "nll": _num(M.gaussian_nll(p["y"], p["mean"], p["log_var"])),
        "coverage_90": _num(M.coverage(p["y"], p["mean"], p["std"], 0.9)),
        "std_pred": _num(per_sample_std.mean()),
        "std_true": _num(p["sigma"].double().mean()),
        "spearman_std_error": spearman(per_sample_std.numpy(), per_sample_err.numpy()),
        "_std": per_sample_std.numpy(),
        "_err": per_sample_err.numpy(),
    }


def evaluate_ood(
    model: nn.Module,
    test: Trajectories,
    sets: Mapping[str, Trajectories],
    *,
    window: int,
    batch_size: int = 256,
    max_samples: int = MAX_SAMPLES,
    skipped: Mapping[str, str] | None = None,
    runtime: Runtime = CPU,
) -> dict[str, Any]:
    """Score ``model`` (on ``runtime``'s device and precision) on the in-distribution
    ``test`` set and on each OOD set.

    Every (trajectory, t) sample of a set is scored, up to ``max_samples`` evenly
    spaced ones. Returns (JSON-serialisable; a non-finite number becomes None)::

        {"in_distribution": {samples, nrmse, rmse, nll, coverage_90, std_pred,
                             std_true, spearman_std_error},
         "conditions": [{"name", "shift", <the same scores>, "nrmse_ratio",
                         "rmse_ratio", "std_ratio", "error_grows", "sigma_grows",
                         "sigma_follows_error"}, …],
         "spearman_std_error": ρ pooled over the samples of all sets,
         "skipped": {name: reason}}

    ``error_grows`` is ``rmse_ratio > 1``, ``sigma_grows`` is ``std_ratio > 1`` and
    ``sigma_follows_error`` is ``error_grows → sigma_grows`` (σ̂ grows whenever the error
    does). ``shift`` comes from ``sets.shifts`` for :func:`ood_datasets` results (else
    it is parsed from the name); ``skipped`` defaults to ``sets.skipped``.
    The model is put in eval mode and its mode restored.
    """
    if max_samples < 1:
        raise ValueError(f"max_samples={max_samples} must be ≥ 1")
    shifts = getattr(sets, "shifts", {})
    skipped = dict(skipped if skipped is not None else getattr(sets, "skipped", {}))
    was_training = model.training
    model.eval()
    try:
        scored = {}
        for name, traj in [("in_distribution", test), *sets.items()]:
            split = Split(traj, window, runtime.device)
            scored[name] = _scores(
                _predict(model, split, _rows(len(split), max_samples), batch_size, runtime)
            )
    finally:
        model.train(was_training)

    def public(s: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in s.items() if not k.startswith("_")}

    ref = scored["in_distribution"]
    conditions = []
    for name in sets:
        s = scored[name]
        rmse_ratio = _ratio(s["rmse"], ref["rmse"])
        std_ratio = _ratio(s["std_pred"], ref["std_pred"])
        error_grows = rmse_ratio is not None and rmse_ratio > 1
        sigma_grows = std_ratio is not None and std_ratio > 1
        conditions.append(
            {
                "name": name,
                "shift": dict(shifts.get(name) or _shift_from_name(name)),
                **public(s),
                "nrmse_ratio": _ratio(s["nrmse"], ref["nrmse"]),
                "rmse_ratio": rmse_ratio,
                "std_ratio": std_ratio,
                "error_grows": error_grows,
                "sigma_grows": sigma_grows,
                "sigma_follows_error": (not error_grows) or sigma_grows,
            }
        )
    pooled = spearman(
        np.concatenate([s["_std"] for s in scored.values()]),
        np.concatenate([s["_err"] for s in scored.values()]),
    )
    return {
        "in_distribution": public(ref),
        "conditions": conditions,
        "spearman_std_error": pooled,
        "skipped": skipped,
    }


# ----------------------------------------------------------------------------- attacks


def _objective(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: str, runtime: Runtime
) -> torch.Tensor:
    """Per-sample attack objective J_b (B,): mean over the grid of the NLL or the SE."""
    pred = _forward(model, x, runtime)
    if objective == "nll":
        return gaussian_nll_points(y, pred.mean, pred.log_var).flatten(1).mean(-1)
    return (pred.mean - y).pow(2).flatten(1).mean(-1)


def _grad(j: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """∇ₓ Σ_b J_b, zeros where J does not depend on x; never touches parameter .grad."""
    if not j.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(j.sum(), x, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    method: Literal["fgsm", "pgd"],
    steps: int = 10,
    objective: Literal["nll", "mse"] = "nll",
    generator: torch.Generator | None = None,
    runtime: Runtime = CPU,
) -> torch.Tensor:
    """Adversarial window ``x + δ`` with ``‖δ_b‖∞ ≤ eps · RMS(x_b)`` (see module docstring).

    x: (B, w, G) noisy past frames; y: (B, G) the noisy next frame the attacker scores
    against. ``generator`` seeds PGD's random start (drawn on its device); the forward
    passes run under ``runtime``'s autocast. The model runs in eval mode during
    the attack (its mode is restored); gradients are taken w.r.t. the input only, so
    parameter ``.grad`` fields are left as they were. Returns a detached (B, w, G) tensor.
    """
    if method not in ("fgsm", "pgd"):
        raise ValueError(f"method={method!r}; allowed: 'fgsm', 'pgd'")
    if objective not in ("nll", "mse"):
        raise ValueError(f"objective={objective!r}; allowed: 'nll', 'mse'")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps={eps} must be a finite number ≥ 0")
    if steps < 1:
        raise ValueError(f"steps={steps} must be ≥ 1")
    x = x.detach()
    y = y.detach()
    radius = eps * x.flatten(1).pow(2).mean(-1).sqrt()  # (B,)
    radius = radius.view(-1, *([1] * (x.ndim - 1)))  # (B, 1, 1)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            if method == "fgsm":
                xa = x.clone().requires_grad_(True)
                g = _grad(_objective(model, xa, y, objective, runtime), xa)
                return (x + radius * g.sign()).detach()
            u = random_like(x, generator=generator)
            delta = (2 * u - 1) * radius
            step = 2.5 * radius / steps
            best, best_j = x + delta, None
            for k in range(steps + 1):
                xa = (x + delta).requires_grad_(True)
                j = _objective(model, xa, y, objective, runtime)  # (B,)
                jd = j.detach()
                if best_j is None:
                    best, best_j = xa.detach().clone(), jd.clone()
                else:
                    better = jd > best_j
                    best = torch.where(better.view_as(radius), xa.detach(), best)
                    best_j = torch.where(better, jd, best_j)
                if k == steps:
                    break
                g = _grad(j, xa)
                delta = torch.maximum(torch.minimum(delta + step * g.sign(), radius), -radius)
            return best.detach()
    finally:
        model.train(was_training)


def evaluate_adversarial(
    model: nn.Module,
    test: Trajectories,
    cfg: AdversarialConfig,
    *,
    window: int,
    batch_size: int = 256,
    seed: int = 0,
    runtime: Runtime = CPU,
) -> dict[str, Any]:
    """Scores on clean and on FGSM/PGD-attacked windows of ``cfg.samples`` test samples
    (``model`` on ``runtime``'s device and precision).

    The samples are a fixed subset of the test (trajectory, t) pairs drawn with
    ``seed`` (all of them if there are fewer); PGD's random starts are seeded from
    ``seed`` too. Returns (JSON-serialisable; non-finite numbers become None)::

        {"rows": [{"method": "none" | "fgsm" | "pgd", "eps", "nrmse", "rmse", "nll",
                   "coverage_90", "std_pred", "nrmse_ratio", "nll_delta"}, …],
         "samples": n}

    with ``nrmse_ratio = nrmse / nrmse_clean`` and ``nll_delta = nll − nll_clean``.
    """
    split = Split(test, window, runtime.device)
    g = torch.Generator().manual_seed(seed)
    n = min(cfg.samples, len(split))
    rows = torch.randperm(len(split), generator=g, device="cpu")[:n].sort().values
    batches = [split.batch(rows[s : s + batch_size]) for s in range(0, n, batch_size)]
    was_training = model.training
    model.eval()

    def score(xs: list[torch.Tensor]) -> dict[str, float | None]:
        with torch.no_grad():
            preds = [_forward(model, x, runtime) for x in xs]
        mean = torch.cat([p.mean.detach().cpu() for p in preds])
        log_var = torch.cat([p.log_var.detach().cpu() for p in preds])
        std = torch.exp(0.5 * log_var)
        u = torch.cat([b.u.cpu() for b in batches])
        y = torch.cat([b.y.cpu() for b in batches])
        return {
            "nrmse": _num(M.nrmse(mean, u)),
            "rmse": _num(M.rmse(mean, u)),
            "nll": _num(M.gaussian_nll(y, mean, log_var)),
            "coverage_90": _num(M.coverage(y, mean, std, 0.9)),
            "std_pred": _num(std.double().mean()),
        }

    try:
        clean = score([b.x for b in batches])
        result = [{"method": "none", "eps": 0.0, **clean, "nrmse_ratio": 1.0, "nll_delta": 0.0}]
        for method in ("fgsm", "pgd"):
            for eps in cfg.eps:
                pgd_gen = torch.Generator().manual_seed(seed + 1)
                xs = [
                    attack(
                        model,
                        b.x,
                        b.y,
                        eps=float(eps),
                        method=method,
                        steps=cfg.pgd_steps,
                        objective=cfg.objective,
                        generator=pgd_gen,
                        runtime=runtime,
                    )
                    for b in batches
                ]
                s = score(xs)
                a, b = s["nll"], clean["nll"]
                nll_delta = _num(a - b) if a is not None and b is not None else None
                result.append(
                    {
                        "method": method,
                        "eps": float(eps),
                        **s,
                        "nrmse_ratio": _ratio(s["nrmse"], clean["nrmse"]),
                        "nll_delta": nll_delta,
                    }
                )
    finally:
        model.train(was_training)
    return {"rows": result, "samples": n}
