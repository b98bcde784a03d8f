"""Learned arithmetic units: NAC, NALU (with iNALU's sign and stability fixes).

*NAC* (Trask et al. 2018) is a linear map whose weights are pushed toward
{−1, 0, 1}, so it can only add and subtract its inputs:

    W = tanh(Ŵ) ⊙ σ(M̂),    y = x Wᵀ

*NALU* adds a multiplicative path that works in log space and a gate:

    a = W_a x                                          (additive NAC)
    z = clamp(W_m log(|x| + ε), −z_max, z_max)         (log-space NAC)
    m = exp(z) · Π_i (sign(x_i)|W_m,i| + 1 − |W_m,i|)  (iNALU sign correction)
    g = σ(G x)  (gate="input")   or   g = σ(γ)  (gate="constant")
    y = g ⊙ a + (1 − g) ⊙ m

The sign factor is 1 for an input with W_i = 0 and sign(x_i) for |W_i| = 1, so
a product or quotient of signed numbers gets its sign right (Schlör et al.
2020). With ``separate=True`` the two paths have their own (Ŵ, M̂) (iNALU);
otherwise they share one W as in the original NALU. The clamp keeps exp(z)
finite in float32 (e^40 ≈ 2.4e17 ≪ 3.4e38) whatever the weights drift to; it
only bites for |z| > 40, far beyond any product of the operands seen here
(|a·b| < 1e6 ⇒ z < 14), and blocks the gradient there. A constant gate
(the default for :class:`OpArithmetic`) cannot flip when the inputs grow,
which an input-dependent gate σ(G x) may do outside the training range.

*OpArithmetic* is a bank of ``ops`` NALU units on the operand pair x = (a, b)
(one output column per unit, each with its own weights and gate), mixed by op
probabilities: y = Σ_o p_o · NALU_o(x).

Legend: B batch, I inputs, O outputs (units), ε log offset, z_max exponent clamp,
p (B, O) op probabilities.
"""

from __future__ import annotations

import math

import torch
from torch import nn

OP_NAMES = ("add", "sub", "mul", "div")


PARAMS = ("trask", "clamp")


def clamp_st(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """clamp(x, lo, hi) forward, identity backward (straight-through).

    The clipped value can sit exactly on a bound (W = 1, g = 0) while the raw
    parameter still feels the gradient that would pull it back inside.
    """
    return x + (x.clamp(lo, hi) - x).detach()


class NAC(nn.Module):
    """Neural accumulator: y = x Wᵀ with W in [−1, 1].

    param="trask": W = tanh(Ŵ) ⊙ σ(M̂) (Trask et al. 2018), W in (−1, 1) open;
    param="clamp": W = clip(Ŵ, −1, 1) with a straight-through gradient (the
    NAU-style linear parametrisation of Madsen & Johansen 2020): W reaches ±1
    and the loss is a plain quadratic bowl around the exact answer, where
    tanh·σ only approaches ±1 as Ŵ, M̂ → ∞ (its gradient vanishes there).
    """

    def __init__(
        self, in_features: int, out_features: int, *, init_std: float = 0.5, param: str = "trask"
    ):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"in_features and out_features must be >= 1, got {in_features}, {out_features}"
            )
        if param not in PARAMS:
            raise ValueError(f"param must be one of {', '.join(PARAMS)}, got {param!r}")
        self.in_features, self.out_features, self.param = in_features, out_features, param
        self.w_hat = nn.Parameter(torch.randn(out_features, in_features) * init_std)
        if param == "trask":
            self.m_hat = nn.Parameter(torch.randn(out_features, in_features) * init_std)

    @property
    def weight(self) -> torch.Tensor:
        """Effective W (O, I): tanh(Ŵ) ⊙ σ(M̂) or clip(Ŵ, −1, 1)."""
        if self.param == "trask":
            return torch.tanh(self.w_hat) * torch.sigmoid(self.m_hat)
        return clamp_st(self.w_hat, -1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, I) -> (B, O)
        return x @ self.weight.to(x.dtype).T


