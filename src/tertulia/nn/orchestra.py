"""The orchestra: tiny recursive cells that talk until they agree.

A 1-D field of G points is split into n contiguous patches of P = G/n points,
one cell per patch. Cell i sees its patch of the last w noisy frames,
``x_i ∈ R^{w·P}``, encodes it once (``e_i = enc_i(x_i)``, also the initial
state), then every round

    M = messages(S, graph)                        (eqs. 2–3)
    s_i ← f_θi(s_i, m_i, e_i)                     (eq. 1)

either for all cells at once (``sync``, Jacobi) or one cell after another
using the neighbours' already-updated states (``async``, Gauss–Seidel, fixed or
random order). The solver object decides how many rounds run and where the
gradient flows (:mod:`tertulia.solvers`). Finally each cell's Gaussian head
predicts its patch of the next frame plus ``h`` halo points on each side; the
halo predictions overlap the neighbours' patches and feed the consistency
regulariser R(S) of eq. (4):

    R = mean over cells and halo points of (μ_i^halo − μ_owner)²

Inputs and outputs are in physical units; internally fields are divided by
``scale`` (the training data's standard deviation).

The cell kind is a choice: ``cell="trm"`` (the residual MLP of
:mod:`tertulia.nn.cells`, state S0 = E, :class:`StackedGaussianHead`) or
``cell="kalman"`` (:mod:`tertulia.nn.kalman_cell`: the state ``[μ, log p]`` of
a diagonal Gaussian, one learned predict/update per round with ``e_i`` as the
measurement and the message as control input, starting from the learned prior
``[μ0_i, log p0_i]``; :class:`KalmanHead` reads it out linearly with variance
``(W∘W) p + ρ``) or ``cell="ssm"`` (:mod:`tertulia.nn.ssm_cell`: each round
the cell scans its patch of the window along space with a bidirectional
diagonal SSM whose step sizes its state and message select, then a TRM update
reads the scan; its local input is the window lifted point by point,
``u_i`` of shape (P, h), not the flat encoding). The round contract
``S ↦ F(S)`` is the same for all three, so every solver and schedule works
with any of them.

Legend: B batch, w window, G grid, n cells, P patch, h halo, N nodes
(cells + coordinator + memory slots), d state, d_m message.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..layout import patch_size
from ..solvers import Equilibrium, SolverTrace, Unrolled
from .cells import CellBank
from .graph import Graph
from .heads import KalmanHead, Prediction, StackedGaussianHead
from .kalman_cell import KalmanCellBank
from .messaging import AttentionMessenger, MemorySlots
from .ssm_cell import SSMCellBank
from .stacked import StackedLinear


@dataclass
class OrchestraTrace:
    """How the rounds went: residual per round, rounds used, last attention map.

    ``round_map`` is the round ``S ↦ F(S)`` of this forward pass (it closes over
    the encoded inputs), so stability tools can linearise it at ``solver.state``.
    """

    solver: SolverTrace
    attention: torch.Tensor  # (N, N) batch-mean attention of the last round
    messages: float  # floats sent per prediction: mean rounds × edges × d_m
    round_map: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def rounds(self) -> int:
        return self.solver.rounds

    @property
    def residuals(self) -> list[float]:
        return self.solver.residuals


class Orchestra(nn.Module):
    """n TRM (or Kalman, or SSM) cells over contiguous patches of a periodic 1-D field."""

    def __init__(
        self,
        *,
        grid: int,
        window: int,
        graph: Graph,
        d: int = 64,
        d_msg: int = 16,
        d_key: int = 16,
        hidden_mult: int = 2,
        halo: int = 2,
        schedule: str = "sync",
        order: str = "fixed",
        kernel: str = "batched",
        solver: Unrolled | Equilibrium | None = None,
        scale: float = 1.0,
        skip: str = "state",
        cell: str = "trm",
        ssm_channels: int = 8,
        ssm_state: int = 16,
    ):
        """Build the cells, the messenger and the heads.

        Args:
            grid: points G of the field; the graph's ``cells`` must divide it (else ConfigError).
            window: past frames w each cell sees.
            graph: who talks to whom (:func:`tertulia.nn.make_graph`).
            d, d_msg, d_key: state, message and attention-key sizes.
            hidden_mult: cell MLP width as a multiple of ``d``.
            halo: points each cell also predicts past each patch edge (for R), ≤ P / 2.
            schedule: ``"sync"`` (Jacobi) or ``"async"`` (Gauss–Seidel).
            order: async update order, ``"fixed"`` or ``"random"`` (torch RNG).
            kernel: ``"batched"`` stacked kernel or the per-cell ``"loop"`` reference.
            solver: runs the rounds (default ``Unrolled(6)``).
            scale: data standard deviation; inputs are divided by it internally.
            skip: TRM skip connection, ``"state"`` (residual) or ``"input"`` (DEQ form);
                ignored by Kalman cells.
            cell: ``"trm"`` (residual MLP cells) or ``"kalman"`` (learned linear-Gaussian
                predict/update cells and the innovation-variance head; needs even ``d``;
                ``hidden_mult`` and ``skip`` do not apply) or ``"ssm"`` (a TRM update driven by
                a state/message-selected diagonal SSM scanning the cell's patch).
            ssm_channels, ssm_state: SSM channels h and state size N per channel (even) of
                the ``"ssm"`` cell.
        """
        super().__init__()
        n = graph.cells
        patch = patch_size(grid, n, halo)  # ConfigError unless n divides G and 2h ≤ P
        if schedule not in ("sync", "async"):
            raise ValueError(f"schedule must be 'sync' or 'async', got {schedule!r}")
        if order not in ("fixed", "random"):
            raise ValueError(f"order must be 'fixed' or 'random', got {order!r}")
        if kernel not in ("batched", "loop"):
            raise ValueError(f"kernel must be 'batched' or 'loop', got {kernel!r}")
        if cell not in ("trm", "kalman", "ssm"):
            raise ValueError(f"cell must be 'trm', 'kalman' or 'ssm', got {cell!r}")
        self.graph, self.grid, self.window = graph, grid, window
        self.cells, self.patch, self.halo = n, patch, halo
        self.schedule, self.order, self.kernel, self.cell = schedule, order, kernel, cell
        self.solver = solver if solver is not None else Unrolled(6)
        self.d_msg = d_msg
        n_upd = graph.updating_cells
        self.bank: CellBank | KalmanCellBank | SSMCellBank
        if cell == "ssm":  # the bank lifts the window point by point itself
            self.bank = SSMCellBank(
                n_upd,
                d=d,
                d_msg=d_msg,
                hidden=hidden_mult * d,
                patch=self.patch,
                window=window,
                channels=ssm_channels,
                state=ssm_state,
                skip=skip,
            )
            self.encoder: StackedLinear | None = None
        else:
            self.encoder = StackedLinear(n_upd, window * self.patch, d)
        if cell == "kalman":
            self.bank = KalmanCellBank(n_upd, d=d, d_msg=d_msg)
        elif cell == "trm":
            self.bank = CellBank(n_upd, d=d, d_msg=d_msg, hidden=hidden_mult * d, skip=skip)
        self.messenger = AttentionMessenger(graph, d=d, d_msg=d_msg, d_key=d_key)
        self.memory = (
            MemorySlots(graph.memory_slots, d=d, d_msg=d_msg) if graph.memory_slots else None
        )
        points = self.patch + 2 * halo
        self.head: StackedGaussianHead | KalmanHead
        if cell == "kalman":  # linear read-out whose variance is the filter's, see heads.py
            self.head = KalmanHead(n, d=d, points=points)
        else:
            self.head = StackedGaussianHead(n, d=d, points=points)
        self.register_buffer("scale", torch.tensor(float(scale)))
        # Global grid index of every point a cell predicts, halo included: (n, P + 2h).
        offsets = torch.arange(-halo, self.patch + halo)
        starts = torch.arange(n)[:, None] * self.patch
        self.register_buffer("point_index", (starts + offsets) % grid, persistent=False)
        halo_pos = torch.cat(
            [torch.arange(halo), torch.arange(halo + self.patch, self.patch + 2 * halo)]
        )
        self.register_buffer("halo_pos", halo_pos, persistent=False)

    # ------------------------------------------------------------------ rounds

    def _round_sync(self, s: torch.Tensor, e: torch.Tensor, box: dict) -> torch.Tensor:
        # s: (B, N, d), e: (B, n_upd, d)
        n_upd = e.shape[1]
        if self.kernel == "batched":
            m, alpha = self.messenger(s)
            cells = self.bank.step(s[:, :n_upd], m[:, :n_upd], e)
        else:
            m, alpha = self.messenger.reference(s)
            cells = self.bank.step_reference(s[:, :n_upd], m[:, :n_upd], e)
        box["attention"] = alpha
        if self.memory is None:
            return cells
        return torch.cat([cells, self.memory.update(s[:, n_upd:], m[:, n_upd:])], dim=1)

    def _round_async(self, s: torch.Tensor, e: torch.Tensor, box: dict) -> torch.Tensor:
        # Gauss–Seidel: node i sees the states its predecessors in `order` already updated.
        n_upd, n_nodes = e.shape[1], s.shape[1]
        if self.order == "random":
            order = torch.randperm(n_nodes, device="cpu").tolist()  # torch's CPU RNG: resumable
        else:
            order = list(range(n_nodes))
        states = list(s.unbind(dim=1))
        for i in order:
            current = torch.stack(states, dim=1)
            m_i = self.messenger.message_to(i, current)
            if i < n_upd:
                states[i] = self.bank.step_one(i, states[i], m_i, e[:, i])
            else:
                states[i] = self.memory.update_one(i - n_upd, states[i], m_i)
        box["order"] = order
        return torch.stack(states, dim=1)

    # ----------------------------------------------------------------- forward

    def local_inputs(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, w, G) normalised -> (B, n_upd, w·P); the coordinator sees zeros
        b, w, _ = x.shape
        patches = x.reshape(b, w, self.cells, self.patch).permute(0, 2, 1, 3)
        patches = patches.reshape(b, self.cells, w * self.patch)
        if self.graph.coordinator:
            patches = torch.cat([patches, patches.new_zeros(b, 1, w * self.patch)], dim=1)
        return patches

    def _problem(self, x: torch.Tensor) -> tuple[Callable, torch.Tensor, dict]:
        # x: (B, w, G) -> round map F, initial state S0 (B, N, d), box for the attention map
        if x.ndim != 3 or x.shape[1:] != (self.window, self.grid):
            raise ValueError(
                f"expected input of shape (batch, {self.window}, {self.grid}), got {tuple(x.shape)}"
            )
        b = x.shape[0]
        local = self.local_inputs(x / self.scale)  # (B, n_upd, w·P)
        if isinstance(self.bank, SSMCellBank):  # e: (B, n_upd, P, h), the lifted window
            e = self.bank.lift_window(local.reshape(b, -1, self.window, self.patch).transpose(2, 3))
        else:
            e = self.encoder(local)  # (B, n_upd, d)
        cells0 = e if isinstance(self.bank, CellBank) else self.bank.initial(e)
        s0 = cells0 if self.memory is None else torch.cat([cells0, self.memory.initial(b)], dim=1)
        box: dict = {}
        round_fn = self._round_sync if self.schedule == "sync" else self._round_async

        def round_map(s_: torch.Tensor) -> torch.Tensor:
            return round_fn(s_, e, box)

        return round_map, s0, box

    def fixed_point_problem(
        self, x: torch.Tensor
    ) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
        """The round map ``S ↦ F(S; x)`` and the initial state ``S0`` for input ``x``.

        For experimenting with solvers: ``picard(*orchestra.fixed_point_problem(x))``.
        With spectrally bounded weights, call it inside
        ``torch.nn.utils.parametrize.cached()`` so the weights are computed once.
        """
        f, s0, _ = self._problem(x)
        return f, s0

    def forward(self, x: torch.Tensor) -> Prediction:
        # x: (B, w, G) noisy past frames (physical units) -> Gaussian over the next frame (B, G)
        round_map, s0, box = self._problem(x)
        b, xn = x.shape[0], x / self.scale

        # Spectrally bounded weights are computed once per forward, not once per round.
        cache = parametrize.cached() if self._parametrized() else nullcontext()
        with cache:
            s, strace = self.solver.solve(round_map, s0)

        delta, log_var = self.head(s[:, : self.cells])  # (B, n, P + 2h) each
        last = xn[:, -1][:, self.point_index]  # (B, n, P + 2h)
        mean_ext = last + delta
        h, p = self.halo, self.patch
        mean = mean_ext[:, :, h : h + p].reshape(b, self.grid)
        lv = log_var[:, :, h : h + p].reshape(b, self.grid)

        aux = {"state_norm": s.pow(2).mean()}
        if h > 0:
            owner = mean[:, self.point_index[:, self.halo_pos]]  # (B, n, 2h)
            aux["consistency"] = (mean_ext[:, :, self.halo_pos] - owner).pow(2).mean()
        attention = box.get("attention")
        if attention is None:  # async: recompute the map on the final states for the trace
            with torch.no_grad():
                _, attention = self.messenger(s)
        trace = OrchestraTrace(
            solver=strace,
            attention=attention.detach().mean(dim=0),
            messages=strace.iterations_mean * len(self.graph) * self.d_msg,
            round_map=round_map,
        )
        return Prediction(
            mean=mean * self.scale,
            log_var=lv + 2 * torch.log(self.scale),
            trace=trace,
            aux=aux,
        )

    def _parametrized(self) -> bool:
        return any(parametrize.is_parametrized(m) for m in self.modules())

    def per_cell_parameters(self) -> list[tuple[nn.Parameter, list[int]]]:
        """Every parameter stacked per node, with the node index of each row of axis 0.

        Nodes are numbered as in the graph: cells, then the coordinator, then
        memory slots. Parameters not listed (the shared key/value protocol)
        belong to no node. Block training freezes rows of these tensors.
        """
        n_upd = self.graph.updating_cells
        groups: list[tuple[nn.Module, list[int]]] = [
            (self.bank, list(range(n_upd))),
            (self.messenger.emit, list(range(self.graph.nodes))),
            (self.messenger.query, list(range(self.graph.nodes))),
            (self.head, list(range(self.cells))),
        ]
        if self.encoder is not None:
            groups.append((self.encoder, list(range(n_upd))))
        if self.memory is not None:
            groups.append((self.memory, list(range(n_upd, self.graph.nodes))))
        out = []
        for module, rows in groups:
            for p in module.parameters():
                if p.shape[0] != len(rows):
                    raise RuntimeError(
                        f"parameter of shape {tuple(p.shape)} is not stacked per node"
                    )
                out.append((p, rows))
        return out
