"""Block training (seed §4.3): alternate optimisation over subsets of cells.

At each step only one *block* of nodes learns; the others are frozen. A
:class:`BlockSchedule` says which nodes are active at step t (every node, a
round robin over consecutive groups, or a custom cycle of node lists) and a
:class:`BlockFreezer` enforces it around an ordinary optimiser.

The orchestra stacks the parameters of all nodes on axis 0 of shared tensors
(:meth:`~tertulia.nn.Orchestra.per_cell_parameters`), so a frozen cell is a set
of *rows*, not a tensor, and ``requires_grad`` cannot express it. Instead:

* :meth:`BlockFreezer.mask_grads` zeroes the gradient rows of frozen nodes
  after ``backward`` and before gradient clipping, so the clip norm measures
  the active block only;
* :meth:`BlockFreezer.step` snapshots the frozen rows of every per-cell
  parameter and of every optimiser state tensor of the same shape (AdamW's
  ``exp_avg``, ``exp_avg_sq``, …), runs ``optimizer.step()`` and writes the
  rows back. Zero gradients alone would not do: AdamW's decoupled weight decay
  shrinks every row, and non-zero moments keep moving a row whose gradient is
  zero. Frozen cells thus keep their weights *and* their optimiser state
  bit-for-bit, and a block that becomes active again continues from its own
  Adam moments.

Limitation: scalar state such as Adam's ``step`` counter is shared by all rows
of a tensor and keeps counting while a block is frozen, so the bias correction
of a reactivated block uses the global step count, not the number of steps
that block has actually trained (the correction is then ≈ 1 sooner than it
would be for that block alone).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..config import BlocksConfig

KINDS = ("none", "round_robin", "custom")


class BlockSchedule:
    """Which nodes learn at step t.

    Kinds:

    * ``"none"``: every node is always active (a single block of all nodes);
    * ``"round_robin"``: consecutive groups of ``size`` nodes ``[0..size-1],
      [size..2·size-1], …`` (the last possibly shorter); block
      ``(t // every) % n_blocks`` is active at step t;
    * ``"custom"``: the node lists of ``schedule`` cycled the same way. Nodes
      that appear in no block never learn.

    Nodes are numbered as in the graph: cells, then the coordinator, then
    memory slots.
    """

    def __init__(
        self,
        nodes: int,
        *,
        kind: str,
        size: int = 1,
        every: int = 100,
        schedule: list[list[int]] | None = None,
    ):
        """Validate the arguments and build the blocks.

        Args:
            nodes: number of nodes N (cells + coordinator + memory slots).
            kind: ``"none"``, ``"round_robin"`` or ``"custom"``.
            size: nodes per round-robin block (``1 ≤ size ≤ nodes``).
            every: steps before the next block takes over (≥ 1).
            schedule: ``kind="custom"`` only: the blocks in order, each a
                non-empty list of distinct node indices in ``[0, nodes)``.

        Raises:
            ValueError: on any invalid argument.
        """
        if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
            raise ValueError(f"nodes must be a positive integer, got {nodes!r}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        if kind != "custom" and schedule:
            raise ValueError(f"schedule is only used with kind='custom', got kind={kind!r}")
        self.nodes, self.kind, self.size, self.every = nodes, kind, size, every
        if kind == "none":
            blocks = [list(range(nodes))]
        elif kind == "round_robin":
            if size > nodes:
                raise ValueError(f"round_robin block size={size} exceeds the {nodes} nodes")
            blocks = [list(range(i, min(i + size, nodes))) for i in range(0, nodes, size)]
        else:
            blocks = self._check_custom(schedule, nodes)
        self._blocks = [frozenset(b) for b in blocks]
        self._lists = [list(b) for b in blocks]

    @staticmethod
    def _check_custom(schedule: list[list[int]] | None, nodes: int) -> list[list[int]]:
        if not schedule:
            raise ValueError("kind='custom' needs a non-empty schedule of node lists")
        blocks = []
        for k, block in enumerate(schedule):
            block = list(block)
            if not block:
                raise ValueError(f"custom block {k} is empty")
            for i in block:
                if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < nodes:
                    raise ValueError(f"custom block {k} has node {i!r} outside [0, {nodes})")
            if len(set(block)) != len(block):
                raise ValueError(f"custom block {k} repeats a node: {block}")
            blocks.append(block)
        return blocks

    @classmethod
    def from_config(cls, cfg: BlocksConfig, nodes: int) -> BlockSchedule:
        """The schedule of ``train.blocks`` for a model with ``nodes`` nodes."""
        return cls(
            nodes,
            kind=cfg.kind,
            size=cfg.size,
            every=cfg.every,
            schedule=[list(b) for b in cfg.schedule] if cfg.kind == "custom" else None,
        )

    @property
    def blocks(self) -> list[list[int]]:
        """The blocks in the order they take turns (a copy)."""
        return [list(b) for b in self._lists]

    def block_index(self, step: int) -> int:
        """Index into :attr:`blocks` of the block active at ``step`` (0 for kind ``"none"``)."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        return (step // self.every) % len(self._blocks)

    def active(self, step: int) -> frozenset[int]:
        """The nodes that learn at ``step``."""
        return self._blocks[self.block_index(step)]

    def __repr__(self) -> str:
        if self.kind == "none":
            return f"BlockSchedule(nodes={self.nodes}, kind='none')"
        return (
            f"BlockSchedule(nodes={self.nodes}, kind={self.kind!r}, every={self.every}, "
            f"blocks={self._lists})"
        )


@runtime_checkable
class PerCell(Protocol):
    """What block training needs: the per-node parameters and all parameters.

    An :class:`~tertulia.nn.Orchestra` is one; so is a :class:`CellLayout`.
    """

    def per_cell_parameters(self) -> list[tuple[nn.Parameter, list[int]]]: ...

    def parameters(self) -> Iterator[nn.Parameter]: ...


@dataclass(frozen=True)
class CellLayout:
    """A model's parameters as block training sees them: ``nodes`` nodes, each row of
    axis 0 of the ``per_cell`` tensors belonging to the node listed for it; the rest of
    ``all_parameters`` belongs to no node."""

    nodes: int
    per_cell: tuple[tuple[nn.Parameter, tuple[int, ...]], ...]
    all_parameters: tuple[nn.Parameter, ...]

    @classmethod
    def of(
        cls,
        model: nn.Module,
        *,
        nodes: int,
        per_cell: Sequence[tuple[nn.Parameter, Sequence[int]]],
    ) -> CellLayout:
        """The layout of ``model`` whose per-node parameters are ``per_cell``."""
        return cls(
            nodes=nodes,
            per_cell=tuple((p, tuple(rows)) for p, rows in per_cell),
            all_parameters=tuple(model.parameters()),
        )

    def per_cell_parameters(self) -> list[tuple[nn.Parameter, list[int]]]:
        """The per-node tensors with the node of each row (as :class:`PerCell` asks)."""
        return [(p, list(rows)) for p, rows in self.per_cell]

    def parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter of the model, per-node or shared."""
        return iter(self.all_parameters)


@dataclass(frozen=True)
class BlockPlan:
    """Block training of a task's model (what a task's ``block_plan`` returns): its
    per-node parameters, the schedule of active nodes, and whether the shared
    parameters learn."""

    cells: CellLayout
    schedule: BlockSchedule
    train_shared: bool = True

    @classmethod
    def from_config(cls, cells: CellLayout, cfg: BlocksConfig) -> BlockPlan | None:
        """The plan of ``train.blocks`` over ``cells``; None for ``kind: none`` (every
        node always learns, no freezing needed)."""
        if cfg.kind == "none":
            return None
        return cls(cells, BlockSchedule.from_config(cfg, cells.nodes), train_shared=cfg.shared)


class BlockFreezer:
    """Freeze the rows of inactive nodes around ``optimizer.step()``.

    Typical step::

        loss.backward()
        freezer.mask_grads(t)
        torch.nn.utils.clip_grad_norm_(params, clip)
        freezer.step(t)        # instead of optimizer.step()

    Guarantee of :meth:`step`: the frozen rows of every per-cell parameter and
    of every optimiser state tensor with that parameter's shape are
    bit-identical before and after the step; active rows update normally.
    With ``train_shared=False`` the shared parameters (those not returned by
    ``per_cell_parameters``) and their whole state are untouched as well: their
    gradients are hidden from the optimiser, which then skips them entirely.
    """

    def __init__(
        self,
        model: PerCell,
        optimizer: torch.optim.Optimizer,
        schedule: BlockSchedule,
        *,
        train_shared: bool = True,
    ):
        """Bind a model, its optimiser and a schedule.

        Args:
            model: provides ``per_cell_parameters()`` and ``parameters()`` (an
                Orchestra, a :class:`CellLayout`).
            optimizer: any torch optimiser over (some of) the model's parameters.
            schedule: which nodes learn at each step; must cover every node
                index the model's rows refer to.
            train_shared: also train the parameters that belong to no node.

        Raises:
            ValueError: if the model has no ``per_cell_parameters`` or refers
                to nodes beyond ``schedule.nodes``.
        """
        if not isinstance(model, PerCell):
            raise ValueError(
                f"{type(model).__name__} has no per_cell_parameters(); "
                "block training needs parameters stacked per node"
            )
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.train_shared = train_shared
        self._per_cell: list[tuple[nn.Parameter, torch.Tensor]] = []
        seen: set[int] = set()
        for p, rows in model.per_cell_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            if p.ndim == 0 or p.shape[0] != len(rows):
                raise ValueError(
                    f"parameter of shape {tuple(p.shape)} does not have {len(rows)} rows"
                )
            if rows and (min(rows) < 0 or max(rows) >= schedule.nodes):
                raise ValueError(
                    f"{type(model).__name__} refers to node {max(rows)} but the schedule "
                    f"has only {schedule.nodes} nodes"
                )
            self._per_cell.append((p, torch.tensor(rows, dtype=torch.long, device=p.device)))
        self._shared = [p for p in model.parameters() if id(p) not in seen]
        self._total = sum(p.numel() for p, _ in self._per_cell)
        self._cache: dict[frozenset[int], list[tuple[nn.Parameter, torch.Tensor]]] = {}

    @classmethod
    def from_plan(cls, plan: BlockPlan, optimizer: torch.optim.Optimizer) -> BlockFreezer:
        """A freezer carrying out ``plan`` around ``optimizer``."""
        return cls(plan.cells, optimizer, plan.schedule, train_shared=plan.train_shared)

    # ---------------------------------------------------------------- helpers

    def _frozen_rows(self, step: int) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, positions along axis 0 of its frozen rows), only where some are frozen."""
        active = self.schedule.active(step)
        out = self._cache.get(active)
        if out is None:
            out = []
            for p, nodes in self._per_cell:
                frozen = [int(i) not in active for i in nodes.tolist()]
                is_frozen = torch.tensor(frozen, dtype=torch.bool, device=p.device)
                if is_frozen.any():
                    idx = is_frozen.nonzero().flatten()
                    out.append((p, idx))
            self._cache[active] = out
        return out

    def _state_tensors(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.optimizer.state.get(p, {})
        return {
            k: v
            for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.shape == p.shape and v is not p
        }

    # ----------------------------------------------------------------- public

    def frozen_fraction(self, step: int) -> float:
        """Fraction of per-cell parameter entries frozen at ``step`` (0 when none)."""
        if self._total == 0:
            return 0.0
        frozen = sum(idx.numel() * (p.numel() // p.shape[0]) for p, idx in self._frozen_rows(step))
        return frozen / self._total

    @torch.no_grad()
    def mask_grads(self, step: int) -> None:
        """Zero the gradient rows of the nodes frozen at ``step``.

        Call after ``backward`` and before clipping. With ``train_shared=False``
        the shared parameters' gradients are set to ``None`` (so neither the
        clip norm nor the optimiser sees them).
        """
        for p, idx in self._frozen_rows(step):
            if p.grad is not None:
                p.grad.index_fill_(0, idx, 0)
        if not self.train_shared:
            for p in self._shared:
                p.grad = None

    @torch.no_grad()
    def step(self, step: int) -> None:
        """``optimizer.step()`` leaving frozen rows and their optimiser state bit-identical.

        Frozen rows of each per-cell parameter and of each state tensor with
        its shape are snapshot before the step and written back after it. If
        a parameter had no state yet (its first step), the state created by
        the step has its frozen rows set to zero, which is what a fresh
        (zero-initialised, e.g. Adam) state holds, so a block that first
        becomes active later starts its moments from zero. When every node is
        active the optimiser runs directly, without snapshots.
        """
        frozen = self._frozen_rows(step)
        hidden: list[tuple[nn.Parameter, torch.Tensor]] = []
        if not self.train_shared:  # hide shared grads: the optimiser skips the parameter
            for p in self._shared:
                if p.grad is not None:
                    hidden.append((p, p.grad))
                    p.grad = None
        try:
            if not frozen:
                self.optimizer.step()
                return
            snaps: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor, dict[str, Any]]] = []
            for p, idx in frozen:
                states = {k: v.index_select(0, idx) for k, v in self._state_tensors(p).items()}
                snaps.append((p, idx, p.detach().index_select(0, idx), states))
            self.optimizer.step()
            for p, idx, rows, states in snaps:
                p.detach().index_copy_(0, idx, rows)
                for k, v in self._state_tensors(p).items():
                    if k in states:
                        v.index_copy_(0, idx, states[k])
                    else:  # created by this step: frozen rows as a fresh state
                        v.index_fill_(0, idx, 0)
        finally:
            for p, g in hidden:
                p.grad = g
