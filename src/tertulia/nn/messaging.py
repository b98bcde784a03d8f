"""Attention messages between neighbouring nodes, seed eqs. (2)–(3).

Every node j emits ``u_j = emit_j(s_j)``; node i receives

    m_i = Σ_{j ∈ N(i)} α_ij · proj(u_j),   α_ij = softmax_j( q_i(s_i) · k(u_j) / √d_k )

where N(i) are the senders of i in the graph. ``emit`` and ``q`` belong to
each node (stacked weights); ``k`` and ``proj`` are the shared protocol W of
eq. (2). A node without senders receives the zero message (not NaN).

``forward`` is the batched kernel; ``reference`` the per-receiver loop over
explicit neighbour lists; ``message_to(i, S)`` serves asynchronous schedules.

Legend: B batch, N nodes, d state, d_m message, d_k key.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .graph import Graph
from .stacked import StackedLinear


class AttentionMessenger(nn.Module):
    """Masked dot-product attention over the graph's receive matrix."""

    def __init__(self, graph: Graph, *, d: int, d_msg: int, d_key: int):
        super().__init__()
        n_nodes = graph.nodes
        self.emit = StackedLinear(n_nodes, d, d_msg)
        self.query = StackedLinear(n_nodes, d, d_key)
        self.key = nn.Linear(d_msg, d_key)
        self.proj = nn.Linear(d_msg, d_msg)
        self.scale = 1.0 / math.sqrt(d_key)
        adjacency = graph.adjacency()
        self.register_buffer("adjacency", adjacency, persistent=False)
        self.register_buffer("has_senders", adjacency.any(dim=1), persistent=False)
        self.senders = [torch.nonzero(adjacency[i]).flatten().tolist() for i in range(n_nodes)]

    def forward(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # s: (B, N, d) -> messages (B, N, d_m), attention (B, N, N) [receiver, sender]
        u = self.emit(s)
        q = self.query(s)
        k, v = self.key(u), self.proj(u)
        scores = torch.einsum("bik,bjk->bij", q, k) * self.scale
        scores = scores.masked_fill(~self.adjacency, float("-inf"))
        alpha = torch.softmax(scores, dim=-1)
        alpha = torch.where(self.has_senders[:, None], alpha, torch.zeros_like(alpha))
        return alpha @ v, alpha

    def message_to(self, i: int, s: torch.Tensor) -> torch.Tensor:
        # s: (B, N, d) -> message to node i (B, d_m), from the current states
        senders = self.senders[i]
        if not senders:
            return s.new_zeros(s.shape[0], self.proj.out_features)
        u = torch.stack([self.emit.forward_one(j, s[:, j]) for j in senders], dim=1)
        q = self.query.forward_one(i, s[:, i])
        scores = torch.einsum("bk,bjk->bj", q, self.key(u)) * self.scale
        alpha = torch.softmax(scores, dim=-1)
        return torch.einsum("bj,bjm->bm", alpha, self.proj(u))

    def reference(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-receiver loop over explicit neighbour lists (slow, readable)."""
        batch, n_nodes, _ = s.shape
        messages = s.new_zeros(batch, n_nodes, self.proj.out_features)
        alpha = s.new_zeros(batch, n_nodes, n_nodes)
        for i in range(n_nodes):
            senders = self.senders[i]
            if not senders:
                continue  # nobody talks to i: zero message, zero attention
            u = torch.stack([self.emit.forward_one(j, s[:, j]) for j in senders], dim=1)
            q = self.query.forward_one(i, s[:, i])
            a = torch.softmax(torch.einsum("bk,bjk->bj", q, self.key(u)) * self.scale, dim=-1)
            alpha[:, i, senders] = a
            messages[:, i] = torch.einsum("bj,bjm->bm", a, self.proj(u))
        return messages, alpha


class MemorySlots(nn.Module):
    """Shared memory slots written by attention: ``s_k ← (1−g_k) s_k + g_k tanh(W_k m_k + b_k)``.

    Slots are graph nodes: they receive attention messages from every cell
    (the write) and cells attend to their emissions (the read). The convex
    gated write keeps slot states bounded across rounds.
    """

    def __init__(self, slots: int, *, d: int, d_msg: int):
        super().__init__()
        self.slots = slots
        self.init = nn.Parameter(torch.randn(slots, d) * 0.1)
        self.write = StackedLinear(slots, d_msg, d)
        self.gate = nn.Parameter(torch.full((slots, 1), -1.0))

    def initial(self, batch: int) -> torch.Tensor:
        return self.init.expand(batch, -1, -1)

    def update(self, s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        # s: (B, K, d), m: (B, K, d_m) -> (B, K, d)
        g = torch.sigmoid(self.gate)
        return (1 - g) * s + g * torch.tanh(self.write(m))

    def update_one(self, k: int, s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        # s: (B, d), m: (B, d_m), slot k only
        g = torch.sigmoid(self.gate[k])
        return (1 - g) * s + g * torch.tanh(self.write.forward_one(k, m))
