"""Mixture of experts: a router picks k of E experts per item, a fusion combines them.

Routing (Shazeer et al. 2017; Switch Transformer / GShard) from router
features ``h = features(x)``:

    z = W h + c                       (or an MLP with one hidden layer)
    z ← z + ε ⊙ softplus(W_n h),  ε ~ N(0, I)        training only, noisy=True
    p = softmax(z)                                    (B, E)
    S = top-k(z)      ties → the lower expert index   (B, k)
    g_e = p_e / Σ_{j∈S} p_j  for e ∈ S, else 0        gates, sum 1 over the k chosen

Gradients flow through the gate *values* ``g`` into ``z`` and the router's
weights; the selection ``S`` (an argmax) is not differentiable and carries
none. With k = 1 the renormalised gate is exactly 1, so the router would learn
from the auxiliary terms alone: pass ``normalize=False`` for Switch-style
gates ``g_e = p_e``.

Capacity (training only unless ``capacity_at_eval``): with factor c each
expert accepts at most ``C = ceil(c·B·k/E)`` assignments per batch, first come
first served in batch order, all first choices before any second choice. A
dropped assignment gets gate 0; the item's other gates are *not*
renormalised, so an item keeps only its accepted experts and one with none
comes out as zero.

Auxiliary terms (reported, never added to the task loss here; see
:func:`moe_aux_loss`):

    balance  = E · Σ_e f_e P_e     f_e: fraction of items whose top-1 is e (before
                                   capacity), P_e = mean_b p_be; 1 when uniform,
                                   E when every item goes to one expert with p → 1
    z_loss   = mean_b (logsumexp_e z_be)²              (on the noise-free logits)
    overflow = dropped assignments / (B·k)
    load_e   = accepted assignments of expert e / all accepted assignments

Fusion of the expert outputs y_e with the gates:

    weighted   y = Σ_e g_e y_e
    attention  α = softmax_{e accepted}((W_q q)·(W_k vec y_e) / √d_key)
               y = Σ_e g_e y_e + tanh(γ)·(Σ_e α_e y_e − Σ_e g_e y_e),  γ₀ = 0

i.e. mixture weights ``w = g + tanh(γ)(α − g)``, exactly the weighted sum at
initialisation. A :class:`Prediction` is fused as a Gaussian mixture with
weights w (moment-matched):

    μ = Σ_e w_e μ_e
    σ² = Σ_e w_e (σ²_e + μ_e²) − μ²  = Σ_e w_e σ²_e + Σ_e w_e (μ_e − μ)² + (1 − Σ_e w_e) μ²

(the second form is the same number, computed without cancellation); when
capacity dropped some of an item's mass, ``1 − Σ w`` acts as a point mass at
0, consistent with the zero output of a dropped assignment. σ² is clamped to
``≥ exp(LOG_VAR_MIN)``.

Legend: B batch, E experts, k experts per item, C capacity per expert,
d_in router features, d_key attention key size, D flattened expert output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShapeError
from .heads import LOG_VAR_MIN, Prediction

ExpertOutput = torch.Tensor | Prediction | dict[str, torch.Tensor]
"""What an expert may return: a Tensor (B, …), a Prediction, or a dict of Tensors (B, …)."""

VAR_MIN = math.exp(LOG_VAR_MIN)


# -- routing ---------------------------------------------------------------------------


@dataclass
class RouterOutput:
    """One routing decision for a batch; see the module docstring for the equations."""

    logits: torch.Tensor  # (B, E) routing logits (noise included when it was drawn)
    probs: torch.Tensor  # (B, E) softmax of the logits
    gates: torch.Tensor  # (B, E) renormalised top-k probabilities, 0 off S and where dropped
    index: torch.Tensor  # (B, k) chosen experts, best first (long, no gradient)
    mask: torch.Tensor  # (B, E) bool: accepted assignments
    balance: torch.Tensor  # () E · Σ f_e P_e
    z_loss: torch.Tensor  # () mean logsumexp²
    overflow: torch.Tensor  # () fraction of the B·k assignments dropped
    load: torch.Tensor  # (E,) fraction of accepted assignments per expert
    capacity: int | None = None  # C, or None when capacity was not applied

    @property
    def kept(self) -> torch.Tensor:
        """(B,) bool: items with at least one accepted expert (the others output zero)."""
        return self.mask.any(dim=-1)


class Router(nn.Module):
    """Top-k softmax gate over ``experts`` experts from features ``(B, d_in)``."""

    def __init__(
        self,
        d_in: int,
        experts: int,
        *,
        k: int = 1,
        noisy: bool = False,
        capacity_factor: float | None = None,
        hidden: int = 0,
        normalize: bool = True,
        capacity_at_eval: bool = False,
    ):
        """Build the gate.

        Args:
            d_in: router feature size.
            experts: number of experts E (≥ 1).
            k: experts per item, 1 ≤ k ≤ E.
            noisy: add learned Gaussian noise to the logits in training (noisy top-k).
            capacity_factor: c > 0 for a per-expert capacity ``ceil(c·B·k/E)``, or None.
            hidden: width of a hidden GELU layer (0: a linear gate).
            normalize: renormalise the chosen probabilities to sum 1 (False: ``g_e = p_e``).
            capacity_at_eval: also apply the capacity in eval mode.
        """
        super().__init__()
        if experts < 1:
            raise ValueError(f"experts must be >= 1, got {experts}")
        if not 1 <= k <= experts:
            raise ValueError(f"k must be in 1..{experts} (the number of experts), got {k}")
        if capacity_factor is not None and not capacity_factor > 0:
            raise ValueError(f"capacity_factor must be > 0 or None, got {capacity_factor}")
        if hidden < 0:
            raise ValueError(f"hidden must be >= 0 (0: linear gate), got {hidden}")
        self.d_in, self.experts, self.k = d_in, experts, k
        self.noisy, self.normalize = noisy, normalize
        self.capacity_factor, self.capacity_at_eval = capacity_factor, capacity_at_eval
        if hidden > 0:
            self.gate: nn.Module = nn.Sequential(
                nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, experts)
            )
        else:
            self.gate = nn.Linear(d_in, experts)
        self.noise: nn.Linear | None = None
        if noisy:  # W_n = 0 at init (as Shazeer et al.): noise scale softplus(0) ≈ 0.69
            self.noise = nn.Linear(d_in, experts)
            nn.init.zeros_(self.noise.weight)
            nn.init.zeros_(self.noise.bias)

    def capacity(self, batch: int) -> int | None:
        """Per-expert capacity ``ceil(c·B·k/E)`` for this batch in the current mode, or None."""
        if self.capacity_factor is None or not (self.training or self.capacity_at_eval):
            return None
        # the small slack keeps c·B·k/E = 2.0000000000000004 at 2
        return max(1, math.ceil(self.capacity_factor * batch * self.k / self.experts - 1e-9))

    def forward(self, h: torch.Tensor) -> RouterOutput:
        # h: (B, d_in) -> routing decision
        if h.ndim != 2 or h.shape[1] != self.d_in:
            raise ShapeError(
                f"router features must be (batch, {self.d_in}), got shape {tuple(h.shape)}"
            )
        clean = self.gate(h)
        logits = clean
        if self.noise is not None and self.training:
            logits = clean + torch.randn_like(clean) * F.softplus(self.noise(h))
        return self.select(logits, clean_logits=clean)

    def select(
        self, logits: torch.Tensor, *, clean_logits: torch.Tensor | None = None
    ) -> RouterOutput:
        """Top-k, gates, capacity and aux terms from given logits ``(B, E)`` (no noise added)."""
        if logits.ndim != 2 or logits.shape[1] != self.experts:
            raise ShapeError(
                f"logits must be (batch, {self.experts}), got shape {tuple(logits.shape)}"
            )
        b, e, k = logits.shape[0], self.experts, self.k
        clean = logits if clean_logits is None else clean_logits
        probs = logits.softmax(dim=-1)
        # stable descending sort: among equal logits the lower expert index wins
        index = torch.sort(logits.detach(), dim=-1, descending=True, stable=True).indices[:, :k]
        top = probs.gather(1, index)  # (B, k), differentiable in the values
        if self.normalize and k == 1:
            # p/p: exactly 1 with an exactly zero gradient, still in the graph
            top = top * 0.0 + 1.0
        elif self.normalize:
            top = top / top.sum(dim=-1, keepdim=True)
        chosen = F.one_hot(index, e).to(torch.bool)  # (B, k, E)

        capacity = self.capacity(b)
        if capacity is None:
            accepted = chosen
        else:
            # assignments in arrival order: all first choices (batch order), then second, …
            order = chosen.transpose(0, 1).reshape(k * b, e).to(torch.long)
            position = order.cumsum(dim=0)  # 1-based queue position at the expert
            accepted = ((position <= capacity) & order.bool()).reshape(k, b, e).transpose(0, 1)
        slot_kept = accepted.any(dim=-1)  # (B, k)
        mask = accepted.any(dim=1)  # (B, E)
        gates = torch.zeros_like(probs).scatter(1, index, top * slot_kept.to(top.dtype))

        with torch.no_grad():
            f = F.one_hot(index[:, 0], e).to(probs.dtype).mean(dim=0)
            n_acc = mask.sum()
            overflow = 1.0 - n_acc.to(probs.dtype) / (b * k)
            load = mask.sum(dim=0).to(probs.dtype) / n_acc.clamp_min(1)
        balance = e * (f * probs.mean(dim=0)).sum()
        z_loss = torch.logsumexp(clean, dim=-1).pow(2).mean()
        return RouterOutput(
            logits=logits,
            probs=probs,
            gates=gates,
            index=index,
            mask=mask,
            balance=balance,
            z_loss=z_loss,
            overflow=overflow,
            load=load,
            capacity=capacity,
        )

    def extra_repr(self) -> str:
        return (
            f"d_in={self.d_in}, experts={self.experts}, k={self.k}, noisy={self.noisy}, "
            f"capacity_factor={self.capacity_factor}"
        )


# -- fusion ----------------------------------------------------------------------------


def _flat(y: ExpertOutput) -> torch.Tensor:
    # one output -> (B, D): a Tensor flattened; Prediction [mean, log_var]; dict its values in order
    if isinstance(y, torch.Tensor):
        return y.reshape(y.shape[0], -1)
    if isinstance(y, Prediction):
        return torch.cat([_flat(y.mean), _flat(y.log_var)], dim=1)
    return torch.cat([_flat(v) for v in y.values()], dim=1)


def _weighted_sum(ys: Sequence[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    # ys: E × (B, …), w: (B, E) -> (B, …)
    out = None
    for e, y in enumerate(ys):
        term = w[:, e].reshape(-1, *([1] * (y.ndim - 1))) * y
        out = term if out is None else out + term
    assert out is not None
    return out


def gaussian_mixture(preds: Sequence[Prediction], w: torch.Tensor) -> Prediction:
    """Moment-matched mixture ``Σ_e w_e N(μ_e, σ²_e)`` (w (B, E); mass ``1 − Σw`` sits at 0)."""
    mean = _weighted_sum([p.mean for p in preds], w)
    var = _weighted_sum([p.log_var.exp() + (p.mean - mean).pow(2) for p in preds], w)
    var = var + (1.0 - w.sum(dim=1)).reshape(-1, *([1] * (mean.ndim - 1))) * mean.pow(2)
    return Prediction(mean=mean, log_var=var.clamp_min(VAR_MIN).log(), trace=None)


class Fusion(nn.Module):
    """Combine per-expert outputs with the router's gates (``weighted`` or ``attention``)."""

    KINDS = ("weighted", "attention")

    def __init__(
        self,
        kind: str = "weighted",
        *,
        d_query: int | None = None,
        d_value: int | None = None,
        d_key: int = 16,
    ):
        """Args:
        kind: ``"weighted"`` (Σ g y) or ``"attention"`` (gated sum plus learned attention).
        d_query: router feature size (attention only).
        d_value: flattened size D of one item's expert output (attention only): for a
            Prediction 2·|mean|, for a dict the sum of its values' sizes.
        d_key: attention key size.
        """
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"fusion kind must be 'weighted' or 'attention', got {kind!r}")
        self.kind = kind
        self.query: nn.Linear | None = None
        self.key: nn.Linear | None = None
        if kind == "attention":
            if d_query is None or d_value is None:
                raise ValueError("attention fusion needs d_query and d_value")
            if d_key < 1:
                raise ValueError(f"d_key must be >= 1, got {d_key}")
            self.d_key = d_key
            self.query = nn.Linear(d_query, d_key, bias=False)
            self.key = nn.Linear(d_value, d_key, bias=False)
            self.gamma = nn.Parameter(torch.zeros(()))

    def weights(
        self,
        outputs: Sequence[ExpertOutput],
        gates: torch.Tensor,
        mask: torch.Tensor,
        query: torch.Tensor | None,
    ) -> torch.Tensor:
        """Mixture weights ``w = g + tanh(γ)(α − g)`` (B, E); ``w = g`` for ``weighted``."""
        if self.kind == "weighted":
            return gates
        assert self.query is not None and self.key is not None
        if query is None:
            raise ValueError("attention fusion needs the router features as query")
        q = self.query(query)  # (B, d_key)
        dtype = self.key.weight.dtype  # outputs may mix dtypes (a float64 answer beside logits)
        keys = torch.stack([self.key(_flat(y).to(dtype)) for y in outputs], dim=1)  # (B, E, d_key)
        scores = torch.einsum("bk,bek->be", q.to(dtype), keys) / math.sqrt(self.d_key)
        # experts that did not receive an item get α = 0 (exp(min − max) underflows to 0);
        # an item with no accepted expert gets α = 0 everywhere, without NaNs.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        alpha = scores.softmax(dim=-1) * mask.to(scores.dtype)
        return gates + torch.tanh(self.gamma) * (alpha - gates)

    def forward(
        self,
        outputs: Sequence[ExpertOutput],
        gates: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        query: torch.Tensor | None = None,
    ) -> ExpertOutput:
        # outputs: E × (B, …) of one type, gates (B, E), mask (B, E) bool, query (B, d_query)
        if len(outputs) != gates.shape[1]:
            raise ShapeError(f"got {len(outputs)} expert outputs for {gates.shape[1]} gates")
        mask = gates != 0 if mask is None else mask
        w = self.weights(outputs, gates, mask, query)
        first = outputs[0]
        if isinstance(first, torch.Tensor):
            return _weighted_sum(outputs, w)  # type: ignore[arg-type]
        if isinstance(first, Prediction):
            return gaussian_mixture(outputs, w)  # type: ignore[arg-type]
        if isinstance(first, Mapping):
            return {key: _weighted_sum([y[key] for y in outputs], w) for key in first}  # type: ignore[index]
        raise TypeError(
            "expert outputs must be Tensor, Prediction or dict of Tensors, "
            f"got {type(first).__name__}"
        )

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


