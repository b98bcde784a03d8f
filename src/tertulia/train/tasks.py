"""Tasks bind a dataset to a model: what a batch is, what the loss is, how to judge.

The trainer only knows the :class:`Task` protocol (every member it uses is listed
there; :class:`TaskBase` gives the defaults), so new capabilities plug in without
touching the loop.

:class:`ForecastTask` — next-frame forecasting of a noisy 1-D field. A sample
is a trajectory b and a time t ≥ w−1: input the noisy frames
``y[b, t−w+1 … t]``, target the noisy frame ``y[b, t+1]``. The loss is eq. (4):

    L = (1/n) Σ_i λ_i ℓ_i + γ R(S) + κ mean‖S‖²

with ℓ_i the heteroscedastic Gaussian NLL of eq. (5) on cell i's patch,
``½[(y−μ)²/σ² + log σ²]`` (or β-NLL: each point's term weighted by
``stop_grad(σ^{2β})``, Seitzer et al. 2022), R the neighbour-agreement term the
orchestra reports and κ the optional state-norm weight.

Judging: point errors (nRMSE, RMSE) are measured against the *clean* field u,
since that is the truth a forecaster wants; probabilistic scores (NLL, CRPS,
coverage, calibration) against the *noisy* observation y, since the
predictive distribution is a distribution over observations; σ-recovery
compares the predicted σ with the known noise σ.

Legend: B batch, w window, G grid, T frames, K rollout steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import metrics as M
from ..config import EvalConfig, ForecastTrainConfig
from ..nn.orchestra import Orchestra
from ..runtime import CPU, Runtime
from ..solvers import SolverTrace
from ..stability import contraction_factor, jacobian_frobenius
from .blocks import BlockPlan, CellLayout

LOG_2PI = 1.8378770664093453


@runtime_checkable
class Task(Protocol):
    """Everything the trainer asks of a task, and nothing else.

    ``model`` is the module trained (moved to ``runtime.device``; ``loss`` runs under
    ``runtime.autocast()``). ``loss`` must run its forward through ``forward_module``,
    the module :meth:`set_forward_module` last named (the model itself by default; the
    trainer names its ``DistributedDataParallel`` wrapper when several processes
    train). :class:`TaskBase` implements every member but ``model``,
    ``sample_batch`` and ``loss``.
    """

    model: nn.Module
    runtime: Runtime

    def sample_batch(self, generator: torch.Generator) -> Any:
        """The next training batch, drawn with ``generator`` (whose state is checkpointed)."""
        ...

    def loss(self, batch: Any, step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss and logs of one batch; ``step`` counts from 1 (the step being taken)."""
        ...

    def after_backward(self) -> dict[str, float]:
        """Logs known only once the backward pass has run (e.g. adjoint-solve statistics)."""
        ...

    def validation_nll(self) -> float:
        """A lower-is-better validation score (what ``runs.fit_in_run`` checkpoints by)."""
        ...

    def block_plan(self) -> BlockPlan | None:
        """Which of the model's nodes learn at each step (block training), or None: every
        parameter learns at every step."""
        ...

    def set_forward_module(self, module: nn.Module | None) -> None:
        """Run training forwards through ``module`` (None: through ``model`` again)."""
        ...

    def training_summary(self, means: dict[str, float]) -> dict[str, float]:
        """What the training summary reports, from ``means``: the mean over training of
        every numeric log value (each over the steps that logged it)."""
        ...


class TaskBase:
    """Defaults of the :class:`Task` protocol; a task defines ``model``, ``sample_batch``
    and ``loss`` and calls ``self.forward_module`` in ``loss``.

    Defaults: runs on the CPU in fp32, no after-backward logs, no validation score
    (:meth:`validation_nll` raises NotImplementedError), no block training, no
    training summary of its own.
    """

    model: nn.Module
    runtime: Runtime = CPU
    _forward: nn.Module | None = None

    @property
    def forward_module(self) -> nn.Module:
        """The module training forwards go through: ``model`` or the trainer's wrapper."""
        return self.model if self._forward is None else self._forward

    def set_forward_module(self, module: nn.Module | None) -> None:
        """Run training forwards through ``module`` (None: through ``model``)."""
        self._forward = module

    def after_backward(self) -> dict[str, float]:
        """No logs after the backward pass."""
        return {}

    def validation_nll(self) -> float:
        """No validation score: NotImplementedError (pass the trainer a ``validate``)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no validation_nll(); give the trainer a validate callable"
        )

    def block_plan(self) -> BlockPlan | None:
        """No block training."""
        return None

    def training_summary(self, means: dict[str, float]) -> dict[str, float]:
        """Nothing beyond the trainer's own statistics."""
        return {}


