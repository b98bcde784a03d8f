"""Classical state-space jobs: the island (control + filtering) and real series.

Two recipe tasks run here instead of the orchestra's training loop:

* ``task: series`` (recipes ``nile``, ``lynx``): read a real series offline →
  fit the local-level model by exact-diffuse maximum likelihood, and/or an LTI
  model by N4SID and by EM → filter, smooth and forecast with 90 % bands →
  residual diagnostics → run directory.
* ``task: island`` (recipe ``island``): the seed's fish-and-pelicans system →
  eigenvalues (boom and bust) → LQR state feedback from the continuous Riccati
  equation → simulate free, LQR and LQG (LQR on the Kalman estimate) → Kalman
  filter and RTS smoother recovering the populations from four noisy sensors →
  run directory.

Both write the usual run directory (``config.yaml``, ``command.txt``,
``metrics.json``, ``examples.safetensors``, ``report.html`` and its PNGs); the
arrays for the plots go to ``examples.safetensors``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import json_safe
from ..config import IslandRecipe, SeriesRecipe
from ..data.real import Series, load_series
from ..data.systems import island_system, simulate_island
from ..errors import ConfigError
from ..filters.diagnostics import residual_diagnostics
from ..filters.kalman import LinearGaussian, kalman_filter, rts_smoother
from ..filters.learn import fit_em, fit_local_level
from ..filters.lti import LinearSSM
from ..filters.subspace import n4sid
from ..runs import Event, EventFn, close_run, no_event, open_run
from ..runtime import on_cpu
from .base import Job

Z90 = 1.6448536269514722  # two-sided 90 % normal quantile


def _start_run(recipe: IslandRecipe | SeriesRecipe, out: Path, command: str) -> None:
    open_run(recipe, out, resume=False, command=command)


def _finish_run(out: Path, metrics: dict[str, Any], examples: dict[str, torch.Tensor]) -> None:
    arrays = {k: v.detach().to(torch.float64).clone().contiguous() for k, v in examples.items()}
    close_run(out, metrics, examples=arrays, announce=False)


def _modes(A: torch.Tensor, dt: float | None) -> list[dict[str, Any]]:
    """Eigenvalues of ``A`` (discrete with step ``dt``, or continuous) as JSON rows."""
    return [
        {
            "real": mo.eigenvalue.real,
            "imag": mo.eigenvalue.imag,
            "modulus": abs(mo.eigenvalue),
            "growth_rate": mo.growth_rate,
            "period": mo.period,
            "doubling_time": mo.doubling_time,
            "half_life": mo.half_life,
            "kind": mo.kind,
        }
        for mo in LinearSSM(torch.as_tensor(A, dtype=torch.float64), dt=dt).modes()
    ]


# --------------------------------------------------------------------- series


def _bands(mean: torch.Tensor, var: torch.Tensor) -> dict[str, torch.Tensor]:
    std = var.clamp_min(0).sqrt()
    return {"mean": mean, "lo": mean - Z90 * std, "hi": mean + Z90 * std}


def _track(
    prefix: str,
    model: LinearGaussian,
    y: torch.Tensor,
    horizon: int,
    examples: dict[str, torch.Tensor],
    offset: float = 0.0,
    **init: Any,
) -> tuple[Any, torch.Tensor]:
    """Filter + smooth ``y`` and forecast ``horizon`` steps; store the bands for the plots.

    The forecast is the filter run on ``horizon`` appended missing values: its
    predictions there are exactly the multi-step forecasts and their variances.
    ``offset`` is added back to every mean (models fitted to a centred series).
    Returns the filter result and the standardised one-step residuals.
    """
    ext = torch.cat([y - offset, torch.full((horizon,), math.nan, dtype=y.dtype)])[:, None]
    filt = kalman_filter(model, ext, **init)
    smooth = rts_smoother(model, filt)
    C = model.C.to(torch.float64).reshape(1, -1)
    R = float(model.R.reshape(-1)[0])

    def observed(mean: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = (mean[0] @ C.T)[:, 0] + offset
        v = torch.einsum("pn,tnk,pk->t", C, cov[0], C)
        return m, v

    T = y.shape[0]
    fm, fv = observed(filt.mean, filt.cov)
    sm, sv = observed(smooth.mean, smooth.cov)
    pm, pv = observed(filt.pred_mean, filt.pred_cov)
    for name, (m, v) in {"filtered": (fm, fv), "smoothed": (sm, sv)}.items():
        for k, t in _bands(m[:T], v[:T]).items():
            examples[f"{prefix}.{name}.{k}"] = t
    if horizon:
        for k, t in _bands(pm[T:], pv[T:] + R).items():
            examples[f"{prefix}.forecast.{k}"] = t
    v = filt.innovation[0, :T, 0]
    F = filt.innovation_cov[0, :T, 0, 0]
    e = v / F.clamp_min(1e-300).sqrt()
    e[: filt.diffuse_steps] = math.nan
    examples[f"{prefix}.residuals"] = e
    return filt, e


def _diagnostics(e: torch.Tensor) -> dict[str, float]:
    d = residual_diagnostics(e.numpy())
    return {
        "ljung_box": d.ljung_box,
        "ljung_box_p": d.ljung_box_p,
        "heteroscedasticity": d.heteroscedasticity,
        "heteroscedasticity_p": d.heteroscedasticity_p,
        "jarque_bera": d.jarque_bera,
        "jarque_bera_p": d.jarque_bera_p,
    }


def _series_data(recipe: SeriesRecipe) -> Series:
    d = recipe.data
    return load_series(
        source=d.source,
        name=d.name,
        package=d.package,
        path=d.path,
        column=d.column,
        time_column=d.time_column,
        transform=d.transform,
        missing=d.missing,
    )


def run_series(
    recipe: SeriesRecipe, out: Path, *, command: str = "", on_event: EventFn = no_event
) -> dict[str, Any]:
    """Fit the recipe's classical models to one real series and write the run directory."""
    series = _series_data(recipe)  # bad data fails before anything is written
    on_event(
        Event.DATA,
        {
            "source": series.source,
            "sizes": {"values": len(series)},
            "seconds": 0.0,
            "out": str(out),
        },
    )
    _start_run(recipe, out, command)
    y = torch.as_tensor(series.y, dtype=torch.float64)
    step = float(np.median(np.diff(series.t))) if len(series) > 1 else 1.0
    horizon = recipe.forecast
    examples: dict[str, torch.Tensor] = {
        "t": torch.as_tensor(series.t, dtype=torch.float64),
        "y": y,
        "t_forecast": torch.as_tensor(
            series.t[-1] + step * np.arange(1, horizon + 1), dtype=torch.float64
        ),
    }
    models: dict[str, dict[str, Any]] = {}
    extra: dict[str, Any] = {}
    m = recipe.models
    # The LTI models (N4SID, EM) have no intercept: they describe the series about its mean.
    centre = float(np.nanmean(series.y))
    identified: LinearGaussian | None = None

    if m.local_level:
        on_event(Event.FIT, {"model": "local_level"})
        fit = fit_local_level(series.y, init="diffuse", burn=1)
        model = LinearGaussian(
            A=torch.ones(1, 1, dtype=torch.float64),
            C=torch.ones(1, 1, dtype=torch.float64),
            Q=torch.full((1, 1), float(fit.sigma2_eta), dtype=torch.float64),
            R=torch.full((1, 1), float(fit.sigma2_eps), dtype=torch.float64),
        )
        filt, e = _track("local_level", model, y, horizon, examples, init="diffuse", burn=1)
        models["local_level"] = {
            "sigma2_eps": float(fit.sigma2_eps),
            "sigma2_eta": float(fit.sigma2_eta),
            "signal_to_noise": float(fit.sigma2_eta) / float(fit.sigma2_eps),
            "loglik": float(fit.loglik),
            "loglik_filter": float(filt.loglik[0]),
            "aic": -2 * float(fit.loglik) + 2 * 2,
            "fit_seconds": float(fit.seconds),
            "iterations": float(fit.iterations),
            **_diagnostics(e),
        }

    if m.n4sid:
        on_event(Event.FIT, {"model": "n4sid"})
        if not np.isfinite(series.y).all():
            extra["n4sid_skipped"] = "N4SID needs a complete series; this one has missing values"
        else:
            started = time.perf_counter()
            sub = n4sid(
                series.y[:, None] - centre, order=m.n4sid_states, horizon=m.horizon, dt=step
            )
            seconds = time.perf_counter() - started
            identified = sub.model()
            # the (n+p)-state form keeps the noise cross-covariance S of the innovations form
            model = sub.model(augment=True)
            filt, e = _track(
                "n4sid",
                model,
                y,
                horizon,
                examples,
                offset=centre,
                init="approximate_diffuse",
                burn=sub.order,
            )
            models["n4sid"] = {
                "order": float(sub.order),
                "loglik": float(filt.loglik[0]),
                "fit_seconds": seconds,
                **_dominant_period(model.A, step),
                **_diagnostics(e),
            }
            sv = torch.as_tensor(np.asarray(sub.singular_values, dtype=np.float64))
            examples["n4sid.singular_values"] = sv
            extra["n4sid_modes"] = _modes(model.A, step)

    if m.em_states:
        on_event(Event.FIT, {"model": "em"})
        started = time.perf_counter()
        # EM refines the N4SID model when there is one of the same order (a good start
        # matters: EM climbs to the nearest local maximum)
        start = (
            identified if identified is not None and identified.A.shape[-1] == m.em_states else None
        )
        em = fit_em(
            series.y[:, None] - centre,
            m.em_states,
            init_model=start,
            max_iter=m.em_iters,
            seed=recipe.seed,
        )
        seconds = time.perf_counter() - started
        filt, e = _track(
            "em",
            em.model,
            y,
            horizon,
            examples,
            offset=centre,
            init="known",
            init_mean=em.init_mean,
            init_cov=em.init_cov,
        )
        history = torch.as_tensor(em.loglik_history, dtype=torch.float64)
        examples["em.loglik_history"] = history
        models["em"] = {
            "states": float(m.em_states),
            "loglik": float(filt.loglik[0]),
            "iterations": float(em.iterations),
            "converged": float(bool(em.converged)),
            "loglik_never_decreased": float(
                bool((history.diff() >= -1e-8 * history.abs()[1:].clamp_min(1.0)).all())
            ),
            "fit_seconds": seconds,
            **_dominant_period(em.model.A, step),
            **_diagnostics(e),
        }
        extra["em_modes"] = _modes(em.model.A, step)

    metrics = {
        "task": "series",
        "recipe": recipe.name,
        "description": recipe.description,
        "data": {
            "series": series.name,
            "source": series.source,
            "length": len(series),
            "observed": series.observed,
            "transform": series.transform,
            "start": float(series.t[0]),
            "end": float(series.t[-1]),
            "forecast_steps": horizon,
            "mean": centre,
        },
        "models": models,
        **extra,
    }
    _finish_run(out, metrics, examples)
    return metrics


