"""Small causal sequence models over tokens: a Transformer (full or sliding-window
attention), a Mamba stack and a HOPE stack share one language-model shell.

    h_0 = E[x] (+ P[t] for attention)      h_ℓ = h_{ℓ−1} + mixer_ℓ(LN(h_{ℓ−1}))
                                            h_ℓ ← h_ℓ + MLP_ℓ(LN(h_ℓ))   (where the block has one)
    logits = LN(h_L) Eᵀ                      (tied input / output embedding)

Attention is causal and, with ``window`` W, banded: token t attends to tokens
t−W+1 … t only (sliding-window attention, the baseline of the ``recall``
recipe). A HOPE block (Behrouz et al., "Nested Learning") is a self-modifying
Titans memory (:class:`tertulia.nn.titans.NeuralMemory`) as the mixer followed
by continuum-memory MLP levels (:class:`tertulia.nn.memory.Level`) in place of
the single MLP; under :class:`tertulia.optim.MultiFrequency` those levels
update at their own periods.

Legend: B batch, L tokens, d width, V vocabulary, W attention window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .mamba import MambaBlock
from .memory import Level


def band_mask(length: int, window: int | None, device: torch.device | None = None) -> torch.Tensor:
    """Bool (L, L) mask, True where query t may attend key s: s ≤ t and t − s < window."""
    t = torch.arange(length, device=device)
    diff = t[:, None] - t[None, :]
    allowed = diff >= 0
    if window is not None:
        allowed &= diff < window
    return allowed


class Attention(nn.Module):
    """Multi-head causal self-attention, optionally restricted to a sliding window."""

    def __init__(self, d: int, heads: int = 4, window: int | None = None):
        super().__init__()
        if d % heads:
            raise ValueError(f"width d={d} must be divisible by heads={heads}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, d/H)
        if self.window is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            mask = band_mask(length, self.window, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, length, d))


class MLP(nn.Module):
    def __init__(self, d: int, mult: int = 4):
        super().__init__()
        self.up, self.down = nn.Linear(d, mult * d), nn.Linear(mult * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """``h + mixer(LN h)`` then, if ``mlp`` is given, ``h + mlp(LN h)`` (pre-norm residuals).

    ``levels`` (continuum-memory MLP levels) follow instead of / after the MLP;
    each :class:`Level` carries its own norm and residual.
    """

    def __init__(
        self,
        d: int,
        mixer: nn.Module,
        mlp: nn.Module | None = None,
        levels: Sequence[nn.Module] = (),
    ):
        super().__init__()
        self.norm1, self.mixer = nn.LayerNorm(d), mixer
        self.norm2 = nn.LayerNorm(d) if mlp is not None else None
        self.mlp = mlp
        self.levels = nn.ModuleList(levels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.mixer(self.norm1(h))
        if self.mlp is not None and self.norm2 is not None:
            h = h + self.mlp(self.norm2(h))
        for level in self.levels:
            h = level(h)
        return h


class TokenLM(nn.Module):
    """Embedding → blocks → norm → tied output: logits (B, L, V) of tokens (B, L)."""

    def __init__(self, vocab: int, d: int, blocks: Sequence[nn.Module], *, positions: int = 0):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.pos = nn.Embedding(positions, d) if positions else None
        if self.pos is not None:
            nn.init.normal_(self.pos.weight, std=0.02)
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(d)
        self.positions = positions

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        if self.pos is not None:
            if tokens.shape[1] > self.positions:
                raise ValueError(
                    f"sequence of {tokens.shape[1]} tokens is longer than the model's "
                    f"{self.positions} positions"
                )
            h = h + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            h = block(h)
        return self.norm(h) @ self.embed.weight.T


def transformer_lm(
    vocab: int,
    d: int,
    layers: int,
    *,
    heads: int = 4,
    context: int = 256,
    window: int | None = None,
    mlp_mult: int = 4,
) -> TokenLM:
    """A GPT-style Transformer (learned positions), full or sliding-window attention."""
    blocks = [Block(d, Attention(d, heads, window), MLP(d, mlp_mult)) for _ in range(layers)]
    return TokenLM(vocab, d, blocks, positions=context)


def mamba_lm(vocab: int, d: int, layers: int, *, d_state: int = 16, expand: int = 2) -> TokenLM:
    """A Mamba stack (each block: the selective-SSM mixer, no MLP, as in Mamba)."""
    blocks = [Block(d, MambaBlock(d, d_state=d_state, expand=expand)) for _ in range(layers)]
    return TokenLM(vocab, d, blocks)


def hope_lm(
    vocab: int,
    d: int,
    layers: int,
    *,
    memory: Callable[[], nn.Module],
    periods: Sequence[int] = (1, 4, 16),
    level_mult: int = 2,
) -> TokenLM:
    """HOPE: each block a test-time-learning memory (``memory()``, behind a token shift)
    then CMS levels, level ℓ updated every ``periods[ℓ]`` steps (:meth:`Level.optim_groups`)."""
    blocks = [
        Block(
            d,
            TokenShift(d, memory()),
            levels=[Level(d, level_mult * d, period=int(c)) for c in periods],
        )
        for _ in range(layers)
    ]
    return TokenLM(vocab, d, blocks)


class TokenShift(nn.Module):
    """``inner(W [h_{t−1}; h_t])``: each position also sees its predecessor (h_{−1} = 0), so a
    memory written at token t can bind the previous token (a key) to this one (its value)."""

    def __init__(self, d: int, inner: nn.Module):
        super().__init__()
        self.mix = nn.Linear(2 * d, d)
        self.inner = inner

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        prev = F.pad(h, (0, 0, 1, 0))[:, :-1]
        return self.inner(self.mix(torch.cat([prev, h], dim=-1)))


def memory_lm(vocab: int, d: int, layers: int, *, memory: Callable[[], nn.Module]) -> TokenLM:
    """A stack of test-time-learning memories (each behind a token shift) with MLPs."""
    blocks = [Block(d, TokenShift(d, memory()), MLP(d, 2)) for _ in range(layers)]
    return TokenLM(vocab, d, blocks)