# -- the mixture -----------------------------------------------------------------------


@dataclass
class MoEOutput:
    """Fused output, the routing decision, unweighted aux terms, and (optionally) each expert's.

    ``expert_outputs[name]`` is batch-aligned (B, …); with sparse dispatch rows the
    expert did not receive are zeros.
    """

    output: Any
    router: RouterOutput
    aux: dict[str, torch.Tensor]
    expert_outputs: dict[str, Any] | None = None

    @property
    def kept(self) -> torch.Tensor:
        """(B,) bool: items with at least one accepted expert (the others output zero)."""
        return self.router.kept


def moe_aux_loss(
    out: MoEOutput | RouterOutput, balance: float = 1e-2, z: float = 1e-3
) -> torch.Tensor:
    """``balance · L_balance + z · L_z``: add it to the task loss yourself, report both apart."""
    r = out.router if isinstance(out, MoEOutput) else out
    return balance * r.balance + z * r.z_loss


def batch_size(x: Any) -> int:
    """Leading-axis size of a Tensor, or of the first Tensor value of a dict."""
    if isinstance(x, torch.Tensor):
        return x.shape[0]
    if isinstance(x, Mapping):
        for v in x.values():
            if isinstance(v, torch.Tensor):
                return v.shape[0]
        raise ShapeError("a dict input needs at least one Tensor value to give the batch size")
    raise TypeError(f"input must be a Tensor or a dict, got {type(x).__name__}")