def _dominant_period(A: torch.Tensor, dt: float) -> dict[str, float]:
    """Period and modulus of the slowest-decaying oscillating mode (NaN when none)."""
    modes = [mo for mo in _modes(A, dt) if mo["period"] is not None]
    if not modes:
        return {"period": math.nan, "modulus": math.nan}
    top = max(modes, key=lambda mo: mo["modulus"])
    return {"period": float(top["period"]), "modulus": float(top["modulus"])}


# --------------------------------------------------------------------- island


def _trajectory(states: torch.Tensor, inputs: torch.Tensor | None = None) -> dict[str, float]:
    norm = states.norm(dim=-1)
    row = {
        "start_deviation": float(norm[0]),
        "final_deviation": float(norm[-1]),
        "peak_deviation": float(norm.max()),
        "final_over_start": float(norm[-1] / norm[0].clamp_min(1e-300)),
    }
    if inputs is not None:
        row["input_rms"] = float(inputs.pow(2).mean().sqrt())
    return row


def _estimate_scores(
    truth: torch.Tensor, mean: torch.Tensor, var: torch.Tensor | None
) -> dict[str, float]:
    err = mean - truth
    row = {f"rmse_{name}": float(err[:, j].pow(2).mean().sqrt()) for j, name in enumerate(STATES)}
    if var is not None:
        inside = err.abs() <= Z90 * var.clamp_min(0).sqrt()
        row["coverage_90"] = float(inside.double().mean())
    return row


