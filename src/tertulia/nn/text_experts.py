"""VELORA's text experts: a byte/number encoder, the math expert, the language expert.

*ByteEncoder.* Tokens (bytes, pad, ``NUM``; see :mod:`tertulia.data.text`) are
embedded; a ``NUM`` token carries its value xVal-style (Golkar et al. 2023),
on a compressed scale so that 0.5 and 900 both give O(1) activations:

    e_t = E[tok_t]                                   (tok_t ≠ NUM; E[pad] = 0)
    e_t = E[NUM] + f(v_t) · u,   f(v) = sign(v) · log1p(|v|)   (tok_t = NUM)

(``value_scale="linear"``: f(v) = v, the original xVal; ``"none"``: f = 0).
The unscaled E[NUM] keeps a 0 visible. Then ``layers`` pre-norm residual
blocks of a bidirectional S4D (causal + anti-causal kernel, so every token
sees the whole text) with padding masked out,

    h ← mask ⊙ (h + S4D(mask ⊙ LN(h))),     states = LN_f(h),
    pooled = Σ_t mask_t states_t / length,

so pad tokens never reach a real token: the features do not depend on how
much padding a batch has (the batch is cut to its longest text first).
Positions come from the S4D kernels (no positional embedding).

*MathExpert.* pooled → op head (4 logits: add, sub, mul, div) and order head
(1 logit: are the operands in reversed reading order, as in "Subtract 3 from
10"?). The operands are the first two numbers of the text, n = (n1, n2),
taken straight from ``EncodedText.numbers`` (float64), and every unit of an
:class:`~tertulia.nn.arith.OpArithmetic` bank is run on both orders,

    Y[o, 0] = NALU_o(n1, n2),   Y[o, 1] = NALU_o(n2, n1)         (B, 4, 2)

Training mixes them softly, value = Σ_o p_o [(1 − s) Y[o,0] + s Y[o,1]] with
p = softmax(op logits), s = σ(order logit); evaluation picks argmax o and
s > ½. Mixing the *outputs* of the two orders rather than the inputs
((1 − s)(n1, n2) + s(n2, n1)) is deliberate: the units are nonlinear, and at
s = ½ a mixed input is (n̄, n̄), for which a − b = 0 and a / b = 1 whatever
the operands.

The loss (:meth:`MathExpert.loss`) uses *teacher forcing*: the arithmetic bank
is trained on the unit of the true op, fed in the true order, with
:func:`~tertulia.nn.arith.path_loss`; the heads are trained by CE / BCE. So
each NALU sees clean (operands, answer) pairs of its own op from the first
step and converges to exact weights (|W| ∈ {0, 1}, gate ∈ {0, 1}), which is
what extrapolation needs; with p = softmax(logits) an early, wrong op head
would smear every unit's gradient over the others' targets. The soft value is
still returned (and can be added to the loss with ``soft > 0``) for
end-to-end fine-tuning.

*LanguageExpert*: pooled → MLP → class logits. *RouterFeatures*: a one-layer,
narrow ByteEncoder's pooled features for the router.

Legend: B batch, L tokens, d model width, N S4D state size, O = 4 ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.text import NUM, VOCAB, EncodedText
from .arith import OpArithmetic, path_loss, rel_loss
from .s4d import S4D, ssm_parameter_groups

VALUE_SCALES = ("signed_log", "linear", "none")
ARITH_LR = 0.1
Batch = EncodedText | tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _unpack(enc: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if isinstance(enc, EncodedText):
        return enc.tokens, enc.values, enc.length
    if isinstance(enc, tuple) and len(enc) == 3:
        return enc
    raise ValueError(
        f"expected an EncodedText or (tokens, values, length), got {type(enc).__name__}"
    )


def scale_value(v: torch.Tensor, kind: str) -> torch.Tensor:
    """f(v): sign(v)·log1p(|v|) ("signed_log"), v ("linear") or 0 ("none")."""
    if kind == "signed_log":
        return torch.sign(v) * torch.log1p(v.abs())
    if kind == "linear":
        return v
    return torch.zeros_like(v)


class ByteEncoder(nn.Module):
    """Bytes + xVal numbers → bidirectional S4D stack → (pooled (B, d), states (B, L, d))."""

    def __init__(
        self,
        d_model: int = 64,
        layers: int = 2,
        d_state: int = 32,
        *,
        value_scale: str = "signed_log",
        dropout: float = 0.0,
        dt_min: float = 1e-2,
        dt_max: float = 1.0,
    ):
        super().__init__()
        if value_scale not in VALUE_SCALES:
            raise ValueError(
                f"value_scale must be one of {', '.join(VALUE_SCALES)}, got {value_scale!r}"
            )
        if d_model < 1 or layers < 1:
            raise ValueError(f"d_model and layers must be >= 1, got {d_model}, {layers}")
        self.d_model, self.value_scale = d_model, value_scale
        self.embed = nn.Embedding(VOCAB, d_model, padding_idx=0)
        self.value_dir = nn.Parameter(torch.randn(d_model) / d_model**0.5)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(layers))
        self.layers = nn.ModuleList(
            S4D(
                d_model,
                N=d_state,
                bidirectional=True,
                dt_min=dt_min,
                dt_max=dt_max,
                dropout=dropout,
            )
            for _ in range(layers)
        )
        self.final_norm = nn.LayerNorm(d_model)

    def forward(self, enc: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        # -> pooled (B, d), states (B, L', d) with L' = the longest text in the batch
        tokens, values, length = _unpack(enc)
        if tokens.ndim != 2 or values.shape != tokens.shape or length.shape != tokens.shape[:1]:
            raise ValueError(
                f"tokens, values must be (B, L) and length (B,), got "
                f"{tuple(tokens.shape)}, {tuple(values.shape)}, {tuple(length.shape)}"
            )
        L = max(int(length.max()), 1)
        tokens, values = tokens[:, :L], values[:, :L].float()
        mask = (torch.arange(L, device=tokens.device) < length[:, None]).unsqueeze(-1).float()
        is_num = (tokens == NUM).unsqueeze(-1).float()
        h = (
            self.embed(tokens)
            + is_num * scale_value(values, self.value_scale)[..., None] * self.value_dir
        )
        h = h * mask
        for norm, layer in zip(self.norms, self.layers, strict=True):
            h = (h + layer(norm(h) * mask)) * mask
        states = self.final_norm(h) * mask
        pooled = states.sum(1) / length.clamp_min(1)[:, None].to(states.dtype)
        return pooled, states


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


@dataclass
class MathOutput:
    """value (B,) float64: the answer (soft in training, hard in eval);
    op_logits (B, 4); order_logit (B,); per_op (B, 4, 2) every unit on (n1, n2) and (n2, n1);
    paths: (a, m, g, z), each (B, 4, 2), the NALU internals for :func:`path_loss`;
    scale (B,) float64: |n1| + |n2|, the operands' size (the loss's error unit)."""

    value: torch.Tensor
    op_logits: torch.Tensor
    order_logit: torch.Tensor
    per_op: torch.Tensor
    paths: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    scale: torch.Tensor


class MathExpert(nn.Module):
    """ByteEncoder → op and order heads; operands → OpArithmetic bank (see module doc)."""

    def __init__(
        self,
        d_model: int = 64,
        layers: int = 2,
        d_state: int = 32,
        *,
        hidden: int = 64,
        ops: int = 4,
        value_scale: str = "signed_log",
        nalu_param: str = "clamp",
    ):
        super().__init__()
        self.ops = ops
        self.encoder = ByteEncoder(d_model, layers, d_state, value_scale=value_scale)
        self.op_head = _mlp(d_model, hidden, ops)
        self.order_head = _mlp(d_model, hidden, 1)
        self.arith = OpArithmetic(ops, param=nalu_param, gate="constant")

    def optim_groups(self) -> list[dict]:
        """The NALU bank's own optimiser settings (:mod:`tertulia.train.groups`).

        The bank's few weights need large steps to reach the clip bounds (±1, gate 0/1)
        and a short second-moment memory to forget the huge gradients of the first
        steps: base lr ``ARITH_LR`` (following the schedule), β₂ = 0.99, no decay. The
        trainer honours them on its plain and staged paths, also with the expert inside
        VELORA.
        """
        return [
            {
                "params": list(self.arith.parameters()),
                "lr": ARITH_LR,
                "betas": (0.9, 0.99),
                "weight_decay": 0.0,
            }
        ]

    def forward(self, enc: EncodedText, numbers: torch.Tensor | None = None) -> MathOutput:
        pooled, _ = self.encoder(enc)
        op_logits = self.op_head(pooled)
        order_logit = self.order_head(pooled)[:, 0]
        n = (enc.numbers if numbers is None else numbers).to(torch.float64)
        if n.ndim != 2 or n.shape[1] < 2:
            raise ValueError(f"numbers must be (B, >=2), got {tuple(n.shape)}")
        n = n[:, :2]
        both = torch.cat([n, n.flip(-1)], 0)  # (2B, 2): reading order, then reversed
        a, m, g, z = self.arith.nalu.paths(both)
        B = n.shape[0]
        paths = tuple(t.view(2, B, self.ops).permute(1, 2, 0) for t in (a, m, g, z))
        per_op = paths[2] * paths[0] + (1 - paths[2]) * paths[1]  # (B, O, 2)
        if self.training:
            p = op_logits.softmax(-1).double()
            s = torch.sigmoid(order_logit).double()[:, None]
        else:
            p = F.one_hot(op_logits.argmax(-1), self.ops).double()
            s = (order_logit > 0).double()[:, None]
        value = (p * ((1 - s) * per_op[..., 0] + s * per_op[..., 1])).sum(-1)
        return MathOutput(value, op_logits, order_logit, per_op, paths, n.abs().sum(-1))  # type: ignore[arg-type]

    def loss(
        self,
        out: MathOutput,
        op: torch.Tensor,
        order: torch.Tensor,
        answer: torch.Tensor,
        *,
        aux: float = 1.0,
        soft: float = 0.0,
        discrete: float = 0.0,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """CE(op) + BCE(order) + path_loss(true unit, true order) [+ soft·rel(value) + discrete·R].

        op (B,) int64 in [0, 4); order (B,) 0/1 (1 = reversed reading order);
        answer (B,). Logs every part plus op / order accuracy.
        """
        rows = torch.arange(op.shape[0], device=op.device)
        order_i = order.long()
        a, m, g, z = (t[rows, op, order_i] for t in out.paths)
        answer = answer.to(torch.float64)
        ce = F.cross_entropy(out.op_logits, op)
        bce = F.binary_cross_entropy_with_logits(out.order_logit, order.float())
        arith = path_loss(a, m, g, z, answer, aux=aux, scale=out.scale)
        total = ce + bce + arith.float()
        logs = {
            "ce": float(ce.detach()),
            "bce": float(bce.detach()),
            "arith": float(arith.detach()),
        }
        if soft > 0:
            sl = rel_loss(out.value, answer)
            total = total + soft * sl.float()
            logs["soft"] = float(sl.detach())
        if discrete > 0:
            total = total + discrete * self.arith.nalu.discreteness()
        logs["op_acc"] = float((out.op_logits.argmax(-1) == op).float().mean())
        logs["order_acc"] = float(((out.order_logit > 0).long() == order_i).float().mean())
        return total, logs

    def param_groups(
        self, lr: float = 3e-3, arith_lr: float = 0.1, weight_decay: float = 0.0
    ) -> list[dict]:
        """Adam groups: encoder + heads at ``lr``; the NALU bank at ``arith_lr`` with β₂ = 0.99.

        The bank's few weights need large steps to reach the clip bounds (±1,
        gate 0/1) and a short second-moment memory to forget the huge
        gradients of the first steps.
        """
        arith_ids = {id(p) for p in self.arith.parameters()}
        groups = ssm_parameter_groups(
            nn.ModuleList([self.encoder, self.op_head, self.order_head]),
            lr=lr,
            weight_decay=weight_decay,
            ssm_lr=lr,
        )
        for group in groups:
            group["params"] = [p for p in group["params"] if id(p) not in arith_ids]
        groups.append(
            {
                "params": list(self.arith.parameters()),
                "lr": arith_lr,
                "betas": (0.9, 0.99),
                "weight_decay": 0.0,
            }
        )
        return groups


class LanguageExpert(nn.Module):
    """ByteEncoder → masked mean pool → MLP → class logits (B, classes)."""

    def __init__(
        self,
        d_model: int = 64,
        classes: int = 3,
        *,
        layers: int = 2,
        d_state: int = 32,
        hidden: int = 64,
    ):
        super().__init__()
        if classes < 2:
            raise ValueError(f"classes must be >= 2, got {classes}")
        self.encoder = ByteEncoder(d_model, layers, d_state)
        self.head = _mlp(d_model, hidden, classes)

    def forward(self, enc: Batch) -> torch.Tensor:
        pooled, _ = self.encoder(enc)
        return self.head(pooled)


class RouterFeatures(nn.Module):
    """A cheap one-layer ByteEncoder: text → pooled features (B, d_model) for a router."""

    def __init__(self, d_model: int = 32, *, d_state: int = 16, layers: int = 1):
        super().__init__()
        self.out_features = d_model
        self.encoder = ByteEncoder(d_model, layers, d_state)

    def forward(self, enc: Batch) -> torch.Tensor:
        return self.encoder(enc)[0]
