"""HiPPO-LegS matrices, their normal-plus-low-rank form, and diagonal (S4D) inits.

The LegS operator projects a signal's history onto scaled Legendre
polynomials; as a continuous-time system ``x' = A x + B u`` it has

    A_nk = −√(2n+1) √(2k+1)   (n > k)
    A_nn = −(n + 1)
    A_nk = 0                  (n < k)
    B_n  = √(2n+1)

*Normal plus low rank.* With ``P_n = √(n + ½)`` we have
``(P Pᵀ)_nk = ½ √(2n+1) √(2k+1)``, so ``S = A + P Pᵀ`` has diagonal
``−(n+1) + (n+½) = −½``, entries ``−½√(2n+1)√(2k+1)`` below the diagonal and
``+½√(2n+1)√(2k+1)`` above it: ``S = −½ I + K`` with K real skew-symmetric.
``−i K`` is Hermitian, so ``K = V diag(iω) V*`` with V unitary and ω real, and

    A = V Λ V* − P Pᵀ,    Λ = −½ + iω.

K is real, so its eigenvalues come in pairs ±iω; S4D-LegS keeps the normal
part's eigenvalues with ω > 0 (half of each conjugate pair) and drops the
low-rank term.

*Diagonal inits* (:func:`s4d_init`) return the ``N/2`` stored eigenvalues and
input vector of a diagonal system whose other half is the complex conjugate,
so a real kernel is ``K_l = 2·Re Σ_n C_n B̄_n Ā_n^l``.

*Discretisation* of the diagonal system ``x' = Λ x + B u`` with step Δ
(elementwise, any broadcastable shapes):

    ZOH:       Ā = e^{ΔΛ},                 B̄ = (e^{ΔΛ} − 1)/Λ · B
    bilinear:  Ā = (1 + ΔΛ/2)/(1 − ΔΛ/2),  B̄ = Δ/(1 − ΔΛ/2) · B

*Scale-invariant LegS memory* (:func:`legs_transitions`, HiPPO-RNN / LSSL
with fixed A): ``c'(t) = (1/t)(A c(t) + B u(t))``, discretised at step
k = 0 … L−1 with t = k + 1 by the bilinear rule:

    M_k = (I − A/(2t))⁻¹,   Ā_k = M_k (I + A/(2t)),   B̄_k = M_k B/t
    c_{k+1} = Ā_k c_k + B̄_k u_k,   c_0 = 0

*Random control* (:func:`random_memory_matrix`): ``A = (N/2)(G − I)`` with
``G_nk ~ N(0, 1/N)``; its spectrum lies near the disc of radius N/2 centred
at −N/2 (left half-plane, magnitudes comparable to LegS's −1 … −N).

Legend: N state size (even for the diagonal inits), N/2 stored modes,
L steps, k step index, t = k + 1 the memory's time.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

S4D_INITS = ("legs", "lin", "inv", "real")


def hippo_legs(N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The HiPPO-LegS pair ``(A (N, N), B (N,))`` in float64."""
    if N < 1:
        raise ValueError(f"N must be >= 1, got {N}")
    q = torch.sqrt(2.0 * torch.arange(N, dtype=torch.float64) + 1.0)  # (N,)
    A = -torch.tril(q[:, None] * q[None, :], diagonal=-1)
    A = A - torch.diag(torch.arange(1, N + 1, dtype=torch.float64))
    return A, q.clone()


class LegSNPLR(NamedTuple):
    """``A = V diag(Lambda) V* − P Pᵀ`` for HiPPO-LegS.

    Lambda (N,) complex128 with real part −½ (ascending imaginary part),
    V (N, N) complex128 unitary, P (N,) float64, B (N,) float64 (LegS B).
    """

    Lambda: torch.Tensor
    V: torch.Tensor
    P: torch.Tensor
    B: torch.Tensor


def legs_nplr(N: int) -> LegSNPLR:
    """Normal-plus-low-rank decomposition of HiPPO-LegS (see the module docstring)."""
    A, B = hippo_legs(N)
    P = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)
    S = A + P[:, None] * P[None, :]  # −½ I + skew
    K = S + 0.5 * torch.eye(N, dtype=torch.float64)
    omega, V = torch.linalg.eigh(-1j * K.to(torch.complex128))  # K = V diag(iω) V*
    Lambda = torch.complex(torch.full_like(omega, -0.5), omega)
    return LegSNPLR(Lambda=Lambda, V=V, P=P, B=B)