STATES = ("fish", "pelicans")


def run_island(
    recipe: IslandRecipe, out: Path, *, command: str = "", on_event: EventFn = no_event
) -> dict[str, Any]:
    """The seed's island: eigenvalues, LQR, and Kalman filtering from four noisy sensors."""
    c = recipe.island
    system = island_system(process_noise=c.process_noise, sensor_noise=c.sensor_noise)
    _start_run(recipe, out, command)
    tr, det = float(system.A.trace()), float(torch.linalg.det(system.A))
    disc = tr * tr / 4 - det
    root = math.sqrt(abs(disc))
    analytic = (
        [complex(tr / 2, root), complex(tr / 2, -root)]
        if disc < 0
        else [complex(tr / 2 + root, 0), complex(tr / 2 - root, 0)]
    )
    control = system.lqr(torch.diag(torch.tensor(c.lqr.q, dtype=torch.float64)), [[c.lqr.r]])
    closed = system.with_feedback(control.K)
    sim = {
        "steps": c.steps,
        "dt": c.dt,
        "h0": c.h0,
        "process_noise": c.process_noise,
        "sensor_noise": c.sensor_noise,
        "seed": recipe.seed,
    }
    on_event(Event.SIMULATE, {"what": "no control, LQR and LQR on the Kalman estimate"})
    free = simulate_island(controller=None, **sim)
    lqr_run = simulate_island(controller=control.K, **sim)
    plant = lqr_run.system  # discretised: A_d, B_d, C, Q_d (Van Loan), R
    model = LinearGaussian(A=plant.A, C=plant.C, Q=plant.Q, R=plant.R, B=plant.B)
    prior_mean = torch.zeros(2, dtype=torch.float64)
    prior_cov = torch.eye(2, dtype=torch.float64) * 100.0  # populations unknown at first

    class _LQG:
        """Certainty equivalence: update the Kalman belief with y_k, act u = −K ĥ, predict."""

        def __init__(self) -> None:
            self.mean, self.cov = prior_mean.clone(), prior_cov.clone()

        def __call__(self, y: torch.Tensor) -> torch.Tensor:
            no_input = torch.zeros(1, plant.m, dtype=torch.float64)  # the update ignores u
            f = kalman_filter(model, y[None, :], u=no_input, init_mean=self.mean, init_cov=self.cov)
            m, P = f.mean[0, 0], f.cov[0, 0]
            u = -(control.K @ m)
            self.mean = plant.A @ m + plant.B @ u
            self.cov = plant.A @ P @ plant.A.T + plant.Q
            return u

    lqg_run = simulate_island(controller=_LQG(), **sim)

    on_event(Event.FIT, {"model": "Kalman filter and RTS smoother on the LQR run"})
    started = time.perf_counter()
    filt = kalman_filter(
        model, lqr_run.sensors, u=lqr_run.inputs, init_mean=prior_mean, init_cov=prior_cov
    )
    smooth = rts_smoother(model, filt, u=lqr_run.inputs)
    filter_seconds = time.perf_counter() - started
    diag_f = torch.diagonal(filt.cov[0], dim1=-2, dim2=-1)
    diag_s = torch.diagonal(smooth.cov[0], dim1=-2, dim2=-1)
    least_squares = torch.linalg.lstsq(plant.C, lqr_run.sensors.T).solution.T

    models = {
        "free": _trajectory(free.states),
        "lqr": _trajectory(lqr_run.states, lqr_run.inputs),
        "lqg": _trajectory(lqg_run.states, lqg_run.inputs),
        "filter": _estimate_scores(lqr_run.states, filt.mean[0], diag_f),
        "smoother": _estimate_scores(lqr_run.states, smooth.mean[0], diag_s),
        "lstsq": _estimate_scores(lqr_run.states, least_squares, None),
    }
    open_modes = _modes(system.A, None)
    for mo, lam in zip(sorted(open_modes, key=lambda r: -r["imag"]), analytic, strict=True):
        mo["analytic_real"], mo["analytic_imag"] = lam.real, lam.imag
    metrics = {
        "task": "island",
        "recipe": recipe.name,
        "description": recipe.description,
        "data": {**{k: v for k, v in sim.items() if k != "h0"}, "h0": list(c.h0)},
        "models": models,
        "open_loop_modes": open_modes,
        "closed_loop_modes": _modes(closed.A, None),
        "lqr": {
            "K_fish": float(control.K[0, 0]),
            "K_pelicans": float(control.K[0, 1]),
            "q": list(c.lqr.q),
            "r": c.lqr.r,
        },
        "kalman": {"filter_seconds": filter_seconds, "loglik": float(filt.loglik[0])},
        "stability": {"open_loop": system.stability(), "closed_loop": closed.stability()},
    }
    for mo in open_modes:
        on_event(
            Event.NOTE,
            {
                "text": f"eigenvalue of A: {mo['real']:.4f} {mo['imag']:+.4f}i ({mo['kind']}, "
                f"period {mo['period']:.2f}, doubling time {mo['doubling_time']:.2f}); "
                f"analytic {mo['analytic_real']:.4f} {mo['analytic_imag']:+.4f}i"
            },
        )
    lam = closed.modes()[0].eigenvalue
    closed_loop = f"LQR closed loop: {lam.real:.4f} ± {abs(lam.imag):.4f}i (stable)"
    on_event(Event.NOTE, {"text": closed_loop})

    def pack(prefix: str, mean: torch.Tensor, var: torch.Tensor) -> None:
        sd = var.clamp_min(0).sqrt()
        examples[f"{prefix}.mean"] = mean
        examples[f"{prefix}.lo"] = mean - Z90 * sd
        examples[f"{prefix}.hi"] = mean + Z90 * sd

    def eig_rows(values: torch.Tensor) -> torch.Tensor:
        v = torch.as_tensor(values).to(torch.complex128)
        return torch.stack([v.real, v.imag], dim=1)

    examples: dict[str, torch.Tensor] = {
        "t": lqr_run.t,
        "free.states": free.states,
        "lqr.states": lqr_run.states,
        "lqg.states": lqg_run.states,
        "truth": lqr_run.states,
        "sensors": lqr_run.sensors,
        "least_squares": least_squares,
        "open_loop.eig": eig_rows(torch.linalg.eigvals(system.A)),
        "closed_loop.eig": eig_rows(control.closed_loop_eigenvalues),
    }
    pack("kalman.filtered", filt.mean[0], diag_f)
    pack("kalman.smoothed", smooth.mean[0], diag_s)
    _finish_run(out, json_safe(metrics), examples)
    return metrics


