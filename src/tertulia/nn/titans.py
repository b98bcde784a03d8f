"""Titans neural memory (Behrouz et al., "Titans: Learning to Memorize at Test Time").

A memory MLP M — depth 1: ``M(k) = k W`` (a d×d matrix); depth 2: ``M(k) = silu(k W₁) W₂``
(d → h → d) — whose weights are *fast weights*, one copy per sequence, written inside the
forward pass by gradient steps on the associative loss (a *sum* over the d outputs, no mean)

    ℓ(M; x_t) = ‖M(k_t) − v_t‖²      k_t = norm(W_k x_t),  v_t = W_v x_t,  q_t = norm(W_q x_t)

(norm: L2 normalisation of k and q, so the inner step size does not depend on the scale of
x), with a data-dependent learning rate θ_t, momentum η_t (the "surprise") and forgetting α_t,
each a sigmoid of a linear map of x_t (θ_t scaled by θ_max):

    θ_t = θ_max σ(w_θ·x_t + b_θ)     η_t = σ(w_η·x_t + b_η)     α_t = σ(w_α·x_t + b_α)
    S_t = η_t S_{t−1} − θ_t clip(∇ℓ(M_{t−1}; x_t))
    M_t = (1 − α_t) M_{t−1} + S_t
    y_t = W_o M_{t−1}(q_t)                                (read before writing token t)

The gate biases start at θ ≈ θ_max/2, η ≈ 0.88, α ≈ 0.0025 (a memory that survives gaps of
hundreds of tokens). ``clip`` rescales each token's inner gradient (all memory tensors
jointly, per sequence) to norm ≤ ``clip`` before it enters S, so no input, however large,
makes the inner loop explode.

**Chunked form.** The sequence is cut into chunks of ``chunk`` tokens (c₀ the chunk's first
token); inside a chunk every token's gradient is taken at the chunk's starting weights
M_{c₀}, so all of them come from one batched computation. With P_n = Π_{u<n} (1 − α_u),
E_n = Π_{u<n} η_u (products inside the chunk, u, j local token indices, n tokens written),
unrolling the recurrence gives the state after n of the chunk's tokens

    S_(n) = E_n S_{c₀} − Σ_{j<n} θ_j (E_n / E_{j+1}) g_j
    M_(n) = P_n M_{c₀} + ρ_n S_{c₀} − Σ_{j<n} θ_j w_{nj} g_j
    ρ_n = Σ_{u<n} (P_n / P_{u+1}) E_{u+1}       w_{nj} = Σ_{j≤u<n} (P_n / P_{u+1}) E_{u+1} / E_{j+1}

(g_j the clipped gradients; every ratio is a product of numbers in (0, 1], computed in log
space). ``read`` chooses what the tokens of a chunk read:

* ``"chunk"`` (default): the memory as the chunk began, y_t = W_o M_{c₀}(q_t); only the
  chunk's end state n = C is formed (cost O(C²) per chunk for the coefficients).
* ``"token"``: the memory after the chunk's earlier tokens, y_t = W_o M_(t−c₀)(q_t) — M_{t−1}
  of the recurrence with the chunk-start gradients — formed without materialising per-token
  weights: for each layer, with input u_t (q_t, then silu of the previous layer's output) and
  a gradient g_j = 2 x_jᵀ y_j (below),

      u_t M_(n) = P_n u_t M_{c₀} + ρ_n u_t S_{c₀} − 2 Σ_{j<n} θ_j w_{nj} (u_t · x_j) y_j

  a causal linear-attention product (cost O(C³) per chunk for the coefficients, O(C² d) for
  the reads).

Both read before writing: ``chunk = 1`` is the exact token-by-token recurrence in either mode.
A last chunk shorter than ``chunk`` — or a whole sequence shorter than one chunk — is
processed like any other: the memory is always written, and the next call (streaming) reads it.

Gradients in closed form (depth 2, z = k W₁, a = silu(z), e = a W₂ − v):

    ∇W₂ = 2 aᵀ e          ∇W₁ = 2 kᵀ [(e W₂ᵀ) ⊙ silu′(z)]        (depth 1: ∇W = 2 kᵀ (k W − v))

— outer products, so a token's gradient norm is 2‖x‖‖y‖ and a chunk's weighted sum
Σ_t c_t 2 x_tᵀ y_t is one batched matmul: per-token gradients are never stored.

The projections, gates and initial memory weights are ordinary parameters trained by
backpropagation *through* the inner updates (the fast weights are explicit differentiable
functions of them — the closed-form gradients play the part of ``create_graph=True``).
``forward(x, state)`` carries (M, S) across calls for streaming: two calls on the halves of
a sequence split at a multiple of ``chunk`` give the outputs of one call on the whole.

Legend: B batch, L tokens, d width, h memory hidden width, C chunk, t token, c₀ a chunk's
first token, n tokens of the chunk written so far, M fast weights, S momentum (surprise),
θ inner learning rate, η momentum gate, α forgetting gate, σ(·) the logistic sigmoid,
P, E, ρ, w the chunk's decay and momentum products and their sums (above).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import float32, full_precision

READ_MODES = ("chunk", "token")


@dataclass
class MemoryState:
    """Fast weights M and momenta S, one per memory tensor, each (B, …).

    Depth 1: ``[W]`` with W (B, d, d); depth 2: ``[W₁, W₂]`` with W₁ (B, d, h), W₂ (B, h, d).
    """

    weights: list[torch.Tensor]
    momenta: list[torch.Tensor]

    def detach(self) -> MemoryState:
        """The same state cut from the autograd graph (for truncated backprop over calls)."""
        return MemoryState([w.detach() for w in self.weights], [s.detach() for s in self.momenta])


def _silu_grad(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def _coefficients(
    theta: torch.Tensor, eta: torch.Tensor, alpha: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P_n, ρ_n, θ_j w_{nj}) for the states after n ∈ ``rows`` tokens of a chunk.

    ``theta``, ``eta``, ``alpha`` are (B, C); returns (B, R), (B, R), (B, R, C)."""
    b, c = eta.shape
    zero = eta.new_zeros(b, 1)
    le = torch.cat([zero, torch.cumsum(torch.log(eta.clamp_min(1e-30)), 1)], 1)  # log E_n
    lp = torch.cat([zero, torch.cumsum(torch.log1p(-alpha.clamp(max=1 - 1e-7)), 1)], 1)  # log P_n
    lpn = lp[:, rows]  # (B, R)
    f = le[:, 1:] - lp[:, 1:]  # log(E_{u+1} / P_{u+1}), (B, C) over u
    idx = torch.arange(c, device=eta.device)
    before = idx[None, :] < rows[:, None]  # u < n, (R, C)
    sig = torch.where(before, lpn[..., None] + f[:, None, :], -torch.inf).exp().sum(-1)
    inside = (idx[:, None] >= idx[None, :])[None] & before[:, :, None]  # j ≤ u < n, (R, C, C)
    pair = lpn[:, :, None, None] + f[:, None, :, None] - le[:, None, None, 1:]  # (B, R, u, j)
    w = torch.where(inside, pair, -torch.inf).exp().sum(2) * theta[:, None, :]
    return lpn.exp(), sig, w