class NALU(nn.Module):
    """Neural arithmetic logic unit: gated mix of an additive and a log-space NAC."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        eps: float = 1e-7,
        separate: bool = True,
        gate: str = "constant",
        z_max: float = 40.0,
        init_std: float = 0.5,
        param: str = "trask",
    ):
        super().__init__()
        if gate not in ("constant", "input"):
            raise ValueError(f"gate must be 'constant' or 'input', got {gate!r}")
        if eps <= 0 or z_max <= 0:
            raise ValueError(f"eps and z_max must be > 0, got eps={eps}, z_max={z_max}")
        self.in_features, self.out_features = in_features, out_features
        self.eps, self.z_max, self.gate_kind, self.separate = eps, z_max, gate, separate
        self.param = param
        self.add = NAC(in_features, out_features, init_std=init_std, param=param)
        self.mul = (
            NAC(in_features, out_features, init_std=init_std, param=param) if separate else self.add
        )
        if gate == "input":
            self.G = nn.Parameter(torch.randn(out_features, in_features) * init_std)
        else:  # σ(γ) from γ = 0 (trask) or clip(γ, 0, 1) from γ = ½ (clamp)
            self.gamma = nn.Parameter(torch.full((out_features,), 0.0 if param == "trask" else 0.5))

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Effective (W_add, W_mul), each (O, I); the same tensor twice if not separate."""
        return self.add.weight, self.mul.weight

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """g (B, O): the weight of the additive path."""
        if self.gate_kind == "input":
            return torch.sigmoid(x @ self.G.to(x.dtype).T)
        return self.constant_gate().to(x.dtype).expand(x.shape[0], -1)

    def constant_gate(self) -> torch.Tensor:
        """g (O,) of a constant gate: σ(γ) (trask) or clip(γ, 0, 1) (clamp)."""
        if self.param == "trask":
            return torch.sigmoid(self.gamma)
        return clamp_st(self.gamma, 0.0, 1.0)

    def paths(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a, m, g, z), each (B, O): additive path, signed multiplicative path, gate, log|m|."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"NALU expects x (B, {self.in_features}), got {tuple(x.shape)}")
        w_a, w_m = (w.to(x.dtype) for w in self.weights())
        a = x @ w_a.T
        z = (torch.log(x.abs() + self.eps) @ w_m.T).clamp(-self.z_max, self.z_max)
        aw = w_m.abs()  # (O, I)
        sign = (torch.sign(x)[:, None, :] * aw + 1.0 - aw).prod(-1)  # (B, O)
        return a, torch.exp(z) * sign, self.gate(x), z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, I) -> (B, O)
        a, m, g, _ = self.paths(x)
        return g * a + (1.0 - g) * m

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Per-item, per-unit loop of the literal formula: the readable reference."""
        w_a, w_m = (w.to(x.dtype) for w in self.weights())
        rows = []
        for xb in x:
            out = []
            for o in range(self.out_features):
                a = sum(w_a[o, i] * xb[i] for i in range(self.in_features))
                z = sum(
                    w_m[o, i] * torch.log(xb[i].abs() + self.eps) for i in range(self.in_features)
                )
                m = torch.exp(z.clamp(-self.z_max, self.z_max))
                for i in range(self.in_features):
                    m = m * (torch.sign(xb[i]) * w_m[o, i].abs() + 1 - w_m[o, i].abs())
                if self.gate_kind == "input":
                    g = torch.sigmoid(
                        sum(self.G[o, i].to(x.dtype) * xb[i] for i in range(self.in_features))
                    )
                else:
                    g = self.constant_gate()[o].to(x.dtype)
                out.append(g * a + (1 - g) * m)
            rows.append(torch.stack(out))
        return torch.stack(rows)

    def discreteness(self) -> torch.Tensor:
        """Regulariser pushing |W| toward {0, 1} and a constant gate toward {0, 1}.

        R = mean_W min(|W|, 1 − |W|)² + mean_o [g_o (1 − g_o)]²  (constant gate only),
        zero exactly when every weight is in {−1, 0, 1} and every gate in {0, 1}
        (the NAU/NMU-style sparsity bias of Madsen & Johansen 2020).
        """
        ws = [self.add.weight] + ([self.mul.weight] if self.separate else [])
        r = sum(torch.minimum(w.abs(), 1 - w.abs()).pow(2).mean() for w in ws)
        if self.gate_kind == "constant":
            g = self.constant_gate()
            r = r + (g * (1 - g)).pow(2).mean()
        return r


class OpArithmetic(nn.Module):
    """A bank of ``ops`` NALU units on x = (a, b); y = Σ_o p_o · NALU_o(x).

    The units start random and learn their op from data. The bank runs in the
    dtype of x (float64 operands keep 1e6-sized products exact to ~1e-16).
    """

    def __init__(
        self,
        ops: int = 4,
        *,
        names: tuple[str, ...] | None = None,
        param: str = "clamp",
        gate: str = "constant",
        **nalu_kwargs,
    ):
        super().__init__()
        if ops < 1:
            raise ValueError(f"ops must be >= 1, got {ops}")
        names = names or (OP_NAMES if ops == len(OP_NAMES) else tuple(f"op{o}" for o in range(ops)))
        if len(names) != ops:
            raise ValueError(f"need {ops} names, got {len(names)}")
        self.ops, self.names = ops, tuple(names)
        self.nalu = NALU(2, ops, param=param, gate=gate, **nalu_kwargs)

    def all_ops(self, x: torch.Tensor) -> torch.Tensor:
        """Every unit's output (B, ops) for operands x (B, 2)."""
        return self.nalu(x)

    def forward(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        # x: (B, 2), p: (B, ops) -> (B,)
        if p.shape != (x.shape[0], self.ops):
            raise ValueError(
                f"p must be (B, {self.ops}) = ({x.shape[0]}, {self.ops}), got {tuple(p.shape)}"
            )
        return (p.to(x.dtype) * self.all_ops(x)).sum(-1)

    def weights(self) -> dict[str, dict[str, list[float] | float]]:
        """Per unit: effective W_add, W_mul (lists over the two operands) and the gate."""
        w_a, w_m = (w.detach().double() for w in self.nalu.weights())
        out = {}
        for o, name in enumerate(self.names):
            entry: dict[str, list[float] | float] = {
                "W_add": w_a[o].tolist(),
                "W_mul": w_m[o].tolist(),
            }
            if self.nalu.gate_kind == "constant":
                entry["gate"] = float(self.nalu.constant_gate()[o].detach().double())
            out[name] = entry
        return out

    def describe(self) -> str:
        """One line per unit, e.g. ``op 2 (mul): gate 0.00, W_add [..], W_mul [1.000, 1.000]``."""
        lines = []
        for o, (name, e) in enumerate(self.weights().items()):
            gate = f"gate {e['gate']:.2f}, " if "gate" in e else ""
            wa = ", ".join(f"{v:+.3f}" for v in e["W_add"])
            wm = ", ".join(f"{v:+.3f}" for v in e["W_mul"])
            lines.append(f"op {o} ({name}): {gate}W_add [{wa}], W_mul [{wm}]")
        return "\n".join(lines)


def rel_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    kind: str = "square",
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scale-free regression loss on r = (pred − target) / (|target| + 1).

    kind="square": mean r²;  kind="logcosh": mean log cosh(r) (≈ r²/2 near 0,
    ≈ |r| for large r, so a wild early guess such as exp(z) ≫ target cannot
    swamp the gradient). Dividing by |target| + 1 makes an error of 1 % cost the
    same for 3 + 4 and for 900 · 800, so large products do not dominate the
    batch and small sums still count; the +1 keeps targets near 0 finite.
    With ``scale`` (B,) the divisor is max(|t|, scale) + 1: pass the operands'
    size Σ|x_i| so that a cancelling difference (50 − 49.5 = 0.5) is not a
    heavy-tailed outlier whose gradient (∝ x / (|t| + 1)) drowns the rest.
    """
    if kind not in ("square", "logcosh"):
        raise ValueError(f"kind must be 'square' or 'logcosh', got {kind!r}")
    s = target.abs() if scale is None else torch.maximum(target.abs(), scale)
    r = (pred - target) / (s + 1.0)
    if kind == "square":
        return r.pow(2).mean()
    return (r.abs() + torch.nn.functional.softplus(-2.0 * r.abs()) - math.log(2.0)).mean()


def path_loss(
    a: torch.Tensor,
    m: torch.Tensor,
    g: torch.Tensor,
    z: torch.Tensor,
    target: torch.Tensor,
    *,
    aux: float = 1.0,
    kind: str = "square",
    scale: torch.Tensor | None = None,
    min_target: float = 1e-3,
) -> torch.Tensor:
    """NALU training loss with per-path auxiliary terms (all arguments (B,)).

        L = rel(g a + (1 − g) m, t) + aux · [rel(a, t) + mean_{|t|>τ} (z − log|t|)²]

    The gated output alone has poor local minima (a unit stuck with g = 1 on a
    product never learns W_mul, since the gate hides the log path). The
    auxiliary terms train each path on the target by itself, so the log path
    finds W_mul whatever the gate does, and the gate then slides to the path
    that fits. The log path is fitted in log-magnitude, where it is a linear
    least-squares problem in W_mul (log|a·b| = log|a| + log|b|), convex, free of
    exp's huge gradients and of the sign; items with |t| ≤ τ (e.g. 5 − 5) are
    left out of that term (log 0 = −∞). ``scale`` goes to :func:`rel_loss`
    (pass Σ|x_i|).
    """
    loss = rel_loss(g * a + (1.0 - g) * m, target, kind=kind, scale=scale)
    if aux == 0:
        return loss
    keep = target.abs() > min_target
    log_t = torch.log(target.abs().clamp_min(min_target))
    log_fit = ((z - log_t).pow(2) * keep).sum() / keep.sum().clamp_min(1)
    return loss + aux * (rel_loss(a, target, kind=kind, scale=scale) + log_fit)