def s4d_init(kind: str, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonal init ``(Lambda (N/2,), B (N/2,))``, both complex128.

    * ``"legs"``: eigenvalues of the LegS normal part with positive imaginary
      part (real part −½); B = V* B_legs restricted to those modes.
    * ``"lin"``:  Λ_n = −½ + iπn; B = 1.
    * ``"inv"``:  Λ_n = −½ + i (N/π)(N/(2n+1) − 1); B = 1.
    * ``"real"``: Λ_n = −(n+1) (zero imaginary part); B = 1.

    with n = 0, …, N/2 − 1.
    """
    if kind not in S4D_INITS:
        raise ValueError(f"unknown S4D init {kind!r}; expected one of {', '.join(S4D_INITS)}")
    if N < 2 or N % 2:
        raise ValueError(f"N must be even and >= 2, got {N}")
    half = N // 2
    n = torch.arange(half, dtype=torch.float64)
    ones = torch.ones(half, dtype=torch.complex128)
    if kind == "legs":
        nplr = legs_nplr(N)
        # eigh sorts ω ascending; the last N/2 are the positive half (±ω pairs).
        idx = torch.arange(N - half, N)
        Vh = nplr.V[:, idx].conj().T  # (N/2, N)
        return nplr.Lambda[idx].clone(), Vh @ nplr.B.to(torch.complex128)
    if kind == "lin":
        return torch.complex(torch.full_like(n, -0.5), math.pi * n), ones
    if kind == "inv":
        imag = N / math.pi * (N / (2.0 * n + 1.0) - 1.0)
        return torch.complex(torch.full_like(n, -0.5), imag), ones
    return torch.complex(-(n + 1.0), torch.zeros_like(n)), ones  # "real"


def discretize_zoh(
    Lambda: torch.Tensor, B: torch.Tensor, dt: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-order hold: ``Ā = e^{ΔΛ}``, ``B̄ = (e^{ΔΛ} − 1)/Λ · B`` (elementwise).

    Λ must have no zero entry (its real part is kept strictly negative by the
    S4D parametrisation).
    """
    dtL = Lambda * dt
    Abar = torch.exp(dtL)
    return Abar, (Abar - 1.0) / Lambda * B


def discretize_bilinear(
    Lambda: torch.Tensor, B: torch.Tensor, dt: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear (Tustin): ``Ā = (1 + ΔΛ/2)/(1 − ΔΛ/2)``, ``B̄ = Δ/(1 − ΔΛ/2) · B``."""
    half = Lambda * dt / 2.0
    denom = 1.0 - half
    return (1.0 + half) / denom, dt / denom * B


def legs_transitions(
    A: torch.Tensor, B: torch.Tensor, L: int, *, start: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale-invariant bilinear transitions ``(Ā (L, N, N), B̄ (L, N))`` in float64.

    Step k = start … start + L − 1 uses t = k + 1: ``Ā_k = M (I + A/(2t))``,
    ``B̄_k = M B/t`` with ``M = (I − A/(2t))⁻¹`` (see the module docstring).
    """
    if L < 1 or start < 0:
        raise ValueError(f"need L >= 1 and start >= 0, got L={L}, start={start}")
    A = A.to(torch.float64)
    B = B.to(torch.float64)
    N = A.shape[-1]
    t = torch.arange(start + 1, start + L + 1, dtype=torch.float64, device=A.device)
    half = A / (2.0 * t[:, None, None])  # (L, N, N)
    eye = torch.eye(N, dtype=torch.float64, device=A.device)
    lhs = eye - half
    rhs = torch.cat([eye + half, (B / t[:, None])[..., None]], dim=-1)  # (L, N, N + 1)
    sol = torch.linalg.solve(lhs, rhs)
    return sol[..., :N], sol[..., N]


def random_memory_matrix(N: int, seed: int = 0) -> torch.Tensor:
    """The random control ``A = (N/2)(G − I)`` (N, N) float64, ``G_nk ~ N(0, 1/N)``."""
    if N < 1:
        raise ValueError(f"N must be >= 1, got {N}")
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(N, N, generator=gen, dtype=torch.float64) / math.sqrt(N)
    return (N / 2.0) * (G - torch.eye(N, dtype=torch.float64))