def run_classical(
    recipe: IslandRecipe | SeriesRecipe,
    out: Path,
    *,
    command: str = "",
    on_event: EventFn = no_event,
) -> dict[str, Any]:
    """Run a classical recipe (``task: island`` or ``task: series``) into ``out``.

    Its fits are float64 linear algebra on NumPy/SciPy solvers (Riccati equations, SVDs,
    EM on a few hundred points): they run on the CPU, in float64. ``runtime.device: auto``
    is the CPU here; ``cuda`` or ``bf16`` is a ConfigError.
    """
    rt = recipe.runtime
    if rt.device.startswith("cuda") or rt.precision != "fp32":
        raise ConfigError(
            f"{recipe.task} recipes ({recipe.name}) are fitted on the CPU in float64 "
            f"(NumPy/SciPy solvers); runtime.device={rt.device}, runtime.precision="
            f"{rt.precision} are not supported here: use --device cpu (or auto) and fp32"
        )
    with on_cpu():
        if isinstance(recipe, IslandRecipe):
            return run_island(recipe, out, command=command, on_event=on_event)
        return run_series(recipe, out, command=command, on_event=on_event)


def evaluate_classical(
    recipe: IslandRecipe | SeriesRecipe, run_dir: Path, *, on_event: EventFn = no_event
) -> dict[str, Any]:
    """A classical run is simply fitted again in place (seconds)."""
    return run_classical(recipe, run_dir, on_event=on_event)


def _run(
    recipe: IslandRecipe | SeriesRecipe,
    out: Path,
    *,
    resume: bool = False,
    command: str = "",
    on_event: EventFn = no_event,
) -> dict[str, Any]:
    # nothing to resume: a classical fit takes seconds and is simply done again
    return run_classical(recipe, out, command=command, on_event=on_event)


JOB = Job(
    tasks=("island", "series"),
    run=_run,
    evaluate=evaluate_classical,
    nothing_to_load="is a {task} run of recipe {name!r}: it has no trained models to load "
    "(its fitted parameters are in metrics.json)",
)
