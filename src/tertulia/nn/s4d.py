"""S4D: diagonal structured state-space layers (convolution and recurrent modes).

Each of the H channels is an independent single-input single-output diagonal
SSM with N/2 stored complex modes (the other half are their conjugates):

    x'(t) = Λ x(t) + B u(t),    y(t) = 2·Re(C x(t)) + D u(t)

discretised with step Δ_h = exp(clamp(log_dt_h, log 1e-4, log 1)) by ZOH or
bilinear (see :mod:`tertulia.nn.hippo`). The clamp keeps Δ finite and positive
whatever value the stored ``log_dt`` drifts to (a NaN-free kernel even if an
optimiser blows it up). Λ is parametrised as ``Re Λ = −exp(log_neg_re)`` and
``Im Λ = im``, so Re Λ < 0 (a stable system) for every parameter value
(|Re Λ| is floored at 1e-4 so ZOH's (e^{ΔΛ} − 1)/Λ never divides by zero).

*Convolution mode.* Unrolling the recurrence ``x_l = Ā x_{l−1} + B̄ u_l``,
``y_l = 2·Re(C x_l) + D u_l`` gives ``y = K * u + D ⊙ u`` with the causal
kernel

    K_l = 2·Re Σ_n C_n B̄_n Ā_n^l,    l = 0, …, L−1,

where ``Ā^l = exp(l·log Ā)`` (= exp(l·ΔΛ) for ZOH) is formed by broadcasting
(a Vandermonde product). The convolution runs through FFTs of length 2L so the
circular wrap-around never reaches the first L outputs:
``y = IFFT(FFT(u, 2L) · FFT(K, 2L))[:L]``.

*Recurrent mode* (:meth:`S4D.step`) runs the same system one step at a time
with a complex state (B, H, N/2); both modes agree to rounding (a test holds
them within 1e-8 in float64 at L = 2048).

*Bidirectional* layers add an anti-causal kernel K' on the same input,
``y_t += Σ_{j≥0} K'_j u_{t+1+j}``; they have no recurrent mode.

Legend: B batch, L sequence length, H channels (d_model), N state size,
N/2 stored complex modes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShapeError
from ..runtime import float32, full_precision
from .hippo import S4D_INITS, discretize_bilinear, discretize_zoh, s4d_init

KERNEL_INITS = (*S4D_INITS, "random")
_LOG_DT_MIN = math.log(1e-4)
_LOG_DT_MAX = math.log(1.0)
_MIN_NEG_RE = 1e-4  # |Re Λ| is floored here so ZOH's (e^{ΔΛ}−1)/Λ never sees Λ = 0


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


class S4DKernel(nn.Module):
    """Diagonal SSM kernel generator for H channels with N/2 complex modes each.

    Parameters (all shaped per channel): ``log_dt`` (H,), ``log_neg_re`` and
    ``im`` (H, N/2) for Λ, ``C_re``/``C_im`` (H, N/2) for C ~ CN(0, 1) (each
    part N(0, ½)), and ``B_re``/``B_im`` (H, N/2): parameters if
    ``learn_B`` else buffers (S4D's fixed B; ones for every init except
    "legs", whose B is the LegS B in the eigenbasis).

    ``init="random"`` is the "random A" baseline: Re Λ ~ −U(0.1, 1),
    Im Λ ~ U(0, π N/2), B = 1.
    """

    def __init__(
        self,
        d_model: int,
        N: int = 64,
        *,
        init: str = "legs",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        disc: str = "zoh",
        learn_B: bool = False,
    ):
        super().__init__()
        if d_model < 1:
            raise ValueError(f"d_model must be >= 1, got {d_model}")
        if N < 2 or N % 2:
            raise ValueError(f"N must be even and >= 2, got {N}")
        if init not in KERNEL_INITS:
            raise ValueError(f"unknown init {init!r}; expected one of {', '.join(KERNEL_INITS)}")
        if disc not in ("zoh", "bilinear"):
            raise ValueError(f"disc must be 'zoh' or 'bilinear', got {disc!r}")
        if not 0.0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.H, self.N, self.disc, self.init = d_model, N, disc, init
        # base learning rate of the SSM parameters, without weight decay (optim_groups);
        # None: they follow the model's default rule
        self.ssm_lr: float | None = None
        half = N // 2

        if init == "random":
            re = -(0.1 + 0.9 * torch.rand(half, dtype=torch.float64))
            im = math.pi * half * torch.rand(half, dtype=torch.float64)
            Lam, B = torch.complex(re, im), torch.ones(half, dtype=torch.complex128)
        else:
            Lam, B = s4d_init(init, N)
        dtype = torch.get_default_dtype()
        Lam = Lam.expand(d_model, half)
        B = B.expand(d_model, half)

        log_dt = torch.rand(d_model, dtype=torch.float64)
        log_dt = log_dt * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt.to(dtype))
        self.log_neg_re = nn.Parameter(torch.log(-Lam.real).to(dtype).clone())
        self.im = nn.Parameter(Lam.imag.to(dtype).clone())
        c = torch.randn(2, d_model, half, dtype=torch.float64) * math.sqrt(0.5)
        self.C_re = nn.Parameter(c[0].to(dtype))
        self.C_im = nn.Parameter(c[1].to(dtype))
        B_re, B_im = B.real.to(dtype).clone(), B.imag.to(dtype).clone()
        self.learn_B = learn_B
        if learn_B:
            self.B_re = nn.Parameter(B_re)
            self.B_im = nn.Parameter(B_im)
        else:
            self.register_buffer("B_re", B_re)
            self.register_buffer("B_im", B_im)

    def ssm_parameters(self) -> list[nn.Parameter]:
        """The parameters that define the dynamics: log_dt, Λ's parts and (if learnt) B."""
        params = [self.log_dt, self.log_neg_re, self.im]
        if self.learn_B:
            params += [self.B_re, self.B_im]
        return params

    def optim_groups(self) -> list[dict]:
        """The SSM parameters at their own base lr ``ssm_lr``, no weight decay
        (:mod:`tertulia.train.groups`; the state-spaces convention); none while ``ssm_lr``
        is None."""
        if self.ssm_lr is None:
            return []
        return [{"params": self.ssm_parameters(), "lr": self.ssm_lr, "weight_decay": 0.0}]

    def dt(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Step sizes Δ (H,) = exp(clamp(log_dt, log 1e-4, log 1))."""
        log_dt = self.log_dt if dtype is None else self.log_dt.to(dtype)
        return torch.exp(log_dt.clamp(_LOG_DT_MIN, _LOG_DT_MAX))

    def discrete(
        self, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(Ā, B̄, C)``, each complex (H, N/2), in ``dtype`` (default: the parameters')."""
        _, Abar, Bbar, C = self._discrete(dtype)
        return Abar, Bbar, C

    def _discrete(
        self, dtype: torch.dtype | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        # (log Ā, Ā, B̄, C); for ZOH log Ā = ΔΛ exactly (no log of an exp).
        real = self.log_dt.dtype if dtype is None else dtype
        cplx = _complex_dtype(real)
        neg_re = torch.exp(self.log_neg_re.to(real)).clamp_min(_MIN_NEG_RE)
        Lam = torch.complex(-neg_re, self.im.to(real))
        B = torch.complex(self.B_re.to(real), self.B_im.to(real))
        C = torch.complex(self.C_re.to(real), self.C_im.to(real))
        dt = self.dt(real)[:, None].to(cplx)
        if self.disc == "zoh":
            Abar, Bbar = discretize_zoh(Lam, B, dt)
            return Lam * dt, Abar, Bbar, C
        Abar, Bbar = discretize_bilinear(Lam, B, dt)
        return torch.log(Abar), Abar, Bbar, C

    def forward(self, L: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Alias of :meth:`kernel`."""
        return self.kernel(L, dtype=dtype)

    def kernel(self, L: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The real convolution kernel K (H, L), ``K_l = 2·Re Σ_n C_n B̄_n Ā_n^l``.

        Computed in ``dtype`` (float32 → complex64, float64 → complex128);
        defaults to the parameters' dtype.
        """
        if L < 1:
            raise ShapeError(f"kernel length L must be >= 1, got {L}")
        log_Abar, _, Bbar, C = self._discrete(dtype)
        ell = torch.arange(L, dtype=log_Abar.real.dtype, device=log_Abar.device)
        # Ā^l = exp(l · log Ā): (H, N/2, 1) · (L,) -> (H, N/2, L)
        vander = torch.exp(log_Abar[..., None] * ell)
        return 2.0 * torch.einsum("hn,hnl->hl", C * Bbar, vander).real


def _fft_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Convolution of u (B, H, L) with a kernel k (H, M), M ≤ 2L, through FFTs of length 2L.

    Returns the first L outputs ``y_t = Σ_s k_s u_{t−s}`` with indices of k read
    modulo 2L (so an anti-causal tail may sit at the end of k).
    """
    L = u.shape[-1]
    n = 2 * L
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y[..., :L]


class S4D(nn.Module):
    """One S4D layer: SSM convolution + skip D, nonlinearity, output projection.

    Input/output (B, L, H):

        v = K * u + D ⊙ u                         (per channel, FFT convolution)
        a = GELU(v)              activation="gelu"
        a = GLU(W_g v + b_g)     activation="glu"   (W_g: H → 2H, gated back to H)
        y = W_o dropout(a) + b_o                  (H → H)

    ``bidirectional`` adds an anti-causal kernel (2H kernel channels); such a
    layer has no recurrent mode.
    """

    def __init__(
        self,
        d_model: int,
        N: int = 64,
        init: str = "legs",
        *,
        dropout: float = 0.0,
        activation: str = "gelu",
        bidirectional: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        disc: str = "zoh",
        learn_B: bool = False,
    ):
        super().__init__()
        if activation not in ("gelu", "glu"):
            raise ValueError(f"activation must be 'gelu' or 'glu', got {activation!r}")
        self.H, self.N, self.bidirectional, self.activation = d_model, N, bidirectional, activation
        channels = 2 * d_model if bidirectional else d_model
        self.kernel = S4DKernel(
            channels, N, init=init, dt_min=dt_min, dt_max=dt_max, disc=disc, learn_B=learn_B
        )
        self.D = nn.Parameter(torch.randn(d_model))
        self.gate = nn.Linear(d_model, 2 * d_model) if activation == "glu" else None
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, d_model)

    # -- shape checks ---------------------------------------------------------
    def _check_seq(self, u: torch.Tensor) -> None:
        if u.ndim != 3 or u.shape[-1] != self.H or u.shape[1] < 1:
            raise ShapeError(
                f"S4D expects input (B, L, H) with H = d_model = {self.H} and L >= 1, "
                f"got shape {tuple(u.shape)}"
            )

    def _head(self, v: torch.Tensor) -> torch.Tensor:
        # v: (..., H) -> (..., H)
        a = F.glu(self.gate(v), dim=-1) if self.gate is not None else F.gelu(v)
        return self.out(self.dropout(a))

    # -- convolution mode -----------------------------------------------------
    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """(B, L, H) -> (B, L, H) through the FFT convolution."""
        self._check_seq(u)
        L = u.shape[1]
        with full_precision(u):  # the kernel and its FFT convolution never in bf16
            (u,) = float32(u)
            k = self.kernel.kernel(L, dtype=u.dtype)  # (H or 2H, L)
            if self.bidirectional:
                k_fwd, k_bwd = k[: self.H], k[self.H :]
                # positions 2L−1−j of the circular kernel = shift by −(j+1): anti-causal taps.
                k = F.pad(k_fwd, (0, L)) + F.pad(k_bwd.flip(-1), (L, 0))
            ut = u.transpose(1, 2)  # (B, H, L)
            v = _fft_conv(ut, k) + self.D.to(u.dtype)[:, None] * ut
        return self._head(v.transpose(1, 2))

    # -- recurrent mode -------------------------------------------------------
    def initial_state(self, batch: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Zero state (batch, H, N/2), complex (complex128 for float64 parameters)."""
        real = self.kernel.log_dt.dtype if dtype is None else dtype
        return torch.zeros(
            batch, self.H, self.N // 2, dtype=_complex_dtype(real), device=self.D.device
        )

    def _require_causal(self) -> None:
        if self.bidirectional:
            raise ShapeError(
                "a bidirectional S4D layer has no recurrent mode (needs future inputs)"
            )

    def step(self, u_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One recurrent step: u_t (B, H), state (B, H, N/2) -> (y_t (B, H), new state).

        ``x ← Ā x + B̄ u_t``, ``v = 2·Re Σ_n C_n x_n + D u_t``, then the head.
        The state's complex dtype sets the working precision.
        """
        self._require_causal()
        return self._step(u_t, state, self.kernel.discrete(state.real.dtype))

    def _step(
        self,
        u_t: torch.Tensor,
        state: torch.Tensor,
        disc: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.N // 2
        if u_t.ndim != 2 or u_t.shape[1] != self.H:
            raise ShapeError(f"S4D.step expects u_t (B, H={self.H}), got shape {tuple(u_t.shape)}")
        if state.shape != (u_t.shape[0], self.H, half) or not state.is_complex():
            raise ShapeError(
                f"S4D.step expects a complex state (B, H, N/2) = "
                f"({u_t.shape[0]}, {self.H}, {half}), "
                f"got {tuple(state.shape)} {state.dtype}"
            )
        Abar, Bbar, C = disc
        state = Abar * state + Bbar * u_t[..., None].to(state.dtype)
        v = 2.0 * (C * state).sum(-1).real.to(u_t.dtype) + self.D.to(u_t.dtype) * u_t
        return self._head(v), state

    def forward_recurrent(self, u: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, H) -> (B, L, H) by looping :meth:`step` over time (zero state by default)."""
        self._require_causal()
        self._check_seq(u)
        if state is None:
            state = self.initial_state(u.shape[0], dtype=u.dtype)
        disc = self.kernel.discrete(state.real.dtype)
        ys = []
        for t in range(u.shape[1]):
            y_t, state = self._step(u[:, t], state, disc)
            ys.append(y_t)
        return torch.stack(ys, dim=1)


def ssm_parameter_groups(
    model: nn.Module,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    ssm_lr: float = 1e-3,
) -> list[dict]:
    """Optimizer param groups: SSM dynamics (log_dt, Λ, learnt B) with ``ssm_lr`` and no decay.

    Every other trainable parameter (C, D, linear layers, …) gets ``lr`` and
    ``weight_decay``. Each parameter appears in exactly one group; empty groups
    are left out.
    """
    ssm_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, S4DKernel):
            ssm_ids.update(id(p) for p in module.ssm_parameters())
    ssm: list[nn.Parameter] = []
    rest: list[nn.Parameter] = []
    seen: set[int] = set()
    params: Iterable[nn.Parameter] = model.parameters()
    for p in params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (ssm if id(p) in ssm_ids else rest).append(p)
    groups: list[dict] = []
    if rest:
        groups.append({"params": rest, "lr": lr, "weight_decay": weight_decay})
    if ssm:
        groups.append({"params": ssm, "lr": ssm_lr, "weight_decay": 0.0})
    return groups
