"""The Kalman cell bank: each cell is one learned linear-Gaussian predict/update step.

A cell's state is the mean and the log of a *diagonal* covariance of a latent
Gaussian, ``s_i = [μ_i, ℓ_i]`` with ``P_i = diag(exp ℓ_i)`` (so d = 2·d_h).
Every round each cell predicts with its message as a control input and then
updates with its encoded local observation ``z_i = e_i = enc_i(x_i)`` (the same
``e_i`` the TRM cells read, fixed for the whole forward pass):

    predict   μ⁻ = A_i μ + G_i m_i + b_i
              p⁻ = (A_i ∘ A_i) p + q_i          = diag(A_i diag(p) A_iᵀ) + q_i   (exact)
    noise     r  = softplus(N_i e_i + c_i) + r_min     (heteroscedastic, from the observation)
    update    Λ  = diag(1/p⁻) + H_iᵀ diag(1/r) H_i            (information matrix, d_h × d_h)
              P⁺ = Λ⁻¹                                         (Cholesky Λ = L Lᵀ, P⁺ = L⁻ᵀ L⁻¹)
              μ⁺ = μ⁻ + P⁺ H_iᵀ diag(1/r) (z_i − H_i μ⁻)
              ℓ⁺ = log diag(P⁺)

with q_i = softplus(·) + q_min > 0 learned per cell. The update is the exact
Bayes/Kalman update of the Gaussian prior ``N(μ⁻, diag p⁻)`` by the measurement
``z = H μ + v, v ~ N(0, diag r)``; only the posterior covariance is projected
back onto its diagonal (a diagonal assumed-density filter), so the state stays
2·d_h numbers. In covariance form the same update reads
``S = H P⁻ Hᵀ + diag(r)`` (the innovation covariance), ``K = P⁻ Hᵀ S⁻¹``,
``μ⁺ = μ⁻ + K (z − H μ⁻)``, ``P⁺ = (I − K H) P⁻``; the information form needs
only a d_h × d_h Cholesky per (sample, cell) and is symmetric positive definite
by construction, so no Joseph form is needed.

Fixed-point view. The rounds repeat this step with the same observation, so
the variance recursion ``p ↦ diag((diag(1/((A∘A)p + q)) + J)⁻¹)`` is a
(diagonal) Riccati iteration that settles to its steady state, and the mean
recursion ``μ ↦ (I − K H)(A μ + G m + b) + K z`` is affine with the
steady-state gain K, contractive when ``(I − K H) A`` is (in the scalar case
whenever (1 − K)|a| < 1, so |a| < 1 suffices; the update shrinks further). A is
initialised at 0.9·I; ``spectral_bound`` on this bank bounds the stacked
transition ``[A_i; G_i]`` (the only ``StackedLinear`` in it), hence ‖A_i‖₂.
Messages enter the mean only (as a control input), so the covariance depends on
the input solely through r(e).

What reaches the Gaussian head: the head (:class:`~tertulia.nn.heads.KalmanHead`)
reads ``[μ, ℓ]`` at the last round and predicts ``y = W μ + c`` with variance
``(W∘W) p + ρ``, the diagonal of the innovation covariance of y as a linear
measurement of the filtered state; the state variance p in it is the Riccati
fixed point driven by this cell's innovation statistics (q, r(e), H).

Numerical guards: ℓ is clamped to ``[LOG_P_MIN, LOG_P_MAX]`` before ``exp``
(in practice inactive for the states the update produces, since
``1/(1/q_min + λ_max(J)) ≤ p⁺ ≤ p⁻``; it catches extrapolated iterates of
Anderson/Broyden solvers).

Layout convention as :class:`~tertulia.nn.stacked.StackedLinear`: weights are
stored input × output, so ``predict.weight[i] = [A_iᵀ; G_iᵀ]`` and
``obs[i] = H_iᵀ``.

Legend: B batch, n cells, d = 2·d_h state, d_h latent size, d_o = d observation
size (the encoded input), d_m message.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import float32, full_precision
from .stacked import StackedLinear

LOG_P_MIN = -18.0
LOG_P_MAX = 10.0


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def check_kalman_state_size(d: int) -> int:
    """``d_h = d / 2``; raise ``ValueError`` unless d is even and ≥ 2."""
    if d < 2 or d % 2:
        raise ValueError(
            f"the kalman cell needs an even state size d = 2·d_h (mean and log-variance "
            f"halves), got d={d}"
        )
    return d // 2


def information_update(
    mu_prior: torch.Tensor, p_prior: torch.Tensor, info: torch.Tensor, info_vec: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior of ``N(mu_prior, diag p_prior)`` after a linear-Gaussian measurement.

    Given the measurement's information matrix ``J = Hᵀ R⁻¹ H`` and the
    innovation in information form ``v = Hᵀ R⁻¹ (z − H μ⁻)``:

        Λ = diag(1/p⁻) + J = L Lᵀ,   P⁺ = Λ⁻¹ = L⁻ᵀ L⁻¹,   μ⁺ = μ⁻ + P⁺ v

    Shapes: mu_prior, p_prior, info_vec (..., k); info (..., k, k). Returns
    ``μ⁺ (..., k)`` and ``diag P⁺ (..., k)``.
    """
    lam = torch.diag_embed(p_prior.reciprocal()) + info
    lam = 0.5 * (lam + lam.transpose(-1, -2))
    cov = torch.cholesky_inverse(torch.linalg.cholesky(lam))  # P⁺ (..., k, k)
    mu_post = mu_prior + (cov @ info_vec.unsqueeze(-1)).squeeze(-1)
    return mu_post, cov.diagonal(dim1=-2, dim2=-1)


