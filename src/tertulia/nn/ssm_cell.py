"""The SSM cell bank: each round, a cell re-reads its patch through a diagonal SSM.

A cell's local window is its patch of the last w frames: P points, each with w
values. It is lifted once per forward pass, point by point, to h channels,
``u_i = lift_i(x_i)`` of shape (P, h). Every round the cell scans that window
along space with a bidirectional diagonal state-space model whose step size is
*chosen by the conversation*: the cell's state and its message select Δ, as
Mamba's inputs select theirs. The scan's read-out then drives a TRM update:

    Δ_i = softplus(W_Δ,i [s_i, m_i] + b_Δ,i)                 (h,)  one step per channel
    Ā = exp(Δ Λ_i),  B̄ = (Ā − 1)/Λ_i                        ZOH, Λ_i = −e^{a_i} + i ω_i  (h, N/2)
    K→[l] = 2 Re Σ_k C→_k B̄_k Ā_k^l,  K←[l] likewise with C←      l = 0 … P−1
    y[p]  = Σ_{q≤p} K→[p−q] u[q] + Σ_{q>p} K←[q−p−1] u[q] + D ∘ u[p]        (P, h)
    r_i   = R_i · vec(gelu(y))                               (d,)  the cell's reading
    s_i'  = TRM_i(s_i, m_i, r_i)                             (:class:`~tertulia.nn.cells.CellBank`)

so the forward scan carries information left to right across the patch and
the backward scan right to left; the two together give every point a view of
the whole patch, near points weighted by the learned kernel. The initial state
is the reading at the selector's rest point, ``S0 = r(Δ0)`` with
``Δ0 = softplus(b_Δ)``, so before any conversation each cell has read its
window at its own default time scales.

Λ starts at S4D-Lin (−½ + iπk, k = 0 … N/2−1) in every channel, b_Δ at the
inverse softplus of a log-uniform Δ in ``[dt_min, dt_max]`` (the Mamba dt
init), and the selector's weights small, so Δ starts close to Δ0. The
dynamics parameters (Λ's parts) learn without weight decay (state-spaces
convention: no decay on the SSM; :meth:`SSMCellBank.optim_groups`).

Two paths compute y. ``step`` builds the kernels by a Vandermonde product and
applies both directions at once as one circular FFT convolution of length 2P
(the backward kernel sits at the negative lags; a dense Toeplitz gather was 3×
slower, its backward an index_put).
``step_reference`` is the literal recurrence, a per-cell loop over cells and
points with the complex state ``x ← Ā x + B̄ u``; a test holds the two equal in
float64. ``skip`` has the TRM meaning with ``r_i`` as the input.

Legend: B batch, n cells, P patch points, w window, h SSM channels, N state
size per channel (N/2 stored complex modes), d state, d_m message.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import float32, full_precision
from .cells import CellBank
from .stacked import StackedLinear

_LOG_NEG_RE_MIN = math.log(1e-4)  # |Re Λ| floor: keeps (Ā − 1)/Λ away from 0/0


def _softplus_inverse(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


class SSMCellBank(nn.Module):
    """``n`` cells whose round scans their patch with a state/message-selected diagonal SSM."""

    def __init__(
        self,
        n: int,
        *,
        d: int,
        d_msg: int,
        hidden: int,
        patch: int,
        window: int,
        channels: int = 8,
        state: int = 16,
        dt_min: float = 1e-2,
        dt_max: float = 1e-1,
        skip: str = "state",
    ):
        """Args:
        n: cells; d, d_msg: state and message sizes; hidden: TRM MLP width.
        patch: points P per cell; window: frames w per point.
        channels: SSM channels h; state: state size N per channel (even).
        dt_min, dt_max: range of the initial step sizes Δ0 (log-uniform).
        skip: TRM skip, ``"state"`` or ``"input"`` (see :class:`CellBank`).
        """
        super().__init__()
        if state < 2 or state % 2:
            raise ValueError(f"the ssm cell needs an even state size N >= 2, got {state}")
        if channels < 1:
            raise ValueError(f"the ssm cell needs channels >= 1, got {channels}")
        if not 0.0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.n, self.d, self.d_msg = n, d, d_msg
        self.patch, self.window, self.channels, self.state = patch, window, channels, state
        h, half = channels, state // 2
        self.lift = StackedLinear(n, window, h)
        self.select = StackedLinear(n, d + d_msg, h, init_scale=0.1)
        dt = torch.exp(torch.rand(n, h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():
            self.select.bias.copy_(_softplus_inverse(dt))
        k = torch.arange(half, dtype=torch.float32)
        self.log_neg_re = nn.Parameter(torch.full((n, h, half), math.log(0.5)))
        self.im = nn.Parameter((math.pi * k).expand(n, h, half).clone())
        c = torch.randn(2, n, 2, h, half) * math.sqrt(0.5 / half)
        self.C_re = nn.Parameter(c[0])  # (n, 2, h, N/2): forward and backward read-outs
        self.C_im = nn.Parameter(c[1])
        self.D = nn.Parameter(torch.ones(n, h))
        self.read = StackedLinear(n, patch * h, d)
        self.trm = CellBank(n, d=d, d_msg=d_msg, hidden=hidden, skip=skip)

    def optim_groups(self) -> list[dict]:
        """Optimiser settings of the bank's own (:mod:`tertulia.train.groups`): Λ's parts
        without weight decay."""
        return [{"params": [self.log_neg_re, self.im], "weight_decay": 0.0}]

    # ------------------------------------------------------------------ pieces

    def lift_window(self, x: torch.Tensor) -> torch.Tensor:
        """Lift the local windows point by point: x (B, n, P, w) -> u (B, n, P, h)."""
        b = x.shape[0]
        flat = x.transpose(1, 2).reshape(b * self.patch, self.n, self.window)
        u = self.lift(flat).reshape(b, self.patch, self.n, self.channels)
        return u.transpose(1, 2)

    def _lambda(self, rows: slice | int = slice(None)) -> torch.Tensor:
        neg_re = torch.exp(self.log_neg_re[rows].clamp(min=_LOG_NEG_RE_MIN))
        return torch.complex(-neg_re, self.im[rows])

    def _discrete(self, dt: torch.Tensor, rows: slice | int = slice(None)):
        # dt: (..., h) real -> ΔΛ, Ā, B̄: (..., h, N/2) complex; C: (2, [n,] h, N/2)
        # (C is stored (n, 2, h, N/2) so every parameter is stacked per cell)
        lam = self._lambda(rows)
        dtl = dt.to(lam.dtype)[..., None] * lam
        abar = torch.exp(dtl)
        c = torch.complex(self.C_re[rows], self.C_im[rows]).transpose(0, -3)
        return dtl, abar, (abar - 1.0) / lam, c

    def step_sizes(self, s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Δ (B, n, h) selected by state and message."""
        return F.softplus(self.select(torch.cat([s, m], dim=-1)))

    def rest_step_sizes(self) -> torch.Tensor:
        """Δ0 (n, h): the step sizes with the selector's input at zero."""
        return F.softplus(self.select.bias)

    def kernels(self, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward kernels K→, K← (B, n, h, P) for step sizes dt (B, n, h)."""
        dtl, _, bbar, c = self._discrete(dt)  # (B, n, h, N/2) ×3, (2, n, h, N/2)
        lags = torch.arange(self.patch, device=dt.device, dtype=dtl.real.dtype)
        # 2 Re(w Ā^l) = 2 |w| e^{l Δ Re Λ} cos(l Δ Im Λ + arg w), in real arithmetic:
        # torch's complex exp is not vectorised on the CPU and a batched matmul over
        # N/2 modes is too thin to pay, so this is elementwise work and one sum.
        decay = torch.exp(dtl.real[..., None] * lags)  # (B, n, h, N/2, P)
        phase = dtl.imag[..., None] * lags
        out = []
        for w in (c[0] * bbar, c[1] * bbar):
            amp = 2 * w.abs()[..., None] * decay
            out.append((amp * torch.cos(phase + w.angle()[..., None])).sum(-2))
        return out[0], out[1]

    def scan(self, u: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """y (B, n, P, h) of the bidirectional SSM over u (B, n, P, h) with steps dt (B, n, h);
        the kernels and the FFT convolution run in float32 or float64, outside autocast."""
        with full_precision(u):
            return self._scan(*float32(u, dt))

    def _scan(self, u: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        kf, kb = self.kernels(dt)  # (B, n, h, P) each
        P = self.patch
        # One circular convolution of length 2P holds both directions: lag l ≥ 0 sits
        # at index l (K→[l]), lag −l (l = 1 … P−1) at index 2P − l (K←[l − 1]).
        k = torch.cat([kf, kf.new_zeros(*kf.shape[:-1], 1), kb[..., : P - 1].flip(-1)], -1)
        spec = torch.fft.rfft(k, n=2 * P) * torch.fft.rfft(u.transpose(-1, -2), n=2 * P)
        y = torch.fft.irfft(spec, n=2 * P)[..., :P].transpose(-1, -2)
        return y + self.D[:, None] * u

    def reading(self, u: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """r (B, n, d) = R · vec(gelu(scan(u, dt)))."""
        y = F.gelu(self.scan(u, dt))
        return self.read(y.reshape(*y.shape[:2], -1))

    # ------------------------------------------------------------------ rounds

    def initial(self, u: torch.Tensor) -> torch.Tensor:
        """S0 (B, n, d): every cell's reading at its rest step sizes."""
        dt = self.rest_step_sizes().expand(u.shape[0], -1, -1)
        return self.reading(u, dt)

    def step(self, s: torch.Tensor, m: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        # s: (B, n, d), m: (B, n, d_m), u: (B, n, P, h) -> (B, n, d)
        r = self.reading(u, self.step_sizes(s, m))
        return self.trm.step(s, m, r)

    def step_one(self, i: int, s: torch.Tensor, m: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        # s: (B, d), m: (B, d_m), u: (B, P, h) -> (B, d), cell i only
        dt = F.softplus(self.select.forward_one(i, torch.cat([s, m], dim=-1)))
        y = F.gelu(self._scan_recurrent(i, u, dt))
        r = self.read.forward_one(i, y.reshape(y.shape[0], -1))
        return self.trm.step_one(i, s, m, r)

    def _scan_recurrent(self, i: int, u: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        # The literal recurrence for cell i: u (B, P, h), dt (B, h) -> y (B, P, h)
        _, abar, bbar, c = self._discrete(dt, i)  # (B, h, N/2) ×3, (2, h, N/2)
        b, P = u.shape[0], self.patch
        cu = u.to(abar.dtype)
        x = torch.zeros_like(abar)
        fwd = []
        for p in range(P):
            x = abar * x + bbar * cu[:, p, :, None]
            fwd.append(2 * (c[0] * x).sum(-1).real)
        z = torch.zeros_like(abar)
        bwd: list[torch.Tensor] = [u.new_zeros(b, self.channels)] * P
        for p in range(P - 1, -1, -1):
            bwd[p] = 2 * (c[1] * z).sum(-1).real
            z = abar * z + bbar * cu[:, p, :, None]
        return torch.stack(fwd, 1) + torch.stack(bwd, 1) + self.D[i] * u

    def step_reference(self, s: torch.Tensor, m: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Per-cell loop with the literal point-by-point recurrence: the readable reference."""
        return torch.stack([self.step_one(i, s[:, i], m[:, i], u[:, i]) for i in range(self.n)], 1)

    def extra_repr(self) -> str:
        return (
            f"n={self.n}, d={self.d}, patch={self.patch}, channels={self.channels}, N={self.state}"
        )
