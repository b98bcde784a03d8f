"""The continuum-memory rule at training time: parameter groups updated at their own frequency.

``MultiFrequency(inner)`` wraps any ``torch.optim.Optimizer`` whose param groups
may carry ``period`` C ≥ 1 (default 1). Every call to :meth:`MultiFrequency.step`
adds the current gradients into a per-parameter buffer; a group with period C is
stepped by ``inner`` only on calls C, 2C, 3C, … (counting from 1), with its
gradients replaced by the mean over its chunk,

    g ← (1/C) Σ_{t = kC−C+1}^{kC} ∇L_t        (on call t = kC; buffer cleared after)

Between its updates a group's parameters do not change at all: the gradients of
groups not due are set to ``None`` before ``inner.step()`` (every torch
optimiser skips such parameters: no weight decay, no momentum drift) and given
back to the caller afterwards. This is eq. (71) of Behrouz et al., "Nested
Learning", with any optimiser in place of the plain gradient step.

The wrapper is a ``torch.optim.Optimizer`` whose ``param_groups``, ``state`` and
``defaults`` are the inner optimiser's own objects, so learning-rate schedulers,
step hooks and ``isinstance`` checks work as with the inner optimiser.

Legend: C a group's period, t the call count, k the chunk index, ∇L_t the gradient at call t.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["MultiFrequency"]

_ACC = "multifrequency_acc"  # per-parameter accumulator, in state_dict()["state"][i]
_CALLS = "multifrequency_calls"  # call counter, in every state_dict()["param_groups"][j]


def _check_period(group: dict[str, Any]) -> None:
    period = group.setdefault("period", 1)
    if isinstance(period, bool) or not isinstance(period, int) or period < 1:
        raise ValueError(f"a param group's period must be an integer >= 1, got {period!r}")


class MultiFrequency(torch.optim.Optimizer):
    """Step each param group of ``inner`` every ``group["period"]`` calls, on its chunk's mean
    gradient.

    Args:
        inner: the optimiser doing the updates; its groups may carry ``period`` (int ≥ 1).

    >>> opt = MultiFrequency(torch.optim.Adam([
    ...     {"params": fast.parameters(), "period": 1},
    ...     {"params": slow.parameters(), "period": 16}], lr=1e-3))   # doctest: +SKIP
    """

    _ready = False  # set once __init__ is done: later groups go to the inner optimiser

    def __init__(self, inner: torch.optim.Optimizer) -> None:
        if not isinstance(inner, torch.optim.Optimizer):
            raise ValueError(f"MultiFrequency wraps a torch.optim.Optimizer, got {type(inner)}")
        for group in inner.param_groups:
            _check_period(group)
        # the base class sets up hooks and the step profiling; then share the inner objects
        super().__init__([{"params": list(g["params"])} for g in inner.param_groups], {})
        self.inner = inner
        self.param_groups = inner.param_groups
        self.state = inner.state
        self.defaults = inner.defaults
        self.calls = 0
        self._acc: dict[torch.Tensor, torch.Tensor] = {}
        self._ready = True

    def __repr__(self) -> str:
        periods = [g["period"] for g in self.param_groups]
        return f"MultiFrequency({type(self.inner).__name__}, periods={periods})"

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (with optional ``period``) to the inner optimiser."""
        if not self._ready:
            super().add_param_group(param_group)
            return
        _check_period(param_group)
        self.inner.add_param_group(param_group)

    def due(self, group: dict[str, Any], call: int | None = None) -> bool:
        """Whether ``group`` updates at call number ``call`` (default: the next one)."""
        call = self.calls + 1 if call is None else call
        return call % group["period"] == 0

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Accumulate the gradients, step the groups that are due; returns ``closure()``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.calls += 1
        held: list[tuple[torch.Tensor, torch.Tensor]] = []
        for group in self.param_groups:
            period = group["period"]
            if period == 1:  # a chunk of one: the gradient is its own mean
                continue
            due = self.calls % period == 0
            for p in group["params"]:
                if p.grad is not None:
                    acc = self._acc.get(p)
                    if acc is None:
                        self._acc[p] = p.grad.detach().clone()
                    else:
                        acc.add_(p.grad)
                if due:
                    if p in self._acc:
                        p.grad = self._acc.pop(p).div_(period)
                elif p.grad is not None:
                    held.append((p, p.grad))
                    p.grad = None
        try:
            self.inner.step()
        finally:
            for p, g in held:  # the caller's gradients are left as they were
                p.grad = g
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero (or drop) the gradients; the chunk accumulators are kept."""
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The inner optimiser's state dict, in torch's format, with each chunk accumulator
        under ``state[i]["multifrequency_acc"]`` and the call count as
        ``param_groups[j]["multifrequency_calls"]`` (so checkpoint code written for torch
        optimisers stores both unchanged)."""
        sd = self.inner.state_dict()
        params = [p for g in self.param_groups for p in g["params"]]
        index = {id(p): i for i, p in enumerate(params)}
        state = {k: dict(v) for k, v in sd["state"].items()}
        for p, acc in self._acc.items():
            state.setdefault(index[id(p)], {})[_ACC] = acc.clone()
        groups = [dict(g, **{_CALLS: self.calls}) for g in sd["param_groups"]]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` returned (accumulators and call count included)."""
        state = {int(k): dict(v) for k, v in state_dict["state"].items()}
        acc = {k: v.pop(_ACC) for k, v in state.items() if _ACC in v}
        groups = [dict(g) for g in state_dict["param_groups"]]
        calls = [g.pop(_CALLS, 0) for g in groups]
        self.inner.load_state_dict(
            {"state": {k: v for k, v in state.items() if v}, "param_groups": groups}
        )
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state
        self.calls = int(calls[0]) if calls else 0
        params = [p for g in self.param_groups for p in g["params"]]
        self._acc = {
            params[k]: t.detach().to(params[k].device, params[k].dtype).clone()
            for k, t in acc.items()
        }
