"""VELORA: a math expert and a language expert behind a neural router and a fusion.

The seed's system (``001``: MathExpert, LanguageExpert, NeuralRouter,
ExpertFusion) as a :class:`~tertulia.nn.moe.MixtureOfExperts`. Both experts
read the same input, a text encoded by :func:`tertulia.data.text.encode`
(bytes, numbers as values), and answer in one shared format so the fusion can
combine them:

    y = {value (B,) float64,  op_logits (B, 4),  type_logits (B, 3)}

The math expert fills ``value`` (its answer) and ``op_logits`` (add, sub, mul,
div) and leaves ``type_logits`` at 0; the language expert fills
``type_logits`` (question, command, statement) and leaves the rest at 0. The
router reads a narrow byte encoder's pooled features
(:class:`~tertulia.nn.text_experts.RouterFeatures`) and picks k of the two;
the fusion mixes the chosen answers with the gates (``weighted``) or with
learned attention plus that residual (``attention``). With k = 1 the gate of
the chosen expert is exactly 1, so the fused answer *is* that expert's and the
router learns from its domain labels (the seed's phase 2: "aprender a
identificar correctamente el dominio de cada entrada") plus the balance and
z-losses; with k = 2 the answers are mixed and the task loss reaches the
router through the gates.

Layer groups (for staged fine-tuning, :mod:`tertulia.train.stages`), named as
in ``config.VELORA_GROUPS``: ``router`` (features and gating), ``fusion``,
``math.heads`` (op and order heads), ``math.arith`` (the NALU bank),
``math.encoder``, ``language.head``, ``language.encoder``.

Legend: B batch, L tokens, E = 2 experts (0 math, 1 language).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data.text import EncodedText
from .moe import Fusion, MixtureOfExperts, MoEOutput, Router
from .text_experts import LanguageExpert, MathExpert, RouterFeatures

EXPERTS = ("math", "language")
OPS = ("add", "sub", "mul", "div")
TYPES = ("question", "command", "statement")


def as_inputs(enc: EncodedText) -> dict[str, torch.Tensor]:
    """The dict a :class:`Velora` reads (batch-first tensors, so the router can split rows)."""
    return {
        "tokens": enc.tokens,
        "values": enc.values,
        "numbers": enc.numbers,
        "count": enc.count,
        "length": enc.length,
    }


def _encoded(x: dict[str, torch.Tensor]) -> EncodedText:
    return EncodedText(x["tokens"], x["values"], x["numbers"], x["count"], x["length"])


class MathAnswer(nn.Module):
    """The math expert in the shared answer format."""

    def __init__(self, expert: MathExpert):
        super().__init__()
        self.expert = expert

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.expert(_encoded(x))
        b = out.op_logits.shape[0]
        return {
            "value": out.value,
            "op_logits": out.op_logits,
            "type_logits": out.op_logits.new_zeros(b, len(TYPES)),
        }


class LanguageAnswer(nn.Module):
    """The language expert in the shared answer format."""

    def __init__(self, expert: LanguageExpert):
        super().__init__()
        self.expert = expert

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.expert(_encoded(x))
        b = logits.shape[0]
        return {
            "value": torch.zeros(b, dtype=torch.float64, device=logits.device),
            "op_logits": logits.new_zeros(b, len(OPS)),
            "type_logits": logits,
        }


class RouterInput(nn.Module):
    """The router's features of the input dict: a narrow byte encoder's pooled state."""

    def __init__(self, width: int):
        super().__init__()
        self.reader = RouterFeatures(width)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.reader(_encoded(x))


class Velora(nn.Module):
    """Router + fusion over the math and language experts (see the module docstring)."""

    def __init__(
        self,
        math: MathExpert,
        language: LanguageExpert,
        *,
        router_width: int = 32,
        k: int = 1,
        noisy: bool = False,
        hidden: int = 0,
        capacity_factor: float | None = None,
        fusion: str = "weighted",
    ):
        super().__init__()
        features = RouterInput(router_width)
        router = Router(
            router_width,
            len(EXPERTS),
            k=k,
            noisy=noisy,
            hidden=hidden,
            capacity_factor=capacity_factor,
        )
        fuse = Fusion(fusion, d_query=router_width, d_value=1 + len(OPS) + len(TYPES))
        self.moe = MixtureOfExperts(
            {"math": MathAnswer(math), "language": LanguageAnswer(language)},
            router,
            features=features,
            fusion=fuse,
        )

    @property
    def math(self) -> MathExpert:
        return self.moe.experts["math"].expert  # type: ignore[return-value]

    @property
    def language(self) -> LanguageExpert:
        return self.moe.experts["language"].expert  # type: ignore[return-value]

    def forward(self, x: dict[str, torch.Tensor], *, keep_experts: bool = False) -> MoEOutput:
        # x: as_inputs(enc) -> fused {value, op_logits, type_logits}, routing, aux terms
        return self.moe(x, keep_experts=keep_experts)

    def layer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Every parameter, by layer group name (``config.VELORA_GROUPS``)."""
        m, g = self.math, self.language
        groups: dict[str, list[nn.Parameter]] = {
            "router": [*self.moe.features.parameters(), *self.moe.router.parameters()],  # type: ignore[union-attr]
            "fusion": list(self.moe.fusion.parameters()),
            "math.heads": [*m.op_head.parameters(), *m.order_head.parameters()],
            "math.arith": list(m.arith.parameters()),
            "math.encoder": list(m.encoder.parameters()),
            "language.head": list(g.head.parameters()),
            "language.encoder": list(g.encoder.parameters()),
        }
        listed = {id(p) for ps in groups.values() for p in ps}
        missing = [n for n, p in self.named_parameters() if id(p) not in listed]
        if missing:
            raise RuntimeError(f"parameters outside every layer group: {missing}")
        return groups

    def explain(self, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient × input of the routed expert's logit w.r.t. the router's token embeddings.

        Returns (probs (B, E), attribution (B, L')): attribution_t = Σ_d ∂z_ê/∂e_td · e_td
        with ê the top-1 expert and e the router's embedding of token t (for a NUM
        token the embedding of NUM, not its value term), over the batch's longest
        text L'. Parameter gradients it leaves behind are cleared.
        """
        emb = self.moe.features.reader.encoder.embed  # type: ignore[union-attr]
        saved: dict[str, Any] = {}

        def keep(_module: nn.Module, _inp: Any, out: torch.Tensor) -> torch.Tensor:
            out.retain_grad()
            saved["e"] = out
            return out

        handle = emb.register_forward_hook(keep)
        try:
            with torch.enable_grad():
                r = self.moe.route(x)
                top = r.logits.argmax(-1)
                r.logits.gather(1, top[:, None]).sum().backward()
        finally:
            handle.remove()
            self.zero_grad(set_to_none=True)
        e = saved["e"]
        attribution = (e.grad * e).sum(-1).detach()
        return r.probs.detach(), attribution
