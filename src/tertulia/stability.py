"""Contractivity control for the round map ``F: S → S`` (seed eq. 6).

The orchestra iterates ``S ← F(S)``; the rounds settle to a unique fixed point
when F is a contraction, ``‖F(S1) − F(S2)‖ ≤ ρ ‖S1 − S2‖`` with ρ < 1. Three
tools act on ρ:

* ``spectral_bound`` caps the spectral norm of every linear layer's weight,
  per cell slice: ``W ← W · min(1, c / σ̂(W))``, where σ̂ = uᵀ W v comes from
  power iteration with persistent vectors (u, v) updated once per training
  forward. One iteration per step gives a lower estimate σ̂ ≤ σ, so the bound
  holds approximately and tightens as the vectors converge over training.
* ``jacobian_frobenius`` is a differentiable Hutchinson penalty
  ``E_ε ‖εᵀ J‖² / D = ‖J‖_F² / D`` with ε ~ N(0, I) and J = ∂F/∂S per sample.
* ``contraction_factor`` measures ρ_b ≈ ‖J_b‖₂ by power iteration on J_bᵀ J_b.
  Dot-product attention is not globally Lipschitz, so ρ is measured locally
  (at the fixed point, say), never assumed from the weights alone.

F must act on each batch sample independently (per-sample LayerNorm and
attention), so J is block-diagonal over the batch and one vector–Jacobian
product serves every sample at once.

Legend: B batch, D per-sample input dimension (z[0].numel()), n slices (cells
of a stacked weight; 1 for ``nn.Linear``), r × c one slice's matrix.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from .nn.stacked import StackedLinear
from .runtime import random_like

__all__ = [
    "SpectralBound",
    "contraction_factor",
    "jacobian_frobenius",
    "spectral_bound",
    "spectral_norms",
]

_WARMUP_ITERATIONS = 15  # power iterations at construction, so σ̂ starts close to σ


def _normalise_rows(x: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    # x, fallback: (n, k) -> rows of x scaled to unit norm; zero rows keep ``fallback``
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    unit = x / norm.clamp_min(torch.finfo(x.dtype).tiny)
    return torch.where(norm > 0, unit, fallback)


class SpectralBound(nn.Module):
    """Parametrisation ``W ↦ W · min(1, bound / σ̂(W))`` applied per matrix slice.

    The weight is viewed as ``(n, r, c)``: a stacked ``(n, I, O)`` weight gives n
    slices, a 2-D ``(O, I)`` weight one. The buffers ``u: (n, r)`` and
    ``v: (n, c)`` hold the power-iteration vectors; they live in the state_dict
    and are updated in place, without gradient, only in training mode.
    """

    u: torch.Tensor
    v: torch.Tensor

    def __init__(self, weight: torch.Tensor, bound: float, *, n_power_iterations: int = 1):
        super().__init__()
        if weight.ndim < 2:
            raise ValueError(f"weight must have at least 2 dims, got shape {tuple(weight.shape)}")
        if not bound > 0:
            raise ValueError(f"bound must be positive, got {bound}")
        if n_power_iterations < 1:
            raise ValueError(f"n_power_iterations must be >= 1, got {n_power_iterations}")
        self.bound = float(bound)
        self.n_power_iterations = int(n_power_iterations)
        mats = weight.detach().reshape(-1, *weight.shape[-2:])  # (n, r, c)
        n, r, c = mats.shape
        u = mats.new_empty(n, r).normal_()
        v = mats.new_empty(n, c).normal_()
        self.register_buffer("u", _normalise_rows(u, u))
        self.register_buffer("v", _normalise_rows(v, v))
        with torch.no_grad():
            self._power_iterate(mats, _WARMUP_ITERATIONS)

    @torch.no_grad()
    def _power_iterate(self, mats: torch.Tensor, iterations: int) -> None:
        # mats: (n, r, c); u ← W v / ‖W v‖ after v ← Wᵀ u / ‖Wᵀ u‖, per slice, in place
        for _ in range(iterations):
            self.v.copy_(_normalise_rows(torch.einsum("nrc,nr->nc", mats, self.u), self.v))
            self.u.copy_(_normalise_rows(torch.einsum("nrc,nc->nr", mats, self.v), self.u))

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        """σ̂ = uᵀ W v per slice, ``(n,)``, differentiable in W; vectors left as they are."""
        mats = weight.reshape(-1, *weight.shape[-2:])  # (n, r, c)
        # Clones: autograd saves u, v, and a later training forward updates them in place.
        return torch.einsum("nr,nrc,nc->n", self.u.clone(), mats, self.v.clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        mats = weight.reshape(-1, *weight.shape[-2:])  # (n, r, c)
        if self.training:
            self._power_iterate(mats.detach(), self.n_power_iterations)
        sigma = self.sigma(weight)  # (n,)
        # bound / max(σ̂, bound) = min(1, bound / σ̂), and exactly 1 when σ̂ ≤ bound.
        scale = self.bound / torch.clamp_min(sigma, self.bound)
        return (mats * scale[:, None, None]).reshape(weight.shape)

    def extra_repr(self) -> str:
        return f"bound={self.bound}, n_power_iterations={self.n_power_iterations}"


def _linear_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, m) for name, m in module.named_modules() if isinstance(m, StackedLinear | nn.Linear)
    ]


def _spectral_bounds(layer: nn.Module) -> list[SpectralBound]:
    if not parametrize.is_parametrized(layer, "weight"):
        return []
    return [p for p in layer.parametrizations["weight"] if isinstance(p, SpectralBound)]


def spectral_bound(module: nn.Module, bound: float, *, n_power_iterations: int = 1) -> nn.Module:
    """Cap σ_max of every ``StackedLinear`` / ``nn.Linear`` weight in ``module`` at ``bound``.

    Registers a :class:`SpectralBound` parametrisation on ``weight`` of each such
    layer (``module`` itself included), one σ̂ per slice of a stacked weight.
    The trainable tensor becomes ``<layer>.parametrizations.weight.original``;
    ``layer.weight`` (and so ``forward_one``) sees the bounded weight, and
    ``torch.nn.utils.parametrize.cached()`` computes it once for many rounds.
    Calling again on an already bounded layer only resets its bound and
    iteration count. σ̂ is a lower estimate of σ after few power iterations, so
    the cap holds approximately, and exactly in the limit of converged vectors.
    Returns ``module``.
    """
    for _, layer in _linear_layers(module):
        existing = _spectral_bounds(layer)
        if existing:
            for p in existing:
                p.bound, p.n_power_iterations = float(bound), int(n_power_iterations)
            continue
        p = SpectralBound(layer.weight, bound, n_power_iterations=n_power_iterations)
        parametrize.register_parametrization(layer, "weight", p)
    return module


@torch.no_grad()
def spectral_norms(module: nn.Module) -> dict[str, torch.Tensor]:
    """Exact σ_max of every effective linear weight, per slice: ``{"<layer>.weight": (n,)}``.

    ``n`` is the number of cells for a ``StackedLinear`` and 1 for an
    ``nn.Linear``. Reading the weights does not advance the power iteration.
    """
    bounds = [p for _, layer in _linear_layers(module) for p in _spectral_bounds(layer)]
    modes = [p.training for p in bounds]
    for p in bounds:
        p.train(False)
    try:
        out = {}
        for name, layer in _linear_layers(module):
            w = layer.weight
            mats = w.reshape(-1, *w.shape[-2:])  # (n, r, c)
            key = f"{name}.weight" if name else "weight"
            out[key] = torch.linalg.matrix_norm(mats, ord=2).detach()
        return out
    finally:
        for p, mode in zip(bounds, modes, strict=True):
            p.train(mode)


def jacobian_frobenius(
    f: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    *,
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Hutchinson estimate of ``mean_b ‖∂f/∂z (z_b)‖_F² / D``, differentiable in f's parameters.

    ``z: (B, …)`` is the point of linearisation; it is detached here (no gradient
    flows back to the caller's z). Each of ``samples`` probes ε ~ N(0, I) of f's
    output shape gives ``‖εᵀ J‖²`` by one vector–Jacobian product built with
    ``create_graph=True``; an identity map scores ≈ 1. Returns a scalar.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    z0 = z.detach().requires_grad_(True)  # z0: (B, …)
    batch = z0.shape[0]
    dim = z0.numel() // max(batch, 1)
    with torch.enable_grad():
        y = f(z0)  # y: (B, …)
        total = y.new_zeros(())
        if not y.requires_grad:
            return total
        for _ in range(samples):
            eps = random_like(y, generator=generator, normal=True)
            (g,) = torch.autograd.grad(y, z0, eps, create_graph=True, allow_unused=True)
            if g is None:  # f ignores z: J = 0
                return total
            total = total + g.pow(2).sum()  # g = εᵀ J: (B, …)
        return total / (samples * batch * dim)


def _per_sample_norm(x: torch.Tensor) -> torch.Tensor:
    # x: (B, …) -> (B,)
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1)


def _unit_per_sample(x: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    # x, fallback: (B, …) -> x / ‖x_b‖ per sample; all-zero samples keep ``fallback``
    flat = x.reshape(x.shape[0], -1)
    return _normalise_rows(flat, fallback.reshape(x.shape[0], -1)).reshape(x.shape)


def contraction_factor(
    f: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    *,
    iters: int = 20,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Local contraction factor ``ρ_b ≈ ‖∂f/∂z (z_b)‖₂`` per sample, shape ``(B,)``.

    Power iteration on J_bᵀ J_b: ``v ← Jᵀ J v / ‖Jᵀ J v‖`` per sample, with the
    estimate ρ_b = ‖J_b v_b‖ (never above the true norm). f is evaluated once;
    J v comes from the double-vjp trick (differentiate ``Jᵀ p`` in the dummy p)
    and Jᵀ(J v) from ``torch.autograd.grad``. Stops after ``iters`` iterations or
    once every sample's estimate moves by less than ``tol`` relatively.

    Attention is not globally Lipschitz, so this is a local measurement at z
    (the fixed point, typically). Works under the caller's ``torch.no_grad()``,
    leaves no ``.grad`` on parameters; the result is detached, in z's dtype.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    z0 = z.detach().requires_grad_(True)  # z0: (B, …)
    batch = z0.shape[0]
    with torch.enable_grad():
        y = f(z0)  # y: (B, …)
        zeros = z0.new_zeros(batch).detach()
        if not y.requires_grad:
            return zeros
        probe = torch.zeros_like(y, requires_grad=True)  # p: (B, …) like y
        (jt_probe,) = torch.autograd.grad(y, z0, probe, create_graph=True, allow_unused=True)
        if jt_probe is None or not jt_probe.requires_grad:  # f ignores z: J = 0
            return zeros
        v = random_like(z0, generator=generator, normal=True)
        v = _unit_per_sample(v, v)  # v: (B, …) like z, unit per sample
        rho: torch.Tensor | None = None
        for _ in range(iters):
            (jv,) = torch.autograd.grad(jt_probe, probe, v, retain_graph=True, allow_unused=True)
            if jv is None:
                return zeros
            estimate = _per_sample_norm(jv).detach()  # (B,)
            (jtjv,) = torch.autograd.grad(y, z0, jv, retain_graph=True, allow_unused=True)
            if jtjv is None:
                return zeros
            v = _unit_per_sample(jtjv.detach(), v)
            converged = rho is not None and bool(((estimate - rho).abs() <= tol * rho.abs()).all())
            rho = estimate
            if converged:
                break
    assert rho is not None
    return rho.detach()
