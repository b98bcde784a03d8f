"""Titans neural memory (Behrouz et al., "Titans: Learning to Memorize at Test Time").

A memory MLP M — depth 1: ``M(k) = k W``; depth 2: ``M(k) = silu(k W₁) W₂`` —
whose weights are *fast weights*, one copy per sequence, written inside the
forward pass by gradient steps on the associative loss

    ℓ(M; x_t) = ‖M(k_t) − v_t‖²      k_t = norm(W_k x_t),  v_t = W_v x_t,  q_t = norm(W_q x_t)

(norm: L2 normalisation, so the inner step size does not depend on the scale of x),
with a data-dependent learning rate θ_t, momentum η_t (the "surprise") and
forgetting α_t, each a sigmoid of a linear map of x_t (θ_t scaled by θ_max):

    S_t = η_t S_{t−1} − θ_t clip(∇ℓ(M_{t−1}; x_t))
    M_t = (1 − α_t) M_{t−1} + S_t
    y_t = W_o M_{t−1}(q_t)                                (read before writing token t)

``clip`` rescales each token's inner gradient (all memory tensors jointly) to
norm ≤ ``clip``, so no input, however large, makes the inner loop explode.

**Chunked form.** The sequence is cut into chunks of ``chunk`` tokens; inside
a chunk every token's gradient is taken at the chunk's starting weights
M_{c₀} and every token reads M_{c₀} (so all of them come from one batched
computation), and the chunk's end state (M, S) is a weighted sum of its
gradients (:meth:`NeuralMemory._advance`): memory grows with the number of
chunks, not tokens. ``chunk = 1`` is the exact token-by-token recurrence. A
last chunk shorter than ``chunk`` — or a whole sequence shorter than one chunk —
is processed like any other: the memory is always written, and the next call
(streaming) reads it.

Gradients in closed form (depth 2, z = k W₁, a = silu(z), e = a W₂ − v):

    ∇W₂ = 2 aᵀ e          ∇W₁ = 2 kᵀ [(e W₂ᵀ) ⊙ silu′(z)]        (depth 1: ∇W = 2 kᵀ (k W − v))

— outer products, so a token's norm is 2‖x‖‖y‖ and a chunk's weighted sum
Σ_t c_t 2 x_tᵀ y_t is one batched matmul: per-token gradients are never stored.

The projections, gates and initial memory weights are ordinary parameters
trained by backpropagation *through* the inner updates (they are explicit
functions of them). ``forward(x, state)`` carries (M, S) across calls for
streaming: two calls on the halves of a sequence split at a multiple of
``chunk`` give the outputs of one call on the whole.

Legend: B batch, L tokens, d width, h memory hidden width, C chunk, t token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MemoryState:
    """Fast weights M and momenta S, one per memory tensor, each (B, …)."""

    weights: list[torch.Tensor]
    momenta: list[torch.Tensor]

    def detach(self) -> MemoryState:
        return MemoryState([w.detach() for w in self.weights], [s.detach() for s in self.momenta])


def _silu_grad(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


class NeuralMemory(nn.Module):
    """A Titans long-term memory: (B, L, d) → (B, L, d), learning at test time.

    Args:
        d: width of tokens, keys, values and queries.
        hidden: memory MLP hidden width (depth 2; default 2·d).
        depth: 1 (a d×d matrix) or 2 (d → hidden → d with SiLU).
        chunk: tokens whose inner gradients share the chunk's starting weights.
        clip: maximum norm of one token's inner gradient.
        theta_max: largest inner learning rate.
    """

    def __init__(
        self,
        d: int,
        *,
        hidden: int | None = None,
        depth: int = 2,
        chunk: int = 16,
        clip: float = 1.0,
        theta_max: float = 1.0,
    ):
        super().__init__()
        if depth not in (1, 2):
            raise ValueError(f"depth must be 1 or 2, got {depth}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        if clip <= 0 or theta_max <= 0:
            raise ValueError(f"clip and theta_max must be > 0, got {clip}, {theta_max}")
        self.d, self.depth, self.chunk = d, depth, chunk
        self.hidden = hidden or 2 * d
        self.clip, self.theta_max = clip, theta_max
        self.to_k = nn.Linear(d, d, bias=False)
        self.to_v = nn.Linear(d, d, bias=False)
        self.to_q = nn.Linear(d, d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.gates = nn.Linear(d, 3)  # θ, η, α logits
        with torch.no_grad():
            self.gates.weight.mul_(0.1)
            self.gates.bias.copy_(torch.tensor([0.0, 2.0, -6.0]))  # θ ≈ θmax/2, η ≈ .88, α ≈ .0025
        if depth == 1:
            self.init_weights = nn.ParameterList([nn.Parameter(torch.zeros(d, d))])
        else:
            w1 = torch.randn(d, self.hidden) / math.sqrt(d)
            w2 = torch.randn(self.hidden, d) / math.sqrt(self.hidden)
            self.init_weights = nn.ParameterList([nn.Parameter(w1), nn.Parameter(w2 * 0.1)])

    # ------------------------------------------------------------------ pieces

    def initial_state(self, batch: int) -> MemoryState:
        weights = [w.unsqueeze(0).expand(batch, *w.shape) for w in self.init_weights]
        return MemoryState(weights, [torch.zeros_like(w) for w in weights])

    def gate_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """θ, η, α, each (B, L)."""
        g = torch.sigmoid(self.gates(x))
        return self.theta_max * g[..., 0], g[..., 1], g[..., 2]

    def read(self, weights: list[torch.Tensor], q: torch.Tensor) -> torch.Tensor:
        """M(q) for q (B, T, d) with weights (B, …): (B, T, d)."""
        if self.depth == 1:
            return q @ weights[0]
        return F.silu(q @ weights[0]) @ weights[1]

    def gradient_factors(
        self, weights: list[torch.Tensor], k: torch.Tensor, v: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """∇ℓ of every token of a chunk at ``weights``, as factors: for each memory tensor a
        pair (x, y) of (B, T, ·) with token t's gradient ``2 x_tᵀ y_t`` (never materialised)."""
        if self.depth == 1:
            return [(k, k @ weights[0] - v)]
        z = k @ weights[0]  # (B, T, h)
        a = F.silu(z)
        e = a @ weights[1] - v  # (B, T, d)
        back = (e @ weights[1].transpose(-1, -2)) * _silu_grad(z)  # (B, T, h)
        return [(k, back), (a, e)]

    def clip_scale(self, factors: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """(B, T) factors ≤ 1 bringing each token's joint gradient norm to ≤ ``clip``:
        ‖2 xᵀ y‖_F = 2 ‖x‖ ‖y‖."""
        sq = sum(4 * x.pow(2).sum(-1) * y.pow(2).sum(-1) for x, y in factors)
        return (self.clip / (sq.sqrt() + 1e-12)).clamp(max=1.0)

    @staticmethod
    def _advance(
        weights: list[torch.Tensor],
        momenta: list[torch.Tensor],
        factors: list[tuple[torch.Tensor, torch.Tensor]],
        theta: torch.Tensor,
        eta: torch.Tensor,
        alpha: torch.Tensor,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """M and S after a chunk's C tokens, as weighted sums of the token gradients
        (``theta`` already carries each token's clip factor).

        With E_i = Π_{l≤i} η_l and β_i = Π_{l>i} (1 − α_l) (products inside the chunk),
        unrolling the recurrence gives

            S_C = E_C S_0 − Σ_j (E_C / E_j) θ_j g_j
            M_C = (Π_i (1 − α_i)) M_0 + (Σ_i β_i E_i) S_0 − Σ_j θ_j (Σ_{i≥j} β_i E_i / E_j) g_j

        computed in log space (every ratio E_i / E_j with i ≥ j is ≤ 1)."""
        log_e = torch.cumsum(torch.log(eta.clamp_min(1e-30)), dim=1)  # (B, C)
        log_keep = torch.log1p(-alpha.clamp(max=1 - 1e-7))
        log_beta = log_keep.sum(1, keepdim=True) - torch.cumsum(log_keep, dim=1)  # (B, C)
        c = eta.shape[1]
        lower = torch.ones(c, c, dtype=torch.bool, device=eta.device).tril()  # i ≥ j
        pair = log_beta[:, :, None] + log_e[:, :, None] - log_e[:, None, :]  # (B, i, j)
        w = torch.where(lower, pair, torch.full_like(pair, -torch.inf)).exp()
        coef_m = theta * w.sum(1)  # (B, C)
        coef_s = theta * (log_e[:, -1:] - log_e).exp()  # (B, C)
        decay = log_keep.sum(1).exp()  # (B,)
        s0_m = (log_beta + log_e).exp().sum(1)  # (B,)
        s0_s = log_e[:, -1].exp()  # (B,)

        def per_batch(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            return x.view(x.shape[0], *([1] * (like.ndim - 1)))

        new_w, new_s = [], []
        for m0, s0, (x, y) in zip(weights, momenta, factors, strict=True):
            # Σ_j c_j g_j = 2 Σ_j c_j x_jᵀ y_j = 2 xᵀ diag(c) y: a batched matmul
            sum_m = 2 * (x * coef_m.unsqueeze(-1)).transpose(1, 2) @ y
            sum_s = 2 * (x * coef_s.unsqueeze(-1)).transpose(1, 2) @ y
            new_w.append(per_batch(decay, m0) * m0 + per_batch(s0_m, m0) * s0 - sum_m)
            new_s.append(per_batch(s0_s, s0) * s0 - sum_s)
        return new_w, new_s

    # ----------------------------------------------------------------- forward

    def forward(
        self,
        x: torch.Tensor,
        state: MemoryState | None = None,
        *,
        return_state: bool = False,
        gates: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, MemoryState]:
        """Write every token of ``x`` (B, L, d) into the memory and read it; ``gates``
        (θ, η, α, each (B, L)) override the learned ones."""
        if x.ndim != 3 or x.shape[-1] != self.d:
            raise ValueError(f"NeuralMemory expects (B, L, {self.d}) inputs, got {tuple(x.shape)}")
        b, length, _ = x.shape
        st = state or self.initial_state(b)
        weights, momenta = list(st.weights), list(st.momenta)
        k = F.normalize(self.to_k(x), dim=-1)
        v = self.to_v(x)
        q = F.normalize(self.to_q(x), dim=-1)
        theta, eta, alpha = gates if gates is not None else self.gate_values(x)
        reads = []
        for c0 in range(0, length, self.chunk):
            c1 = min(c0 + self.chunk, length)
            reads.append(self.read(weights, q[:, c0:c1]))  # the memory as the chunk starts
            factors = self.gradient_factors(weights, k[:, c0:c1], v[:, c0:c1])
            clipped = theta[:, c0:c1] * self.clip_scale(factors)  # θ_t times the clip factor
            weights, momenta = self._advance(
                weights, momenta, factors, clipped, eta[:, c0:c1], alpha[:, c0:c1]
            )
        y = self.out(torch.cat(reads, dim=1)) if reads else self.out(x[:, :0])
        if return_state:
            return y, MemoryState(weights, momenta)
        return y
