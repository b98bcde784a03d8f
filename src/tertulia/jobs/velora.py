"""The VELORA job: experts alone, then router and fusion, then gradual fine-tuning.

``tertulia run velora [--phase experts|router|finetune|all]`` (``task: velora``),
the seed's three phases (``001``, sections 2 and 5):

1. ``experts`` — the math expert (:class:`~tertulia.nn.text_experts.MathExpert`)
   on the math set and the language expert on the language set, each alone,
   each keeping its best-validating weights (``checkpoint/math/best``,
   ``checkpoint/language/best``).
2. ``router`` — a :class:`~tertulia.nn.velora.Velora` built on those best
   experts, frozen (``requires_grad`` off: bit-identical through the phase);
   the router and fusion learn on the mixed set from the domain labels, the
   fused task loss and the balance / z-losses (``checkpoint/router``).
3. ``finetune`` — every layer group of ``finetune.schedule`` starts at its step
   with its learning-rate multiplier (:mod:`tertulia.train.stages`), on the
   mixed set, keeping the weights with the best mixed validation score
   (``checkpoint/finetune``).

A later phase needs the earlier ones' checkpoints in the same run directory;
every phase resumes from its own checkpoint. After each phase the run is
judged and ``metrics.json`` rewritten, so a partial run still has a report.

Losses on a mixed batch (items of both domains; task and auxiliary terms are
logged apart, the auxiliary ones are never part of the reported task loss):

    task    = CE(type logits) on language items + the math expert's loss on
              math items (op CE, order BCE, arithmetic on the true op)
    route   = supervised · CE(router logits, domain)
    aux     = balance · E Σ f_e P_e + z_loss · mean logsumexp²

The mixed score counts an item right when the routed system answers it: a
math answer within 1 % of the truth, ``|v − y| ≤ 0.01 |y| + 1e-9``, or the
right query type for a language item. Oracle routing sends every item to the
expert of its true domain.

Legend: B batch, E = 2 experts.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._io import atomic_write_json, json_safe
from ..build import count_parameters
from ..compress.targets import Target
from ..config import VeloraRecipe
from ..data.text import NUM, EncodedText, encode
from ..data.velora import (
    OPS,
    LanguageRow,
    MathRow,
    VeloraData,
    make_splits,
    read_datasets,
    write_datasets,
)
from ..errors import RunDirError
from ..nn.arith import rel_loss
from ..nn.text_experts import LanguageExpert, MathExpert
from ..nn.velora import EXPERTS, TYPES, Velora, as_inputs
from ..runs import Event, EventFn, close_run, fit_in_run, no_event, open_run
from ..runtime import CPU, Runtime, on_cpu
from ..train import has_checkpoint, load_checkpoint, load_weights
from ..train.checkpoint import checkpoint_folder
from ..train.stages import LayerGroup, freeze, unfreeze
from ..train.tasks import TaskBase
from .base import Job, LoadedRun

PHASES = ("experts", "router", "finetune")



def within(value: torch.Tensor, answer: torch.Tensor, rel: float = 0.01) -> torch.Tensor:
    """(B,) bool: ``|v − y| ≤ rel·|y| + 1e-9``."""
    v, y = value.double(), answer.double()
    return (v - y).abs() <= rel * y.abs() + 1e-9


# ------------------------------------------------------------------------- data


@dataclass
class MathSet:
    enc: EncodedText
    op: torch.Tensor  # (S,) int64
    order: torch.Tensor  # (S,) int64: 1 when the text reads b before a
    answer: torch.Tensor  # (S,) float64
    rows: list[MathRow]


@dataclass
class LanguageSet:
    enc: EncodedText
    label: torch.Tensor  # (S,) int64
    rows: list[LanguageRow]


@dataclass
class MixedSet:
    enc: EncodedText
    domain: torch.Tensor  # (S,) 0 math, 1 language
    op: torch.Tensor  # (S,) math op (0 for language items)
    order: torch.Tensor
    answer: torch.Tensor  # (S,) float64 (0 for language items)
    label: torch.Tensor  # (S,) query type (0 for math items)
    ambiguous: torch.Tensor  # (S,) bool


def _math_set(rows: list[MathRow], max_len: int) -> MathSet:
    enc = encode([r.text for r in rows], max_len=max_len)
    a = torch.tensor([r.a for r in rows], dtype=torch.float64)
    b = torch.tensor([r.b for r in rows], dtype=torch.float64)
    n1, n2 = enc.numbers[:, 0], enc.numbers[:, 1]
    order = ((n1 == b) & (n2 == a) & (a != b)).long()
    return MathSet(
        enc=enc,
        op=torch.tensor([OPS.index(r.op) for r in rows], dtype=torch.int64),
        order=order,
        answer=torch.tensor([r.answer for r in rows], dtype=torch.float64),
        rows=rows,
    )


def _language_set(rows: list[LanguageRow], max_len: int) -> LanguageSet:
    enc = encode([r.text for r in rows], max_len=max_len)
    label = torch.tensor([TYPES.index(r.label) for r in rows], dtype=torch.int64)
    return LanguageSet(enc=enc, label=label, rows=rows)


def _mixed(ms: MathSet, ls: LanguageSet, seed: int) -> MixedSet:
    k = min(len(ms.rows), len(ls.rows))
    order = list(range(2 * k))
    random.Random(seed).shuffle(order)
    idx = torch.tensor(order)
    math_idx, lang_idx = torch.arange(k), torch.arange(k)

    def cat(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, y])[idx]

    L = max(ms.enc.tokens.shape[1], ls.enc.tokens.shape[1])

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, L - t.shape[1]))

    me, le = ms.enc[math_idx], ls.enc[lang_idx]
    enc = EncodedText(
        cat(pad(me.tokens), pad(le.tokens)),
        cat(pad(me.values), pad(le.values)),
        cat(me.numbers, le.numbers),
        cat(me.count, le.count),
        cat(me.length, le.length),
    )
    zeros = torch.zeros(k, dtype=torch.int64)
    amb_m = torch.tensor([bool(r.ambiguous) for r in ms.rows[:k]])
    amb_l = torch.tensor([bool(r.ambiguous) for r in ls.rows[:k]])
    return MixedSet(
        enc=enc,
        domain=cat(zeros, torch.ones(k, dtype=torch.int64)),
        op=cat(ms.op[:k], zeros),
        order=cat(ms.order[:k], zeros),
        answer=cat(ms.answer[:k], torch.zeros(k, dtype=torch.float64)),
        label=cat(zeros, ls.label[:k]),
        ambiguous=cat(amb_m, amb_l),
    )


@dataclass
class Encoded:
    math: dict[str, MathSet]
    language: dict[str, LanguageSet]
    mixed: dict[str, MixedSet]
    extrapolation: MathSet


def load_data(recipe: VeloraRecipe) -> VeloraData:
    """Generate the datasets, or read them from ``data.path`` (validated CSVs)."""
    d = recipe.data
    if d.path is not None:
        return read_datasets(d.path)
    return make_splits(
        seed=recipe.seed,
        n_math=d.n_math,
        n_language=d.n_language,
        n_extrapolation=d.n_extrapolation,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        low=d.low,
        high=d.high,
    )


def encode_data(data: VeloraData, recipe: VeloraRecipe) -> Encoded:
    L = recipe.data.max_len
    math_sets = {s: _math_set(data.math[s], L) for s in ("train", "val", "test")}
    lang_sets = {s: _language_set(data.language[s], L) for s in ("train", "val", "test")}
    mixed = {
        s: _mixed(math_sets[s], lang_sets[s], seed=recipe.seed * 7 + i)
        for i, s in enumerate(("train", "val", "test"))
    }
    return Encoded(math_sets, lang_sets, mixed, _math_set(data.extrapolation, L))


# ------------------------------------------------------------------------ tasks


def _rows(n: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(n, (min(batch, n),), generator=generator, device=generator.device)


class MathTask(TaskBase):
    """Phase 1, math: the expert's own loss on random training batches."""

    def __init__(self, model: MathExpert, data: Encoded, batch_size: int, runtime: Runtime = CPU):
        self.runtime = runtime
        self.model, self.data, self.batch_size = runtime.place(model), data, batch_size

    def sample_batch(self, generator: torch.Generator) -> torch.Tensor:
        return _rows(len(self.data.math["train"].rows), self.batch_size, generator)

    def loss(self, batch: torch.Tensor, step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        s = self.data.math["train"]
        out = self.forward_module(s.enc[batch])
        return self.model.loss(out, s.op[batch], s.order[batch], s.answer[batch])

    def validation(self) -> float:
        """Share of validation answers *not* within 1 % (hard op and order choices).

        The training loss carries per-path auxiliary terms that stay large by design,
        so it is a poor judge of the answers; this is the quantity that matters.
        """
        s = self.data.math["val"]
        with torch.no_grad(), self.runtime.autocast():
            value = self.model(s.enc).value
        return 1.0 - float(within(value, s.answer).double().mean())


class LanguageTask(TaskBase):
    """Phase 1, language: cross-entropy of the query type."""

    def __init__(
        self, model: LanguageExpert, data: Encoded, batch_size: int, runtime: Runtime = CPU
    ):
        self.runtime = runtime
        self.model, self.data, self.batch_size = runtime.place(model), data, batch_size

    def sample_batch(self, generator: torch.Generator) -> torch.Tensor:
        return _rows(len(self.data.language["train"].rows), self.batch_size, generator)

    def loss(self, batch: torch.Tensor, step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        s = self.data.language["train"]
        logits = self.forward_module(s.enc[batch]).float()
        loss = F.cross_entropy(logits, s.label[batch])
        acc = (logits.argmax(-1) == s.label[batch]).float().mean()
        return loss, {"loss": float(loss.detach()), "acc": float(acc)}

    def validation(self) -> float:
        s = self.data.language["val"]
        with torch.no_grad(), self.runtime.autocast():
            logits = self.model(s.enc).float()
        return float(F.cross_entropy(logits, s.label))


class SystemTask(TaskBase):
    """Phases 2 and 3: the whole system on mixed batches (see the module docstring)."""

    def __init__(
        self,
        model: Velora,
        data: Encoded,
        recipe: VeloraRecipe,
        batch_size: int,
        runtime: Runtime = CPU,
    ):
        self.runtime = runtime
        self.model, self.data = runtime.place(model), data
        self.recipe, self.batch_size = recipe, batch_size

    def sample_batch(self, generator: torch.Generator) -> torch.Tensor:
        return _rows(self.data.mixed["train"].domain.shape[0], self.batch_size, generator)

    def loss(self, batch: torch.Tensor, step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        s, r = self.data.mixed["train"], self.recipe.router
        enc = s.enc[batch]
        out = self.forward_module(as_inputs(enc))
        dom = s.domain[batch]
        is_math, is_lang = dom == 0, dom == 1
        logs: dict[str, float] = {}
        task = out.router.logits.new_zeros(())
        m, g = self.model.math, self.model.language
        # The experts' own losses on the items of their domain (whatever the routing), when
        # they learn; the fused answers' losses reach the router and fusion (k = 2, attention).
        if is_math.any():
            rows = is_math.nonzero().squeeze(1)
            fused = out.output["value"][rows]
            answer = s.answer[batch][rows]
            fl = rel_loss(fused, answer).float()
            logs["math_fused_loss"] = float(fl.detach())
            logs["math_within"] = float(within(fused, answer).float().mean())
            part = fl
            if any(p.requires_grad for p in m.parameters()):
                ml, _ = m.loss(m(enc[rows]), s.op[batch][rows], s.order[batch][rows], answer)
                logs["math_loss"] = float(ml.detach())
                part = part + ml
            task = task + part * is_math.float().mean()
        if is_lang.any():
            rows = is_lang.nonzero().squeeze(1)
            label = s.label[batch][rows]
            fl = F.cross_entropy(out.output["type_logits"][rows].float(), label)
            logs["language_fused_loss"] = float(fl.detach())
            part = fl
            if any(p.requires_grad for p in g.parameters()):
                ll = F.cross_entropy(g(enc[rows]).float(), label)
                logs["language_loss"] = float(ll.detach())
                part = part + ll
            task = task + part * is_lang.float().mean()
        route = F.cross_entropy(out.router.logits.float(), dom)
        aux = r.balance * out.router.balance + r.z_loss * out.router.z_loss
        logs.update(
            task_loss=float(task.detach()),
            route_loss=float(route.detach()),
            balance=float(out.router.balance.detach()),
            z_loss=float(out.router.z_loss.detach()),
            overflow=float(out.router.overflow.detach()),
            router_acc=float((out.router.logits.argmax(-1) == dom).float().mean()),
        )
        return task + r.supervised * route + aux, logs

    def validation(self) -> float:
        """1 − mixed score on the validation split (lower is better)."""
        return 1.0 - judge_system(self.model, self.data.mixed["val"], self.runtime)["mixed_score"]


# --------------------------------------------------------------------- judging


def _predict_batches(
    fn: Callable[[EncodedText], Any], enc: EncodedText, runtime: Runtime, size: int = 512
) -> list[Any]:
    with runtime.autocast():
        return [fn(enc[slice(i, i + size)]) for i in range(0, len(enc), size)]


@torch.no_grad()
def judge_math(model: MathExpert, s: MathSet, runtime: Runtime = CPU) -> dict[str, Any]:
    """Op accuracy, order accuracy, MSE, share within 1 % (all and per op), ms per item."""
    model.eval()
    t0 = time.perf_counter()
    outs = _predict_batches(model, s.enc, runtime)
    ms = 1e3 * (time.perf_counter() - t0) / max(len(s.rows), 1)
    value = torch.cat([o.value for o in outs])
    op_pred = torch.cat([o.op_logits.argmax(-1) for o in outs])
    order_pred = torch.cat([(o.order_logit > 0).long() for o in outs])
    ok = within(value, s.answer)
    per_op = {
        name: float(ok[s.op == i].float().mean()) if (s.op == i).any() else None
        for i, name in enumerate(OPS)
    }
    op_acc = {
        name: float((op_pred[s.op == i] == i).float().mean()) if (s.op == i).any() else None
        for i, name in enumerate(OPS)
    }
    return {
        "items": len(s.rows),
        "op_accuracy": float((op_pred == s.op).float().mean()),
        "op_accuracy_by_op": op_acc,
        "order_accuracy": float((order_pred == s.order).float().mean()),
        "mse": float((value - s.answer).pow(2).mean()),
        "within_1pct": float(ok.float().mean()),
        "within_1pct_by_op": per_op,
        "ms_per_item": ms,
    }


@torch.no_grad()
def judge_language(model: LanguageExpert, s: LanguageSet, runtime: Runtime = CPU) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class F1, confusion matrix, ms per item."""
    model.eval()
    t0 = time.perf_counter()
    logits = torch.cat(_predict_batches(model, s.enc, runtime))
    ms = 1e3 * (time.perf_counter() - t0) / max(len(s.rows), 1)
    pred = logits.argmax(-1)
    k = len(TYPES)
    conf = torch.zeros(k, k, dtype=torch.int64, device="cpu")
    for t, p in zip(s.label.tolist(), pred.tolist(), strict=True):
        conf[t, p] += 1
    f1 = {}
    for i, name in enumerate(TYPES):
        tp = float(conf[i, i])
        prec = tp / max(float(conf[:, i].sum()), 1.0)
        rec = tp / max(float(conf[i, :].sum()), 1.0)
        f1[name] = 0.0 if tp == 0 else 2 * prec * rec / (prec + rec)
    return {
        "items": len(s.rows),
        "accuracy": float((pred == s.label).float().mean()),
        "macro_f1": float(np.mean(list(f1.values()))),
        "f1": f1,
        "confusion": conf.tolist(),
        "ms_per_item": ms,
    }


@torch.no_grad()
def judge_system(model: Velora, s: MixedSet, runtime: Runtime = CPU) -> dict[str, Any]:
    """Router accuracy (all, by domain, by op / query type, ambiguous), fused and oracle scores."""
    model.eval()
    outs = _predict_batches(lambda enc: model(as_inputs(enc), keep_experts=True), s.enc, runtime)
    routed = torch.cat([o.router.logits.argmax(-1) for o in outs])
    probs = torch.cat([o.router.probs for o in outs])
    value = torch.cat([o.output["value"] for o in outs])
    types = torch.cat([o.output["type_logits"].argmax(-1) for o in outs])
    # oracle: each expert run on everything (dense), then picked by the true domain
    oracle_value = torch.cat([o.value for o in _predict_batches(model.math, s.enc, runtime)])
    oracle_types = torch.cat(
        [o.argmax(-1) for o in _predict_batches(model.language, s.enc, runtime)]
    )
    is_math = s.domain == 0
    right = torch.where(is_math, within(value, s.answer), types == s.label)
    oracle = torch.where(is_math, within(oracle_value, s.answer), oracle_types == s.label)
    hit = routed == s.domain
    by_op = {
        name: float(hit[is_math & (s.op == i)].float().mean())
        for i, name in enumerate(OPS)
        if (is_math & (s.op == i)).any()
    }
    by_type = {
        name: float(hit[~is_math & (s.label == i)].float().mean())
        for i, name in enumerate(TYPES)
        if (~is_math & (s.label == i)).any()
    }
    confusion = [[int(((s.domain == t) & (routed == p)).sum()) for p in range(2)] for t in range(2)]
    balance = float(np.mean([float(o.router.balance) for o in outs]))
    return {
        "items": int(s.domain.shape[0]),
        "router_accuracy": float(hit.float().mean()),
        "router_accuracy_by_domain": {
            "math": float(hit[is_math].float().mean()),
            "language": float(hit[~is_math].float().mean()),
        },
        "router_accuracy_by_op": by_op,
        "router_accuracy_by_type": by_type,
        "router_accuracy_ambiguous": float(hit[s.ambiguous].float().mean())
        if s.ambiguous.any()
        else None,
        "router_confusion": confusion,
        "load": {name: float((routed == e).float().mean()) for e, name in enumerate(EXPERTS)},
        "mean_probs": {name: float(probs[:, e].mean()) for e, name in enumerate(EXPERTS)},
        "balance": balance,
        "mixed_score": float(right.float().mean()),
        "oracle_mixed_score": float(oracle.float().mean()),
        "mixed_score_by_domain": {
            "math": float(right[is_math].float().mean()),
            "language": float(right[~is_math].float().mean()),
        },
    }


def _segments(tokens: list[int], values: list[float], scores: list[float]) -> list[list[Any]]:
    """Token scores → [text piece, score] with multi-byte characters and numbers whole."""
    pieces: list[list[Any]] = []
    buf, acc = b"", 0.0
    for tok, val, sc in zip(tokens, values, scores, strict=True):
        if tok == 0:
            break
        if tok == NUM:
            pieces.append([f"{val:g}", sc])
            continue
        buf += bytes([tok - 1])
        acc += sc
        try:
            ch = buf.decode("utf-8")
        except UnicodeDecodeError:
            continue
        pieces.append([ch, acc])
        buf, acc = b"", 0.0
    return pieces


def explain(model: Velora, s: MixedSet, count: int, seed: int) -> list[dict[str, Any]]:
    """Routing probabilities and gradient × input token attributions on ``count`` items
    (half of them domain-ambiguous when there are any)."""
    if count == 0:
        return []
    gen = random.Random(seed)
    amb = s.ambiguous.nonzero().squeeze(1).tolist()
    rest = (~s.ambiguous).nonzero().squeeze(1).tolist()
    pick = gen.sample(amb, min(len(amb), count // 2))
    pick += gen.sample(rest, min(len(rest), count - len(pick)))
    rows = torch.tensor(pick, dtype=torch.int64, device=s.domain.device)
    enc = s.enc[rows]
    model.eval()
    probs, attr = model.explain(as_inputs(enc))
    out = []
    for j, i in enumerate(pick):
        L = int(enc.length[j])
        scores = attr[j, :L].tolist()
        out.append(
            {
                "domain": EXPERTS[int(s.domain[i])],
                "routed": EXPERTS[int(probs[j].argmax())],
                "probs": {name: float(probs[j, e]) for e, name in enumerate(EXPERTS)},
                "ambiguous": bool(s.ambiguous[i]),
                "tokens": _segments(enc.tokens[j, :L].tolist(), enc.values[j, :L].tolist(), scores),
            }
        )
    return out


# ------------------------------------------------------------------------ phases


def build_experts(recipe: VeloraRecipe) -> tuple[MathExpert, LanguageExpert]:
    """The two experts, seeded and built on the CPU, then moved to the recipe's device."""
    torch.manual_seed(recipe.seed)
    m, g = recipe.math, recipe.language
    runtime = Runtime.of(recipe)
    with on_cpu():
        math_expert = MathExpert(m.d_model, m.layers, m.d_state)
        language = LanguageExpert(g.d_model, len(TYPES), layers=g.layers, d_state=g.d_state)
    return runtime.place(math_expert), runtime.place(language)


def build_velora(recipe: VeloraRecipe, math_expert: MathExpert, language: LanguageExpert) -> Velora:
    """The system around the experts (router and fusion built on the CPU), on their device."""
    torch.manual_seed(recipe.seed + 1)
    r = recipe.router
    with on_cpu():
        model = Velora(
            math_expert,
            language,
            router_width=r.d_model,
            k=r.k,
            noisy=r.noisy,
            hidden=r.hidden,
            capacity_factor=r.capacity_factor,
            fusion=recipe.fusion.kind,
        )
    return Runtime.of(recipe).place(model)


def _load_best(model: torch.nn.Module, out: Path, name: str, phase: str) -> None:
    best = out / "checkpoint" / name / "best"
    if not has_checkpoint(best):
        raise RunDirError(
            f"phase {phase!r} needs the best {name!r} weights of an earlier phase in {out}; "
            f"run the earlier phases first (--phase all, or --phase {_needs(name)})"
        )
    groups, _ = load_checkpoint(best, require=("model",))
    load_weights(model, groups["model"], source=checkpoint_folder(best) / "model.safetensors")


def _needs(name: str) -> str:
    return "experts" if name in ("math", "language") else "router"


def _fit(
    task: Any,
    cfg: Any,
    *,
    name: str,
    seed: int,
    out: Path,
    recipe: VeloraRecipe,
    on_event: EventFn,
    layer_groups: list[LayerGroup] | None = None,
) -> dict[str, Any]:
    summary = fit_in_run(
        task,
        cfg,
        name=name,
        seed=seed,
        out=out,
        recipe_name=recipe.name,
        on_event=on_event,
        validate=task.validation,
        layer_groups=layer_groups,
        keep_best=True,
    )
    keys = ("steps", "seconds", "resumed_from", "skipped_steps", "best_step", "best_validation")
    result = {k: summary[k] for k in keys}
    on_event(Event.TRAIN_END, {"model": name, **result})
    return result


def _layer_groups(model: Velora, recipe: VeloraRecipe) -> list[LayerGroup]:
    named = model.layer_groups()
    return [
        LayerGroup(g, named[g], lr_mult=stage.lr_mult, start=stage.start)
        for stage in recipe.finetune.schedule
        for g in stage.groups
    ]


def run_velora(
    recipe: VeloraRecipe,
    out: Path,
    *,
    phase: str = "all",
    resume: bool = False,
    command: str = "",
    on_event: EventFn = no_event,
) -> dict[str, Any]:
    """Run the recipe's ``phase`` (or all three) into ``out``; returns metrics.json's content."""
    if phase not in (*PHASES, "all"):
        raise RunDirError(f"unknown phase {phase!r}; phases are: {', '.join(PHASES)}, all")
    if phase in ("router", "finetune") and not resume:
        raise RunDirError(
            f"--phase {phase} continues a run whose earlier phases are done: "
            "use --resume DIR (or --phase all for a fresh run)"
        )
    runtime = Runtime.of(recipe)  # a device this machine lacks fails before anything is written
    started = time.perf_counter()
    with on_cpu():
        data = load_data(recipe)  # and so does bad data
        enc = encode_data(data, recipe)
    enc = runtime.to(enc)  # the (small) data sets live on the models' device
    sizes = {
        "math": {k: len(v) for k, v in data.math.items()},
        "language": {k: len(v) for k, v in data.language.items()},
        "extrapolation": len(data.extrapolation),
        "mixed": {k: int(v.domain.shape[0]) for k, v in enc.mixed.items()},
    }
    open_run(
        recipe,
        out,
        resume=resume,
        command=command,
        on_event=on_event,
        data={
            "source": recipe.data.path or "generated",
            "sizes": {k: sum(v.values()) if isinstance(v, dict) else v for k, v in sizes.items()},
            "unit": "items",
            "seconds": time.perf_counter() - started,
        },
        threads=recipe.math.train.threads,
    )
    files = write_datasets(out / "data", data)
    metrics_path = out / "metrics.json"
    results: dict[str, Any] = {
        "task": "velora",
        "recipe": recipe.name,
        "description": recipe.description,
        "data": {
            "sizes": sizes,
            "files": {k: str(Path(v).name) for k, v in files.items()},
            "operand_range": [recipe.data.low, recipe.data.high],
        },
        "phases_done": [],
        "params": {},
        "train": {},
        "experts": {},
        "phases": {},
        "models": {},
        "runtime": runtime.describe(),
    }
    if resume and metrics_path.exists():
        try:
            previous = json.loads(metrics_path.read_text())
            if previous.get("task") == "velora":
                results.update(
                    {
                        k: previous[k]
                        for k in ("phases_done", "train", "experts", "phases")
                        if k in previous
                    }
                )
        except ValueError:
            pass

    run = list(PHASES) if phase == "all" else [phase]
    math_expert, language = build_experts(recipe)
    results["params"] = {
        "math": count_parameters(math_expert),
        "language": count_parameters(language),
    }

    def save() -> None:
        results["models"] = {"velora": _contract(results)}
        atomic_write_json(metrics_path, json_safe(results))

    if "experts" in run:
        for index, (name, model, task_cls) in enumerate(
            (("math", math_expert, MathTask), ("language", language, LanguageTask))
        ):
            cfg = getattr(recipe, name).train
            torch.manual_seed(recipe.seed + 10 + index)
            task = task_cls(model, enc, cfg.batch_size, runtime)
            results["train"][name] = _fit(
                task,
                cfg,
                name=name,
                seed=recipe.seed + 1000 + index,
                out=out,
                recipe=recipe,
                on_event=on_event,
            )
        _judge_experts(results, math_expert, language, enc, runtime)
        _mark(results, "experts")
        save()
    else:
        _load_best(math_expert, out, "math", phase)
        _load_best(language, out, "language", phase)

    velora = build_velora(recipe, math_expert, language)
    results["params"]["velora"] = sum(p.numel() for p in velora.parameters())
    if "router" in run:
        freeze([velora.math, velora.language])
        task = SystemTask(velora, enc, recipe, recipe.phase2.batch_size, runtime)
        results["train"]["router"] = _fit(
            task,
            recipe.phase2,
            name="router",
            seed=recipe.seed + 2000,
            out=out,
            recipe=recipe,
            on_event=on_event,
        )
        unfreeze([velora.math, velora.language])
        results["phases"]["router"] = _judge_phase(velora, enc, runtime)
        _mark(results, "router")
        save()
    elif "finetune" in run:
        _load_best(velora, out, "router", phase)

    if "finetune" in run:
        task = SystemTask(velora, enc, recipe, recipe.finetune.train.batch_size, runtime)
        results["train"]["finetune"] = _fit(
            task,
            recipe.finetune.train,
            name="finetune",
            seed=recipe.seed + 3000,
            out=out,
            recipe=recipe,
            on_event=on_event,
            layer_groups=_layer_groups(velora, recipe),
        )
        results["phases"]["finetune"] = _judge_phase(velora, enc, runtime)
        _judge_experts(results, velora.math, velora.language, enc, runtime)
        _mark(results, "finetune")

    if "router" in results["phases_done"] or "finetune" in results["phases_done"]:
        results["explanations"] = explain(velora, enc.mixed["test"], recipe.explain, recipe.seed)
        results["arithmetic"] = velora.math.arith.weights()
    results["models"] = {"velora": _contract(results)}
    return close_run(out, results, on_event)


def _mark(results: dict[str, Any], phase: str) -> None:
    if phase not in results["phases_done"]:
        results["phases_done"].append(phase)


def _judge_experts(
    results: dict[str, Any],
    m: MathExpert,
    g: LanguageExpert,
    enc: Encoded,
    runtime: Runtime = CPU,
) -> None:
    results["experts"] = {
        "math": judge_math(m, enc.math["test"], runtime),
        "math_extrapolation": judge_math(m, enc.extrapolation, runtime),
        "language": judge_language(g, enc.language["test"], runtime),
    }


def _judge_phase(model: Velora, enc: Encoded, runtime: Runtime = CPU) -> dict[str, Any]:
    return {
        "test": judge_system(model, enc.mixed["test"], runtime),
        "val": judge_system(model, enc.mixed["val"], runtime),
    }


def _contract(results: dict[str, Any]) -> dict[str, Any]:
    """``models.velora``: the issue's metrics contract (fractions in [0, 1]), as far as run."""
    ex = results.get("experts", {})
    m, x, g = ex.get("math", {}), ex.get("math_extrapolation", {}), ex.get("language", {})
    phases = results.get("phases", {})
    last = phases.get("finetune") or phases.get("router") or {}
    test = last.get("test", {})
    row = {
        "router_accuracy": test.get("router_accuracy"),
        "language_accuracy": g.get("accuracy"),
        "math_op_accuracy": m.get("op_accuracy"),
        "math_within_1pct": m.get("within_1pct_by_op"),
        "math_extrapolation_within_1pct": x.get("within_1pct"),
        "mixed_score": test.get("mixed_score"),
        "oracle_mixed_score": test.get("oracle_mixed_score"),
    }
    if "router" in phases and "finetune" in phases:
        row["mixed_score_phase2"] = phases["router"]["test"]["mixed_score"]
        row["mixed_score_phase3"] = phases["finetune"]["test"]["mixed_score"]
    return row


def _last_phase(recipe: VeloraRecipe, run_dir: Path) -> str:
    phase = next(
        (p for p in ("finetune", "router") if has_checkpoint(run_dir / "checkpoint" / p / "best")),
        None,
    )
    if phase is None:
        raise RunDirError(
            f"{run_dir} has no trained VELORA system yet; run its phases first "
            f"('tertulia run {recipe.name} --out {run_dir}')"
        )
    return phase


def load_velora(recipe: VeloraRecipe, run_dir: Path) -> LoadedRun:
    """The whole system after its last finished phase (its best-validating weights), on
    ``recipe.runtime``'s device, as ``models["velora"]``."""
    phase = _last_phase(recipe, run_dir)
    model = build_velora(recipe, *build_experts(recipe))
    best = run_dir / "checkpoint" / phase / "best"
    groups, meta = load_checkpoint(best, require=("model",))
    load_weights(model, groups["model"], source=checkpoint_folder(best) / "model.safetensors")
    model.eval()
    summary = {"phase": phase, "steps": meta.get("step"), "seconds": meta.get("seconds", 0.0)}
    return LoadedRun(run_dir, recipe, {"velora": model}, {"velora": summary})


def velora_targets(recipe: VeloraRecipe, run_dir: Path) -> list[Target]:
    """The whole system after its last finished phase (its best-validating weights), judged
    by the mixed score of the test split."""
    loaded = load_velora(recipe, run_dir)
    model = loaded.models["velora"]
    runtime = Runtime.of(recipe)
    with on_cpu():
        enc = encode_data(load_data(recipe), recipe)
    enc = runtime.to(enc)
    phase = loaded.summaries["velora"]["phase"]
    cfg = recipe.finetune.train if phase == "finetune" else recipe.phase2
    return [
        Target(
            name="velora",
            model=model,
            make_task=lambda m: SystemTask(m, enc, recipe, cfg.batch_size, runtime),
            judge=lambda m: judge_system(m, enc.mixed["test"], runtime),
            metric="mixed_score",
            higher_is_better=True,
            train=cfg,
            seed=recipe.seed + 3000,
        )
    ]


def evaluate_velora(
    recipe: VeloraRecipe, run_dir: Path, *, on_event: EventFn = no_event
) -> dict[str, Any]:
    """Re-judge a run: resuming it with its phases done only judges them again."""
    return run_velora(recipe, run_dir, resume=True, on_event=on_event)


JOB = Job(
    tasks=("velora",),
    run=run_velora,
    evaluate=evaluate_velora,
    load=load_velora,
    targets=velora_targets,
    data_dir=lambda folder: [f"data.path={folder}"],
    phases=PHASES,
    model_names=lambda recipe: ["velora"],
    metric_keys=(
        "mixed_score", "router_accuracy", "language_accuracy", "math_op_accuracy",
        "math_within_1pct", "math_extrapolation_within_1pct", "oracle_mixed_score",
        "mixed_score_phase2", "mixed_score_phase3",
    ),  # fmt: skip
    higher_is_better=frozenset(
        {"mixed_score", "router_accuracy", "language_accuracy", "math_op_accuracy",
         "math_within_1pct", "math_extrapolation_within_1pct", "oracle_mixed_score",
         "mixed_score_phase2", "mixed_score_phase3"}
    ),  # fmt: skip
    main_metric=("velora", "mixed_score"),
)
