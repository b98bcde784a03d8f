"""The tiny recursive model (TRM) cell bank, seed eq. (1).

Each cell i refines its latent state from its current state, the message it
received and its encoded local observation:

    z_i  = LN_i([s_i, m_i, e_i])
    s_i' = b_i + W2_i · gelu(W1_i z_i + b1_i) + b2_i

with ``e_i = enc_i(x_i)`` computed once per forward pass and the skip
``b_i = s_i`` (``skip="state"``, a residual MLP: the map starts near the
identity, good for a few unrolled rounds) or ``b_i = e_i`` (``skip="input"``,
the DEQ form: s enters only through the normalised MLP, so bounding the
spectral norms of W1, W2 can make the round a contraction). All ``n`` cells live
in one module with stacked weights, so ``step`` runs every cell in one batched
kernel; ``step_reference`` is the slow, obviously-correct per-cell loop kept
beside it (a test holds the two equal in float64), and ``step_one`` updates a
single cell (asynchronous schedules).

Legend: B batch, n cells, d state, d_m message, H hidden = hidden_mult·d.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .stacked import StackedLayerNorm, StackedLinear


class CellBank(nn.Module):
    """``n`` residual-MLP cells ``s ← f_θi(s, m, e)`` with stacked parameters."""

    def __init__(
        self,
        n: int,
        *,
        d: int,
        d_msg: int,
        hidden: int,
        out_scale: float = 0.5,
        skip: str = "state",
    ):
        super().__init__()
        if skip not in ("state", "input"):
            raise ValueError(f"skip must be 'state' or 'input', got {skip!r}")
        self.n, self.d, self.d_msg, self.skip = n, d, d_msg, skip
        d_in = d + d_msg + d
        self.norm = StackedLayerNorm(n, d_in)
        self.fc1 = StackedLinear(n, d_in, hidden)
        # A small output layer keeps the initial map close to the identity,
        # which keeps early rounds tame (contractive-ish) before training.
        self.fc2 = StackedLinear(n, hidden, d, init_scale=out_scale)

    def step(self, s: torch.Tensor, m: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # s: (B, n, d), m: (B, n, d_m), e: (B, n, d) -> (B, n, d)
        z = self.norm(torch.cat([s, m, e], dim=-1))
        return (s if self.skip == "state" else e) + self.fc2(F.gelu(self.fc1(z)))

    def step_one(self, i: int, s: torch.Tensor, m: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # s: (B, d), m: (B, d_m), e: (B, d) -> (B, d), cell i only
        z = self.norm.forward_one(i, torch.cat([s, m, e], dim=-1))
        return (s if self.skip == "state" else e) + self.fc2.forward_one(
            i, F.gelu(self.fc1.forward_one(i, z))
        )

    def step_reference(self, s: torch.Tensor, m: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Per-cell loop, one small matmul chain per cell: the readable reference."""
        return torch.stack([self.step_one(i, s[:, i], m[:, i], e[:, i]) for i in range(self.n)], 1)
