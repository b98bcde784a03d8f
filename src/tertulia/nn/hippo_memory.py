"""HiPPO-LegS memory layer: a fixed scale-invariant recurrence per channel (HiPPO-RNN / LSSL).

Each of the H channels drives its own N-dimensional memory with the same
fixed pair (A, B): the HiPPO-LegS matrices, or the "random A" control of equal
size and spectrum range (see :mod:`tertulia.nn.hippo`). In continuous time

    c'(t) = (1/t)(A c(t) + B u(t))

so c(t) holds the coefficients of u's whole history [0, t] on Legendre
polynomials scaled to that window. Bilinear discretisation at step k with
t = k + 1 (:func:`~tertulia.nn.hippo.legs_transitions`):

    c_{k+1} = Ā_k c_k + B̄_k u_k,     c_0 = 0
    v_k     = Σ_n C_hn c_{k+1,hn} + D_h u_k        (per channel h)
    y_k     = W_o GELU(v_k) + b_o                  (H → H, as in S4D)

A and B are buffers (float64), not parameters; only C (H, N), D (H,) and the
output projection are learnt. The transitions are computed in float64, cast
to the input's dtype and cached per (L, dtype, device) in a plain dict (not in
the state_dict). The forward pass loops over time; :meth:`HippoMemory.step`
runs one step for inference and :meth:`HippoMemory.reference` is the
continuous-time-literal loop (an explicit inverse per step) that holds the
vectorised transitions honest.

Legend: B batch, L steps, H channels (d_model), N memory size, k step index.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShapeError
from ..runtime import float32, full_precision
from .hippo import hippo_legs, legs_transitions, random_memory_matrix

MEMORY_INITS = ("legs", "random")


class HippoMemory(nn.Module):
    """H parallel fixed HiPPO memories of size N, a learnt readout C, skip D and output head.

    Input/output (B, L, H). ``init="legs"`` uses the HiPPO-LegS A;
    ``init="random"`` the control ``A = (N/2)(G − I)``, ``G ~ N(0, 1/N)``
    drawn with ``seed``. Both use the LegS B and the same discretisation.
    The layer has no ``ssm_parameters`` (its dynamics are fixed).
    """

    def __init__(self, d_model: int, N: int = 64, *, init: str = "legs", seed: int = 0):
        super().__init__()
        if d_model < 1:
            raise ValueError(f"d_model must be >= 1, got {d_model}")
        if N < 1:
            raise ValueError(f"N must be >= 1, got {N}")
        if init not in MEMORY_INITS:
            raise ValueError(f"unknown init {init!r}; expected one of {', '.join(MEMORY_INITS)}")
        self.H, self.N, self.init = d_model, N, init
        A, B = hippo_legs(N)
        if init == "random":
            A = random_memory_matrix(N, seed=seed)
        self.register_buffer("A", A)
        self.register_buffer("B", B)
        self.C = nn.Parameter(torch.randn(d_model, N) / math.sqrt(N))
        self.D = nn.Parameter(torch.randn(d_model))
        self.out = nn.Linear(d_model, d_model)
        self._cache: dict[tuple[int, torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}

    def extra_repr(self) -> str:
        return f"d_model={self.H}, N={self.N}, init={self.init!r}"

    # -- transitions ----------------------------------------------------------
    def transitions(
        self, L: int, dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Ā (L, N, N), B̄ (L, N))`` for steps 0 … L−1, in ``dtype`` (default float64), cached."""
        dtype = torch.float64 if dtype is None else dtype
        device = self.A.device if device is None else torch.device(device)
        key = (L, dtype, device)
        if key not in self._cache:
            Abar, Bbar = legs_transitions(self.A.to(torch.float64), self.B.to(torch.float64), L)
            self._cache[key] = (Abar.to(device, dtype), Bbar.to(device, dtype))
        Abar, Bbar = self._cache[key]
        return Abar, Bbar

    # -- shape checks ---------------------------------------------------------
    def _check_seq(self, u: torch.Tensor) -> None:
        if u.ndim != 3 or u.shape[-1] != self.H or u.shape[1] < 1:
            raise ShapeError(
                f"HippoMemory expects input (B, L, H) with H = d_model = {self.H} and L >= 1, "
                f"got shape {tuple(u.shape)}"
            )

    def _readout(self, mem: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        # mem (..., H, N), u (..., H) -> (..., H)
        v = (mem * self.C.to(u.dtype)).sum(-1) + self.D.to(u.dtype) * u
        return self.out(F.gelu(v))

    # -- sequence mode --------------------------------------------------------
    def memory(self, u: torch.Tensor) -> torch.Tensor:
        """The memories c_1 … c_L (B, L, H, N) of input u (B, L, H), in u's dtype."""
        self._check_seq(u)
        batch, L, H = u.shape
        Abar, Bbar = self.transitions(L, u.dtype, u.device)
        AbarT = Abar.transpose(1, 2).contiguous()
        ut = u.transpose(0, 1).reshape(L, batch * H, 1)  # time-major, c is (B·H, N)
        c = u.new_zeros(batch * H, self.N)
        cs = []
        # unbind, not u[:, k]: the backward of L selects would build L full-size zero tensors.
        for u_k, AT_k, B_k in zip(ut.unbind(0), AbarT.unbind(0), Bbar.unbind(0), strict=True):
            c = torch.addmm(u_k * B_k, c, AT_k)  # c ← c Ā_kᵀ + B̄_k u_k
            cs.append(c)
        return torch.stack(cs, dim=0).reshape(L, batch, H, self.N).transpose(0, 1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """(B, L, H) -> (B, L, H): memory recurrence, readout C and skip D, GELU, output.
        The recurrence runs in float32 or float64, outside autocast."""
        with full_precision(u):
            (u,) = float32(u)
            c = self.memory(u)
        return self._readout(c, u)

    def reference(self, u: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` by the literal per-step formulas (float64 inverse each step); slow."""
        self._check_seq(u)
        A, B = self.A.to(torch.float64), self.B.to(torch.float64)
        eye = torch.eye(self.N, dtype=torch.float64, device=A.device)
        u64 = u.to(torch.float64)
        c = torch.zeros(u.shape[0], self.H, self.N, dtype=torch.float64, device=u.device)
        cs = []
        for k in range(u.shape[1]):
            t = float(k + 1)
            M = torch.linalg.inv(eye - A / (2.0 * t))
            Abar, Bbar = M @ (eye + A / (2.0 * t)), M @ (B / t)
            c = torch.einsum("nm,bhm->bhn", Abar, c) + u64[:, k, :, None] * Bbar
            cs.append(c)
        return self._readout(torch.stack(cs, dim=1).to(u.dtype), u)

    # -- recurrent mode -------------------------------------------------------
    def initial_state(self, batch: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Zero memory (batch, H, N) in ``dtype`` (default: the parameters')."""
        dtype = self.C.dtype if dtype is None else dtype
        return torch.zeros(batch, self.H, self.N, dtype=dtype, device=self.C.device)

    def step(
        self, u_t: torch.Tensor, state: torch.Tensor, t: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step at 0-based index t: u_t (B, H), state (B, H, N) -> (y_t (B, H), new state).

        ``c ← Ā_t c + B̄_t u_t`` with the transitions of step t, then the readout and head.
        """
        if u_t.ndim != 2 or u_t.shape[1] != self.H:
            raise ShapeError(
                f"HippoMemory.step expects u_t (B, H={self.H}), got shape {tuple(u_t.shape)}"
            )
        if state.shape != (u_t.shape[0], self.H, self.N):
            raise ShapeError(
                f"HippoMemory.step expects a state (B, H, N) = ({u_t.shape[0]}, {self.H}, "
                f"{self.N}), got {tuple(state.shape)}"
            )
        if t < 0:
            raise ValueError(f"step index t must be >= 0, got {t}")
        Abar, Bbar = legs_transitions(self.A, self.B, 1, start=t)
        Abar, Bbar = Abar[0].to(state), Bbar[0].to(state)
        state = state @ Abar.T + u_t[..., None].to(state.dtype) * Bbar
        return self._readout(state.to(u_t.dtype), u_t), state