class KalmanCellBank(nn.Module):
    """``n`` learned predict/update Kalman cells with stacked parameters.

    Same interface as :class:`~tertulia.nn.cells.CellBank` (``step``,
    ``step_one``, ``step_reference``) plus ``initial(e)``, the prior state
    ``[μ0_i, ℓ0_i]`` the rounds start from. Every parameter is stacked on a
    leading axis of size n, so block training can freeze per-cell rows.
    """

    def __init__(
        self,
        n: int,
        *,
        d: int,
        d_msg: int,
        a_init: float = 0.9,
        q_init: float = 0.1,
        r_init: float = 0.1,
        q_min: float = 1e-4,
        r_min: float = 1e-4,
        msg_scale: float = 0.5,
    ):
        super().__init__()
        d_h = check_kalman_state_size(d)
        self.n, self.d, self.d_h, self.d_obs, self.d_msg = n, d, d_h, d, d_msg
        self.q_min, self.r_min = float(q_min), float(r_min)
        # Transition [A; G] and bias b: μ⁻ = [μ, m] @ predict.weight + predict.bias.
        self.predict = StackedLinear(n, d_h + d_msg, d_h, init_scale=msg_scale)
        with torch.no_grad():
            self.predict.weight[:, :d_h] = a_init * torch.eye(d_h)
            self.predict.bias.zero_()
        # Observation map Hᵀ: (n, d_h, d_o); z ≈ μ @ obs[i].
        self.obs = nn.Parameter(torch.empty(n, d_h, d).uniform_(-1, 1) / math.sqrt(d_h))
        # Measurement noise r = softplus(e @ noise_weight + noise_bias) + r_min.
        self.noise_weight = nn.Parameter(torch.zeros(n, d, d))
        self.noise_bias = nn.Parameter(torch.full((n, d), _softplus_inverse(r_init - r_min)))
        # Process noise q = softplus(q_raw) + q_min.
        self.q_raw = nn.Parameter(torch.full((n, d_h), _softplus_inverse(q_init - q_min)))
        # Prior state of the rounds.
        self.mu0 = nn.Parameter(torch.zeros(n, d_h))
        self.log_p0 = nn.Parameter(torch.zeros(n, d_h))

    # ------------------------------------------------------------ pieces

    def split(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``s (..., d)`` → mean ``μ (..., d_h)`` and variance ``p = exp ℓ (..., d_h)``."""
        mu, ell = s.split(self.d_h, dim=-1)
        return mu, ell.clamp(LOG_P_MIN, LOG_P_MAX).exp()

    def process_noise(self) -> torch.Tensor:
        """``q (n, d_h) > 0``."""
        return F.softplus(self.q_raw) + self.q_min

    def measurement_noise(self, e: torch.Tensor) -> torch.Tensor:
        """``r (B, n, d_o) > 0`` from the encoded observation ``e (B, n, d_o)``."""
        raw = torch.einsum("bnk,nkl->bnl", e, self.noise_weight) + self.noise_bias
        return F.softplus(raw) + self.r_min

    def transition(self) -> torch.Tensor:
        """Stacked ``A_iᵀ (n, d_h, d_h)`` (spectrally bounded when the bank is)."""
        return self.predict.weight[:, : self.d_h]

    def initial(self, e: torch.Tensor) -> torch.Tensor:
        """Prior state ``[μ0, ℓ0]`` per cell, ``(B, n, d)`` for ``e (B, n, d_o)``."""
        s0 = torch.cat([self.mu0, self.log_p0], dim=-1)
        return s0.to(e.dtype).expand(e.shape[0], -1, -1)

    def innovation_log_var(self, s: torch.Tensor, m: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``log diag S`` with ``S = H P⁻ Hᵀ + diag(r)``: ``(B, n, d_o)`` (diagnostics)."""
        with full_precision(s):
            return self._innovation_log_var(*float32(s, m, e))

    def _innovation_log_var(
        self, s: torch.Tensor, m: torch.Tensor, e: torch.Tensor
    ) -> torch.Tensor:
        _, p = self.split(s)
        p_prior = torch.einsum("bni,nio->bno", p, self.transition().pow(2)) + self.process_noise()
        var = torch.einsum("bnh,nhk->bnk", p_prior, self.obs.pow(2)) + self.measurement_noise(e)
        return var.log()

    # ------------------------------------------------------------ rounds

    def step(self, s: torch.Tensor, m: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # s: (B, n, d), m: (B, n, d_m), e: (B, n, d_o) -> (B, n, d)
        with full_precision(s):  # a Kalman recursion: never in bf16
            return self._step(*float32(s, m, e))

    def _step(self, s: torch.Tensor, m: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        mu, p = self.split(s)
        mu_prior = self.predict(torch.cat([mu, m], dim=-1))  # (B, n, d_h)
        p_prior = torch.einsum("bni,nio->bno", p, self.transition().pow(2)) + self.process_noise()
        r_inv = self.measurement_noise(e).reciprocal()  # (B, n, d_o)
        info = torch.einsum("nhk,bnk,ngk->bnhg", self.obs, r_inv, self.obs)  # (B, n, d_h, d_h)
        innov = e - torch.einsum("bnh,nhk->bnk", mu_prior, self.obs)  # (B, n, d_o)
        info_vec = torch.einsum("nhk,bnk->bnh", self.obs, innov * r_inv)
        mu_post, p_post = information_update(mu_prior, p_prior, info, info_vec)
        return torch.cat([mu_post, p_post.log()], dim=-1)

    def step_one(self, i: int, s: torch.Tensor, m: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # s: (B, d), m: (B, d_m), e: (B, d_o) -> (B, d), cell i only
        with full_precision(s):
            return self._step_one(i, *float32(s, m, e))

    def _step_one(self, i: int, s: torch.Tensor, m: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        mu, p = self.split(s)
        a_t = self.transition()[i]  # (d_h, d_h) = A_iᵀ
        h_t = self.obs[i]  # (d_h, d_o) = H_iᵀ
        mu_prior = self.predict.forward_one(i, torch.cat([mu, m], dim=-1))
        p_prior = p @ a_t.pow(2) + self.process_noise()[i]
        r = F.softplus(e @ self.noise_weight[i] + self.noise_bias[i]) + self.r_min  # (B, d_o)
        info = (h_t / r[:, None, :]) @ h_t.T  # (B, d_h, d_h) = Hᵀ R⁻¹ H
        info_vec = ((e - mu_prior @ h_t) / r) @ h_t.T  # (B, d_h)
        mu_post, p_post = information_update(mu_prior, p_prior, info, info_vec)
        return torch.cat([mu_post, p_post.log()], dim=-1)

    def step_reference(self, s: torch.Tensor, m: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Per-cell loop, one small matmul chain per cell: the readable reference."""
        return torch.stack([self.step_one(i, s[:, i], m[:, i], e[:, i]) for i in range(self.n)], 1)

    def extra_repr(self) -> str:
        return f"n={self.n}, d_h={self.d_h}, d_obs={self.d_obs}, d_msg={self.d_msg}"