@dataclass
class Batch:
    x: torch.Tensor  # (B, w, G) noisy past frames
    y: torch.Tensor  # (B, G) noisy next frame
    u: torch.Tensor  # (B, G) clean next frame
    sigma: torch.Tensor  # (B, G) true noise std of y


class Split:
    """Tensors of one split (on ``device``) and the (trajectory, time) index of its samples."""

    def __init__(self, traj: Any, window: int, device: torch.device | str = "cpu"):
        def tensor(a: Any) -> torch.Tensor:
            return torch.as_tensor(a, dtype=torch.float32, device=device)

        self.y, self.u, self.sigma = tensor(traj.y), tensor(traj.u), tensor(traj.sigma)
        n, frames, _ = self.y.shape
        self.window = window
        times = torch.arange(window - 1, frames - 1, device=device)
        self.index = torch.stack(
            [torch.arange(n, device=device).repeat_interleave(len(times)), times.repeat(n)], dim=1
        )  # (S, 2)

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, rows: torch.Tensor) -> Batch:
        """The samples ``rows`` (on any device) as a batch on this split's device."""
        rows = rows.to(self.index.device)
        b, t = self.index[rows, 0], self.index[rows, 1]
        offsets = torch.arange(-self.window + 1, 1, device=rows.device)
        x = self.y[b[:, None], t[:, None] + offsets]  # (B, w, G)
        return Batch(x=x, y=self.y[b, t + 1], u=self.u[b, t + 1], sigma=self.sigma[b, t + 1])