class NeuralMemory(nn.Module):
    """A Titans long-term memory: (B, L, d) → (B, L, d), learning at test time.

    Args:
        d: width of tokens, keys, values and queries.
        hidden: memory MLP hidden width (depth 2; default 2·d).
        depth: 1 (a d×d matrix) or 2 (d → hidden → d with SiLU).
        chunk: tokens whose inner gradients share the chunk's starting weights.
        clip: maximum norm of one token's inner gradient (all memory tensors jointly).
        theta_max: largest inner learning rate.
        read: ``"chunk"`` — every token reads the memory as its chunk began; ``"token"`` —
            every token reads the memory after the chunk's earlier tokens (see module doc).
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
        read: str = "chunk",
    ):
        super().__init__()
        if d < 1:
            raise ValueError(f"d must be an integer >= 1, got {d}")
        if hidden is not None and hidden < 1:
            raise ValueError(f"hidden must be an integer >= 1 (or None for 2·d), got {hidden}")
        if depth not in (1, 2):
            raise ValueError(f"depth must be 1 or 2, got {depth}")
        if chunk < 1:
            raise ValueError(f"chunk must be an integer >= 1, got {chunk}")
        if not clip > 0 or not theta_max > 0:
            raise ValueError(f"clip and theta_max must be > 0, got {clip}, {theta_max}")
        if read not in READ_MODES:
            raise ValueError(f"unknown read {read!r}; expected one of {', '.join(READ_MODES)}")
        self.d, self.depth, self.chunk, self.read_mode = d, depth, chunk, read
        self.hidden = 2 * d if hidden is None else hidden
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
        """The learned initial weights, one (expanded) copy per sequence, and zero momenta."""
        weights = [w.unsqueeze(0).expand(batch, *w.shape) for w in self.init_weights]
        return MemoryState(weights, [torch.zeros_like(w) for w in weights])

    def gate_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """θ, η, α for x (B, L, d), each (B, L)."""
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

    def _read_tokens(
        self,
        weights: list[torch.Tensor],
        momenta: list[torch.Tensor],
        factors: list[tuple[torch.Tensor, torch.Tensor]],
        q: torch.Tensor,
        keep: torch.Tensor,
        sig: torch.Tensor,
        w: torch.Tensor,
    ) -> torch.Tensor:
        """Every token of a chunk read with the memory after the chunk's earlier tokens:
        ``keep``, ``sig`` (B, C) and ``w`` (B, C, C) are the rows n = 0 … C−1."""
        u = q
        for i, (m0, s0, (x, y)) in enumerate(zip(weights, momenta, factors, strict=True)):
            att = (u @ x.transpose(1, 2)) * w  # (B, t, j): θ_j w_{tj} (u_t · x_j), j < t
            lin = keep[..., None] * (u @ m0) + sig[..., None] * (u @ s0) - 2 * att @ y
            u = F.silu(lin) if i + 1 < len(weights) else lin
        return u

    @staticmethod
    def _end_state(
        weights: list[torch.Tensor],
        momenta: list[torch.Tensor],
        factors: list[tuple[torch.Tensor, torch.Tensor]],
        theta: torch.Tensor,
        eta: torch.Tensor,
        keep: torch.Tensor,
        sig: torch.Tensor,
        w: torch.Tensor,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(M, S) after all C tokens of a chunk: ``keep``, ``sig`` (B,) and ``w`` (B, C) the
        row n = C; ``theta`` (B, C) already carries each token's clip factor."""
        log_e = torch.cumsum(torch.log(eta.clamp_min(1e-30)), 1)  # log E_{j+1}
        coef_s = theta * (log_e[:, -1:] - log_e).exp()  # θ_j E_C / E_{j+1}
        keep_s = log_e[:, -1].exp()

        def per_batch(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            return c.view(c.shape[0], *([1] * (like.ndim - 1)))

        new_w, new_s = [], []
        for m0, s0, (x, y) in zip(weights, momenta, factors, strict=True):
            # Σ_j c_j g_j = 2 Σ_j c_j x_jᵀ y_j = 2 xᵀ diag(c) y: a batched matmul
            sum_m = 2 * (x * w.unsqueeze(-1)).transpose(1, 2) @ y
            sum_s = 2 * (x * coef_s.unsqueeze(-1)).transpose(1, 2) @ y
            new_w.append(per_batch(keep, m0) * m0 + per_batch(sig, m0) * s0 - sum_m)
            new_s.append(per_batch(keep_s, s0) * s0 - sum_s)
        return new_w, new_s

    def _check_state(self, state: MemoryState, b: int) -> None:
        shapes = [tuple(w.shape) for w in self.init_weights]
        for name, ts in (("weights", state.weights), ("momenta", state.momenta)):
            got = [tuple(t.shape) for t in ts]
            if got != [(b, *s) for s in shapes]:
                want = [(b, *s) for s in shapes]
                raise ValueError(f"state.{name} must have shapes {want} for this batch, got {got}")

    # ----------------------------------------------------------------- forward

    def forward(
        self,
        x: torch.Tensor,
        state: MemoryState | None = None,
        *,
        return_state: bool = False,
        gates: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, MemoryState]:
        """Read and write every token of ``x`` (B, L, d); returns y (B, L, d), and with
        ``return_state`` the state (M, S) after the last token.

        ``state`` (from an earlier call) continues a sequence; ``gates`` (θ, η, α, each
        (B, L)) override the learned gates (tests, ablations)."""
        if x.ndim != 3 or x.shape[-1] != self.d:
            raise ValueError(f"NeuralMemory expects (B, L, {self.d}) inputs, got {tuple(x.shape)}")
        b, length, _ = x.shape
        if gates is not None and (
            len(gates) != 3 or any(tuple(g.shape) != (b, length) for g in gates)
        ):
            got = [tuple(g.shape) for g in gates]
            raise ValueError(
                f"gates must be three (θ, η, α) tensors of shape {(b, length)}, got {got}"
            )
        if state is None:
            state = self.initial_state(b)
        else:
            self._check_state(state, b)
        k = F.normalize(self.to_k(x), dim=-1)
        v = self.to_v(x)
        q = F.normalize(self.to_q(x), dim=-1)
        theta, eta, alpha = gates if gates is not None else self.gate_values(x)
        with full_precision(x):  # the test-time writes and reads: float32 under bf16 autocast
            reads, weights, momenta = self._write_and_read(
                state, *float32(k, v, q, theta, eta, alpha)
            )
        y = self.out(torch.cat(reads, dim=1)) if reads else self.out(x[:, :0])
        if return_state:
            return y, MemoryState(weights, momenta)
        return y

    def _write_and_read(
        self,
        state: MemoryState,
        k: torch.Tensor,
        v: torch.Tensor,
        q: torch.Tensor,
        theta: torch.Tensor,
        eta: torch.Tensor,
        alpha: torch.Tensor,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """The chunk loop of :meth:`forward`: (reads per chunk, end weights, end momenta)."""
        weights, momenta = list(state.weights), list(state.momenta)
        length = k.shape[1]
        per_token = self.read_mode == "token"
        reads = []
        for c0 in range(0, length, self.chunk):
            c1 = min(c0 + self.chunk, length)
            factors = self.gradient_factors(weights, k[:, c0:c1], v[:, c0:c1])
            th = theta[:, c0:c1] * self.clip_scale(factors)  # θ_t times the clip factor
            et, al = eta[:, c0:c1], alpha[:, c0:c1]
            c = c1 - c0
            rows = torch.arange(0 if per_token else c, c + 1, device=k.device)
            keep, sig, w = _coefficients(th, et, al, rows)
            if per_token:
                reads.append(
                    self._read_tokens(
                        weights, momenta, factors, q[:, c0:c1], keep[:, :-1], sig[:, :-1], w[:, :-1]
                    )
                )
            else:
                reads.append(self.read(weights, q[:, c0:c1]))  # the memory as the chunk starts
            weights, momenta = self._end_state(
                weights, momenta, factors, th, et, keep[:, -1], sig[:, -1], w[:, -1]
            )
        return reads, weights, momenta