def take_rows(x: Any, rows: torch.Tensor) -> Any:
    """Rows ``rows`` of a batch: Tensors via index_select, lists/tuples by item, arrays by
    fancy indexing; other dict values (scalars, strings, None) pass through unchanged."""
    if isinstance(x, torch.Tensor):
        return x.index_select(0, rows.to(x.device))
    if isinstance(x, Mapping):
        return {key: take_rows(v, rows) for key, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(x[i] for i in rows.tolist())
    if hasattr(x, "shape") and hasattr(x, "__getitem__"):
        return x[rows.cpu().numpy()]
    return x


def _scatter_rows(y: ExpertOutput, rows: torch.Tensor, b: int) -> ExpertOutput:
    # y: output on the routed rows (R, …) -> batch-aligned (B, …), zeros elsewhere
    if isinstance(y, torch.Tensor):
        return y.new_zeros((b, *y.shape[1:])).index_copy(0, rows.to(y.device), y)
    if isinstance(y, Prediction):
        return Prediction(
            mean=_scatter_rows(y.mean, rows, b),  # type: ignore[arg-type]
            log_var=_scatter_rows(y.log_var, rows, b),  # type: ignore[arg-type]
            trace=y.trace,
            aux=y.aux,
        )
    if isinstance(y, Mapping):
        return {key: _scatter_rows(v, rows, b) for key, v in y.items()}  # type: ignore[misc]
    raise TypeError(
        f"expert outputs must be Tensor, Prediction or dict of Tensors, got {type(y).__name__}"
    )


def _zeros_like(y: ExpertOutput) -> ExpertOutput:
    if isinstance(y, torch.Tensor):
        return torch.zeros_like(y)
    if isinstance(y, Prediction):
        return Prediction(mean=torch.zeros_like(y.mean), log_var=torch.zeros_like(y.log_var))
    return {key: torch.zeros_like(v) for key, v in y.items()}


class MixtureOfExperts(nn.Module):
    """Route each item to k experts, run them (sparse or dense), fuse their outputs.

    ``x`` is a Tensor (B, …) or a dict whose values carry a leading batch axis
    (Tensors, lists, arrays; other values are passed to every expert as is).
    ``features(x)`` gives the router features (B, d_in); by default a Tensor is
    flattened per item (dict inputs need ``features``). Sparse dispatch runs
    expert e only on the rows it accepted (index by rows, run, scatter back);
    dense dispatch runs every expert on the whole batch, the readable reference
    (same result: rows an expert did not accept carry weight 0). The router's
    aux terms are returned in ``aux`` and never added to anything here; use
    :func:`moe_aux_loss` and report task and aux losses separately.
    ``forward(x, keep_experts=True)`` also returns each expert's batch-aligned output.
    """

    DISPATCH = ("sparse", "dense")

    def __init__(
        self,
        experts: Sequence[nn.Module] | Mapping[str, nn.Module],
        router: Router,
        *,
        features: nn.Module | Callable[[Any], torch.Tensor] | None = None,
        fusion: Fusion | None = None,
        dispatch: str = "sparse",
    ):
        super().__init__()
        if dispatch not in self.DISPATCH:
            raise ValueError(f"dispatch must be 'sparse' or 'dense', got {dispatch!r}")
        if isinstance(experts, Mapping):
            named = dict(experts)
        else:
            named = {str(i): m for i, m in enumerate(experts)}
        if not named:
            raise ValueError("experts must not be empty")
        if len(named) != router.experts:
            raise ValueError(f"router has {router.experts} experts, got {len(named)} modules")
        self.experts = nn.ModuleDict(named)
        self.router = router
        self.features = features
        self.fusion = Fusion("weighted") if fusion is None else fusion
        self.dispatch = dispatch

    @property
    def expert_names(self) -> list[str]:
        return list(self.experts.keys())

    def router_features(self, x: Any) -> torch.Tensor:
        """(B, d_in) features the router reads."""
        if self.features is not None:
            return self.features(x)
        if not isinstance(x, torch.Tensor):
            raise ValueError("dict inputs need a features module mapping x to (batch, d_in)")
        return x.reshape(x.shape[0], -1)

    def route(self, x: Any) -> RouterOutput:
        """The routing decision for ``x`` without running any expert."""
        return self.router(self.router_features(x))

    def forward(self, x: Any, *, keep_experts: bool = False) -> MoEOutput:
        # x: (B, …) or dict of batch-first values -> fused output (B, …)
        h = self.router_features(x)
        r = self.router(h)
        b = batch_size(x)
        outs: dict[str, ExpertOutput | None] = {}
        for e, (name, expert) in enumerate(self.experts.items()):
            if self.dispatch == "dense":
                outs[name] = expert(x)
                continue
            rows = r.mask[:, e].nonzero().squeeze(1)
            if rows.numel() == 0:
                outs[name] = None  # filled with zeros below
            elif rows.numel() == b:  # every row: no need to gather
                outs[name] = expert(x)
            else:
                outs[name] = _scatter_rows(expert(take_rows(x, rows)), rows, b)
        template = next(y for y in outs.values() if y is not None)  # capacity ≥ 1: one ran
        full = {n: _zeros_like(template) if y is None else y for n, y in outs.items()}
        ys = list(full.values())
        output = self.fusion(ys, r.gates, mask=r.mask, query=h)
        if isinstance(output, Prediction):
            output.aux = {
                f"{n}.{key}": v
                for n, y in full.items()
                if isinstance(y, Prediction)
                for key, v in y.aux.items()
            }
        aux = {"balance": r.balance, "z_loss": r.z_loss, "overflow": r.overflow}
        return MoEOutput(
            output=output, router=r, aux=aux, expert_outputs=full if keep_experts else None
        )

    def extra_repr(self) -> str:
        return f"dispatch={self.dispatch!r}"