def gaussian_nll_points(y: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Per-point ``½[(y−μ)² e^{−lv} + lv]`` (eq. 5, without the constant)."""
    return 0.5 * ((y - mean).pow(2) * torch.exp(-log_var) + log_var)


class ForecastTask(TaskBase):
    """Next-frame forecasting with a Gaussian predictive distribution.

    The model and the splits go to ``runtime.device``; the forward passes of
    judging run under ``runtime.autocast()`` (training's run under the trainer's)
    and their outputs come back to the CPU in float32 for the metrics.
    """

    def __init__(
        self,
        model: nn.Module,
        splits: dict[str, Any],
        *,
        window: int,
        train: ForecastTrainConfig,
        cells: int = 1,
        runtime: Runtime = CPU,
    ):
        self.runtime = runtime
        self.model = runtime.place(model)
        self.cfg = train
        self.window = window
        self.splits = {name: Split(traj, window, runtime.device) for name, traj in splits.items()}
        self.cells = cells
        weights = train.cell_weights or [1.0] * cells
        self.cell_weights = torch.tensor(weights, dtype=torch.float32, device=runtime.device)
        self._last_solver: SolverTrace | None = None

    def forward(self, x: torch.Tensor) -> Any:
        """The model's prediction for ``x`` (moved to the device) under the runtime's
        autocast, its mean and log-variance in float32."""
        with self.runtime.autocast():
            pred = self.model(x.to(self.runtime.device))
        pred.mean, pred.log_var = pred.mean.float(), pred.log_var.float()
        return pred

    # ----------------------------------------------------------------- training

    def sample_batch(self, generator: torch.Generator) -> Batch:
        split = self.splits["train"]
        rows = torch.randint(
            len(split), (self.cfg.batch_size,), generator=generator, device=generator.device
        )
        return split.batch(rows)

    def loss(self, batch: Batch, step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. (4) plus the optional Jacobian penalty ``jac_reg · ‖∂F/∂S‖_F² / D`` at S*.

        Logs ``loss``, the objective minimised (β-NLL weights, λ_i, penalties included),
        and ``nll``, the plain Gaussian NLL of the batch per point (with ½ log 2π, as
        :meth:`validation_nll`), so training and validation curves compare.
        """
        pred = self.forward_module(batch.x)
        mean, log_var = pred.mean.float(), pred.log_var.float()  # the NLL in float32
        nll_points = gaussian_nll_points(batch.y, mean, log_var)  # (B, G)
        # the log's "nll" is the plain Gaussian NLL of the batch (what val_nll measures);
        # "loss" is the objective minimised (β- and λ-weighted, plus the penalties)
        logs = {"nll": float(nll_points.detach().mean()) + 0.5 * LOG_2PI}
        per_point = nll_points
        if self.cfg.loss == "beta_nll":
            per_point = per_point * log_var.detach().mul(self.cfg.beta).exp()
        b, g = per_point.shape
        per_cell = per_point.reshape(b, self.cells, g // self.cells).mean(dim=(0, 2))  # (n,)
        data_loss = (self.cell_weights * per_cell).sum() / self.cells
        loss = data_loss
        if "consistency" in pred.aux and self.cfg.consistency > 0:
            loss = loss + self.cfg.consistency * pred.aux["consistency"]
            logs["consistency"] = float(pred.aux["consistency"].detach())
        if "state_norm" in pred.aux and self.cfg.state_norm > 0:
            loss = loss + self.cfg.state_norm * pred.aux["state_norm"]
        if pred.trace is not None:
            st = pred.trace.solver
            logs["residual"] = st.residuals[-1]
            logs["rounds"] = float(st.rounds)
            logs["iterations"] = st.iterations_mean
            logs["unconverged"] = st.unconverged / b
            self._last_solver = st
            loss = loss + self._stability_terms(pred.trace, step, logs)
        logs["loss"] = float(loss.detach())
        return loss, logs

    def _stability_terms(self, trace: Any, step: int, logs: dict[str, float]) -> torch.Tensor:
        cfg, f, state = self.cfg, trace.round_map, trace.solver.state
        penalty = torch.zeros((), device=self.runtime.device)
        if f is None or state is None:
            return penalty
        with parametrize.cached():  # bounded weights computed once for all probes
            if cfg.jac_reg > 0 and step % cfg.jac_reg_every == 0:
                jac = jacobian_frobenius(f, state, samples=cfg.jac_reg_samples)
                penalty = cfg.jac_reg * jac
                logs["jac_reg"] = float(jac.detach())
            if cfg.rho_every and step % cfg.rho_every == 0:
                logs["rho"] = float(contraction_factor(f, state, iters=10).mean())
        return penalty

    def after_backward(self) -> dict[str, float]:
        """Adjoint-solve statistics of the last step (implicit differentiation only)."""
        st, self._last_solver = self._last_solver, None
        if st is None or not st.backward:
            return {}
        return {
            "backward_iterations": st.backward["iterations"],
            "backward_residual": st.backward["residual"],
            "backward_converged": st.backward["converged"],
        }

    def block_plan(self) -> BlockPlan | None:
        """``train.blocks`` over an orchestra's cells, coordinator and memory slots; None
        for ``kind: none`` and for models without per-node parameters (baselines)."""
        if not isinstance(self.model, Orchestra):
            return None
        cells = CellLayout.of(
            self.model, nodes=self.model.graph.nodes, per_cell=self.model.per_cell_parameters()
        )
        return BlockPlan.from_config(cells, self.cfg.blocks)

    def training_summary(self, means: dict[str, float]) -> dict[str, float]:
        """Solver statistics over training: mean forward iterations, the fraction of
        samples whose solve did not converge, mean adjoint iterations (when logged)."""
        out: dict[str, float] = {}
        if "iterations" in means:
            out["forward_iterations_mean"] = means["iterations"]
            out["unconverged_fraction"] = means.get("unconverged", 0.0)
        if "backward_iterations" in means:
            out["backward_iterations_mean"] = means["backward_iterations"]
        return out

    def validation_nll(self, *, max_samples: int = 2048) -> float:
        """Mean Gaussian NLL on (at most ``max_samples`` of) the validation split."""
        split = self.splits["val"]
        rows = torch.arange(min(len(split), max_samples), device=self.runtime.device)
        with torch.no_grad():
            batch = split.batch(rows)
            pred = self.forward(batch.x)
            return (
                float(gaussian_nll_points(batch.y, pred.mean, pred.log_var).mean()) + 0.5 * LOG_2PI
            )

    # --------------------------------------------------------------- evaluation

    @torch.no_grad()
    def predict(self, split_name: str, *, batch_size: int, rho_iters: int = 0) -> dict[str, Any]:
        """One-step predictions for every sample of a split, plus trace summaries.

        With ``rho_iters > 0`` the contraction factor ρ = ‖∂F/∂S‖₂ at each
        sample's final state is estimated by that many power iterations.
        """
        split = self.splits[split_name]
        was_training = self.model.training
        self.model.eval()
        out: dict[str, list] = {k: [] for k in ("mean", "std", "y", "u", "sigma")}
        rounds, residual_curves, attentions, messages = [], [], [], []
        iterations, converged, rhos = [], [], []
        rho_gen = torch.Generator().manual_seed(0)  # same start vectors: eval is repeatable
        device = self.runtime.device
        try:
            for start in range(0, len(split), batch_size):
                rows = torch.arange(start, min(start + batch_size, len(split)), device=device)
                batch = split.batch(rows)
                pred = self.forward(batch.x)
                for key, val in (
                    ("mean", pred.mean),
                    ("std", pred.std),
                    ("y", batch.y),
                    ("u", batch.u),
                    ("sigma", batch.sigma),
                ):
                    out[key].append(val.cpu())
                if pred.trace is not None:
                    w = len(rows)
                    rounds.append((pred.trace.rounds, w))
                    residual_curves.append((pred.trace.residuals, w))
                    attentions.append((pred.trace.attention, w))
                    messages.append((pred.trace.messages, w))
                    st = pred.trace.solver
                    if st.iterations is not None:
                        iterations.append(st.iterations.cpu())
                        converged.append(st.sample_converged.cpu())
                    if rho_iters and pred.trace.round_map is not None and st.state is not None:
                        with parametrize.cached():  # ρ in full precision, outside autocast
                            rho = contraction_factor(
                                pred.trace.round_map,
                                st.state.float(),
                                iters=rho_iters,
                                generator=rho_gen,
                            )
                        rhos.append(rho.float().cpu())
        finally:
            self.model.train(was_training)
        result: dict[str, Any] = {k: torch.cat(v) for k, v in out.items()}
        if rounds:
            total = sum(w for _, w in rounds)
            result["rounds_mean"] = sum(r * w for r, w in rounds) / total
            result["messages_per_prediction"] = sum(m * w for m, w in messages) / total
            result["attention"] = sum(a * w for a, w in attentions) / total
            longest = max(len(c) for c, _ in residual_curves)
            curve = []
            for r in range(longest):
                vals = [(c[r], w) for c, w in residual_curves if len(c) > r]
                curve.append(sum(v * w for v, w in vals) / sum(w for _, w in vals))
            result["residual_per_round"] = curve
            result["residual_final"] = sum(c[-1] * w for c, w in residual_curves) / total
        if iterations:
            result["iterations"] = torch.cat(iterations)
            result["converged"] = torch.cat(converged)
        if rhos:
            result["rho"] = torch.cat(rhos)
        return result

    @torch.no_grad()
    def rollout(self, split_name: str, *, steps: int, batch_size: int) -> dict[str, torch.Tensor]:
        """K-step autoregressive rollout from the first full window of every trajectory.

        The window starts with noisy observations and is then fed the model's
        own means. Returns per-step nRMSE (K,) against the clean field and the
        mean trajectory (N, K, G).
        """
        split = self.splits[split_name]
        n, frames, _ = split.y.shape
        t0 = self.window - 1
        steps = min(steps, frames - 1 - t0)
        was_training = self.model.training
        self.model.eval()
        means = []
        try:
            for start in range(0, n, batch_size):
                window = split.y[start : start + batch_size, : t0 + 1]
                window = window[:, -self.window :]
                seq = []
                for _ in range(steps):
                    mu = self.forward(window).mean
                    seq.append(mu)
                    window = torch.cat([window[:, 1:], mu[:, None]], dim=1)
                means.append(torch.stack(seq, dim=1).cpu())
        finally:
            self.model.train(was_training)
        mean = torch.cat(means)  # (N, K, G)
        truth = split.u[:, t0 + 1 : t0 + 1 + steps].cpu()  # (N, K, G)
        per_step = torch.tensor(
            [M.nrmse(mean[:, k], truth[:, k]) for k in range(steps)], device="cpu"
        )
        return {"nrmse_per_step": per_step, "mean": mean, "truth": truth}

    def evaluate(self, split_name: str, cfg: EvalConfig) -> dict[str, Any]:
        """All metrics of the metrics.json contract for this model on one split."""
        p = self.predict(
            split_name, batch_size=cfg.batch_size, rho_iters=cfg.rho_iters if cfg.rho else 0
        )
        levels = [(i + 1) / (cfg.calibration_levels + 1) for i in range(cfg.calibration_levels)]
        scores = M.gaussian_scores(p["y"], p["mean"], p["std"], levels=levels)
        roll = self.rollout(split_name, steps=cfg.rollout_steps, batch_size=cfg.batch_size)
        metrics: dict[str, Any] = {
            "nrmse_1step": M.nrmse(p["mean"], p["u"]),
            "nrmse_rollout": float(roll["nrmse_per_step"].mean()),
            "rmse": M.rmse(p["mean"], p["u"]),
            "nll": scores["nll"],
            "crps": scores["crps"],
            "coverage_50": scores["coverage_50"],
            "coverage_90": scores["coverage_90"],
            "coverage_95": scores["coverage_95"],
            "miscalibration_area": scores["miscalibration_area"],
        }
        if bool((p["sigma"] > 0).any()):  # user data may come without the true noise σ
            metrics["sigma_rel_error"] = M.sigma_rel_error(p["std"], p["sigma"])
        curves: dict[str, Any] = {
            "rollout_nrmse": roll["nrmse_per_step"].tolist(),
            "calibration_levels": levels,
            "calibration": scores["calibration"],
        }
        if "rounds_mean" in p:
            metrics["rounds_mean"] = float(p["rounds_mean"])
            metrics["residual_final"] = float(p["residual_final"])
            metrics["messages_per_prediction"] = float(p["messages_per_prediction"])
            curves["residual_per_round"] = p["residual_per_round"]
            curves["attention"] = p["attention"].tolist()
        if "iterations" in p:
            metrics["iterations_mean"] = float(p["iterations"].double().mean())
            metrics["converged_fraction"] = float(p["converged"].double().mean())
            curves["iterations"] = p["iterations"].tolist()
        if "rho" in p:
            rho = p["rho"].double()
            metrics["rho_mean"] = float(rho.mean())
            metrics["rho_max"] = float(rho.max())
            metrics["rho_below_1"] = float((rho < 1).double().mean())
            curves["rho"] = [round(float(r), 5) for r in rho]
        return {"metrics": metrics, "curves": curves, "rollout": roll}


# ------------------------------------------------------------------ classification


@dataclass
class LabelledBatch:
    x: torch.Tensor  # (B, L, C) sequences
    y: torch.Tensor  # (B,) class labels


class ClassifyTask(TaskBase):
    """Sequence classification: cross-entropy on the model's logits (B, K).

    ``splits`` maps ``train`` / ``val`` / ``test`` to objects with ``x`` (S, L, C)
    and ``y`` (S,). Evaluation reports accuracy and the mean negative
    log-likelihood (cross-entropy, nats) of the true class.
    """

    def __init__(
        self, model: nn.Module, splits: dict[str, Any], *, batch_size: int, runtime: Runtime = CPU
    ):
        self.runtime = runtime
        self.model = runtime.place(model)
        self.splits = {name: runtime.to(split) for name, split in splits.items()}
        self.batch_size = batch_size

    def sample_batch(self, generator: torch.Generator) -> LabelledBatch:
        train = self.splits["train"]
        rows = torch.randint(
            len(train.y), (self.batch_size,), generator=generator, device=generator.device
        ).to(train.y.device)
        return LabelledBatch(train.x[rows], train.y[rows])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits for ``x`` under the runtime's autocast, in float32."""
        with self.runtime.autocast():
            return self.model(x).float()

    def loss(self, batch: LabelledBatch, step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy of the batch; logs it as ``loss`` and ``nll``, and the accuracy."""
        logits = self.forward_module(batch.x).float()
        loss = nn.functional.cross_entropy(logits, batch.y)
        accuracy = float((logits.argmax(-1) == batch.y).float().mean())
        value = float(loss.detach())
        return loss, {"loss": value, "nll": value, "accuracy": accuracy}

    @torch.no_grad()
    def scores(self, split_name: str, *, batch_size: int = 256) -> dict[str, float]:
        """Accuracy and cross-entropy on a whole split."""
        split = self.splits[split_name]
        correct, nll, n = 0, 0.0, len(split.y)
        for start in range(0, n, batch_size):
            x, y = split.x[start : start + batch_size], split.y[start : start + batch_size]
            logits = self.logits(x)
            correct += int((logits.argmax(-1) == y).sum())
            nll += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        return {"accuracy": correct / n, "nll": nll / n}

    def validation_nll(self, *, max_samples: int = 1024) -> float:
        """Cross-entropy on (at most ``max_samples`` of) the validation split."""
        split = self.splits["val"]
        with torch.no_grad():
            x, y = split.x[:max_samples], split.y[:max_samples]
            return float(nn.functional.cross_entropy(self.logits(x), y))
