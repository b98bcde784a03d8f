"""The continuum-memory rule at training time: parameter groups updated at their own frequency.

``MultiFrequency(inner)`` wraps any ``torch.optim.Optimizer`` whose param groups
may carry ``period`` C ≥ 1 (default 1). Every call to :meth:`step` adds the
current gradients into a per-parameter buffer; a group with period C is stepped
by ``inner`` only on calls C, 2C, 3C, … (counting from 1), with its gradients
replaced by the mean of its chunk,

    g ← (1/C) Σ_{t in chunk} ∇L_t ,

after which the buffer is cleared. Between its updates a group's parameters do
not change at all: the gradients of groups not due are set to ``None`` before
``inner.step()``, and every torch optimiser skips such parameters (no weight
decay, no momentum drift). This is eq. (71) of Behrouz et al., "Nested
Learning", with any optimiser in place of the plain gradient step.

Legend: C a group's period, t the step count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class MultiFrequency(torch.optim.Optimizer):
    """Step each param group of ``inner`` every ``group["period"]`` calls, on its chunk's mean
    gradient.

    >>> opt = MultiFrequency(torch.optim.Adam([
    ...     {"params": fast.parameters(), "period": 1},
    ...     {"params": slow.parameters(), "period": 16}], lr=1e-3))   # doctest: +SKIP
    """

    def __init__(self, inner: torch.optim.Optimizer):
        if not isinstance(inner, torch.optim.Optimizer):
            raise ValueError(f"MultiFrequency wraps a torch.optim.Optimizer, got {type(inner)}")
        for group in inner.param_groups:
            period = group.setdefault("period", 1)
            if not isinstance(period, int) or period < 1:
                raise ValueError(f"a param group's period must be an integer >= 1, got {period!r}")
        self.inner = inner
        self.calls = 0
        self._acc: dict[torch.Tensor, torch.Tensor] = {}
        # share the inner optimiser's groups and state: schedulers and hooks see one optimiser
        self.param_groups = inner.param_groups
        self.defaults = inner.defaults
        self.state = inner.state
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}
        self._optimizer_state_dict_pre_hooks = {}
        self._optimizer_state_dict_post_hooks = {}
        self._optimizer_load_state_dict_pre_hooks = {}
        self._optimizer_load_state_dict_post_hooks = {}

    def __repr__(self) -> str:
        periods = [g["period"] for g in self.param_groups]
        return f"MultiFrequency({type(self.inner).__name__}, periods={periods})"

    def due(self, group: dict[str, Any], call: int | None = None) -> bool:
        """Whether ``group`` updates at call number ``call`` (default: the next one)."""
        call = self.calls + 1 if call is None else call
        return call % group["period"] == 0

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.calls += 1
        held: list[tuple[torch.Tensor, torch.Tensor]] = []
        for group in self.param_groups:
            period = group["period"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if period == 1:
                    continue
                acc = self._acc.get(p)
                self._acc[p] = p.grad.detach().clone() if acc is None else acc.add_(p.grad)
            if period == 1:
                continue
            due = self.calls % period == 0
            for p in group["params"]:
                if p not in self._acc:
                    continue
                if due:
                    p.grad = self._acc.pop(p).div_(period)
                elif p.grad is not None:
                    held.append((p, p.grad))
                    p.grad = None
        self.inner.step()
        for p, g in held:  # the caller's gradients are left as they were
            p.grad = g
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The inner optimiser's state dict, in torch's format, with the chunk accumulators
        under ``state[i]["multifrequency_acc"]`` and the call count in every group (so
        checkpoint code written for torch optimisers stores it unchanged)."""
        sd = self.inner.state_dict()
        index = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        state = {k: dict(v) for k, v in sd["state"].items()}
        for p, acc in self._acc.items():
            state.setdefault(index[p], {})["multifrequency_acc"] = acc.clone()
        groups = [dict(g, multifrequency_calls=self.calls) for g in sd["param_groups"]]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = {int(k): dict(v) for k, v in state_dict["state"].items()}
        acc = {
            k: v.pop("multifrequency_acc") for k, v in state.items() if "multifrequency_acc" in v
        }
        groups = [dict(g) for g in state_dict["param_groups"]]
        calls = [g.pop("multifrequency_calls", 0) for g in groups]
        self.inner.load_state_dict(
            {"state": {k: v for k, v in state.items() if v}, "param_groups": groups}
        )
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state
        self.calls = int(calls[0]) if calls else 0
        params = [p for g in self.param_groups for p in g["params"]]
        self._acc = {params[k]: t.detach().clone() for k, t in acc.items()}
