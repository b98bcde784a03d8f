"""Block training: schedules and row-wise freezing of stacked parameters and optimiser state."""

from __future__ import annotations

import pytest
import torch

from tertulia import build
from tertulia.config import BlocksConfig, load_recipe
from tertulia.train.blocks import BlockFreezer, BlockPlan, BlockSchedule, CellLayout

TINY = [
    "model.cells=4",
    "model.d=8",
    "model.d_msg=4",
    "model.d_key=4",
    "model.rounds=2",
    "data.grid=16",
]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ schedule


def test_round_robin_blocks_and_steps():
    s = BlockSchedule(4, kind="round_robin", size=2, every=3)
    assert s.blocks == [[0, 1], [2, 3]]
    expected = [{0, 1}] * 3 + [{2, 3}] * 3 + [{0, 1}] * 3
    assert [set(s.active(t)) for t in range(9)] == expected
    assert [s.block_index(t) for t in range(9)] == [0, 0, 0, 1, 1, 1, 0, 0, 0]
    assert "round_robin" in repr(s)


def test_round_robin_last_block_shorter():
    s = BlockSchedule(4, kind="round_robin", size=3, every=1)
    assert s.blocks == [[0, 1, 2], [3]]
    assert [set(s.active(t)) for t in range(3)] == [{0, 1, 2}, {3}, {0, 1, 2}]


def test_custom_cycles_and_none_is_everything():
    s = BlockSchedule(5, kind="custom", every=2, schedule=[[4], [0, 2], [1, 3]])
    got = [set(s.active(t)) for t in range(8)]
    assert got == [{4}, {4}, {0, 2}, {0, 2}, {1, 3}, {1, 3}, {4}, {4}]
    n = BlockSchedule(3, kind="none", every=1)
    assert all(n.active(t) == frozenset({0, 1, 2}) for t in range(5))
    assert n.block_index(7) == 0


def test_from_config():
    cfg = BlocksConfig(kind="custom", every=4, schedule=[[1], [0]])
    s = BlockSchedule.from_config(cfg, 2)
    assert s.blocks == [[1], [0]] and s.active(4) == frozenset({0})
    s = BlockSchedule.from_config(BlocksConfig(kind="round_robin", size=2, every=1), 3)
    assert s.blocks == [[0, 1], [2]]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"nodes": 0, "kind": "none"},
        {"nodes": 4, "kind": "shuffle"},
        {"nodes": 4, "kind": "round_robin", "size": 0},
        {"nodes": 4, "kind": "round_robin", "size": 5},
        {"nodes": 4, "kind": "round_robin", "every": 0},
        {"nodes": 4, "kind": "round_robin", "schedule": [[0]]},
        {"nodes": 4, "kind": "custom"},
        {"nodes": 4, "kind": "custom", "schedule": [[0], []]},
        {"nodes": 4, "kind": "custom", "schedule": [[0, 4]]},
        {"nodes": 4, "kind": "custom", "schedule": [[1, 1]]},
    ],
)
def test_bad_arguments_raise(kwargs):
    nodes = kwargs.pop("nodes")
    with pytest.raises(ValueError):
        BlockSchedule(nodes, **kwargs)


# ------------------------------------------------------------------- freezer


def _model(*extra: str):
    recipe = load_recipe("smoke", TINY + list(extra))
    return recipe, build.build_orchestra(recipe)


def _loss(model, x):
    pred = model(x)
    return pred.mean.pow(2).mean() + pred.log_var.mean()


def _state(opt, p):
    return {k: v.clone() for k, v in opt.state[p].items() if k in ("exp_avg", "exp_avg_sq")}


def _run(model, recipe, freezer, opt, steps, check=None, start=0):
    x = torch.randn(8, recipe.data.window, recipe.data.grid)
    for t in range(start, start + steps):
        opt.zero_grad(set_to_none=True)
        _loss(model, x).backward()
        freezer.mask_grads(t)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        before = [(p.detach().clone(), _state(opt, p)) for p, _ in model.per_cell_parameters()]
        freezer.step(t)
        if check is not None:
            check(t, before)


def _split(rows, active):
    """Boolean masks over axis 0: frozen rows, active rows."""
    act = torch.tensor([r in active for r in rows])
    return ~act, act


def test_frozen_rows_and_moments_bit_identical():
    recipe, model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    schedule = BlockSchedule(model.graph.nodes, kind="round_robin", size=2, every=5)
    freezer = BlockFreezer(model, opt, schedule)
    assert freezer.frozen_fraction(0) == pytest.approx(0.5)
    checked = []

    def check(t, before):
        active = schedule.active(t)
        for (p, rows), (p0, s0) in zip(model.per_cell_parameters(), before, strict=True):
            frozen, act = _split(rows, active)
            assert torch.equal(p[frozen], p0[frozen])
            assert not torch.equal(p[act], p0[act])
            for k, v in opt.state[p].items():
                if k not in ("exp_avg", "exp_avg_sq"):
                    continue
                if k in s0:
                    assert torch.equal(v[frozen], s0[k][frozen]), (t, k)
                else:  # first step: fresh state, zeros on frozen rows
                    assert torch.equal(v[frozen], torch.zeros_like(v[frozen])), (t, k)
                assert v[act].abs().sum() > 0
        checked.append(t)

    _run(model, recipe, freezer, opt, 20, check)
    assert checked == list(range(20))


def test_optimizer_state_kept_across_blocks():
    recipe, model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    schedule = BlockSchedule(model.graph.nodes, kind="round_robin", size=2, every=3)
    freezer = BlockFreezer(model, opt, schedule)
    _run(model, recipe, freezer, opt, 3)  # phase A: nodes {0, 1}
    after_a = {p: (p.detach().clone(), _state(opt, p)) for p, _ in model.per_cell_parameters()}
    _run(model, recipe, freezer, opt, 3, start=3)  # phase B: nodes {2, 3}
    for p, rows in model.per_cell_parameters():
        a_rows = _split(rows, {0, 1})[1]
        p_a, s_a = after_a[p]
        assert torch.equal(p[a_rows], p_a[a_rows])
        for k, v in _state(opt, p).items():
            assert torch.equal(v[a_rows], s_a[k][a_rows])
    # Phase A resumes: its first new moment is β·(moment at end of A) + (1 − β)·g.
    seen = {}

    def check(t, before):
        for (p, rows), (_, s0) in zip(model.per_cell_parameters(), before, strict=True):
            a_rows = _split(rows, {0, 1})[1]
            g = p.grad[a_rows]
            s_a = after_a[p][1]
            assert torch.equal(s0["exp_avg"][a_rows], s_a["exp_avg"][a_rows])
            want = 0.9 * s_a["exp_avg"][a_rows] + 0.1 * g
            torch.testing.assert_close(opt.state[p]["exp_avg"][a_rows], want)
            assert not torch.equal(opt.state[p]["exp_avg"][a_rows], 0.1 * g)  # not reset
        seen[t] = True

    _run(model, recipe, freezer, opt, 1, check, start=6)
    assert seen == {6: True}


def test_coordinator_and_memory_slots():
    recipe, model = _model("model.graph.coordinator=true", "model.graph.memory_slots=2")
    assert model.graph.nodes == 4 + 1 + 2
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    schedule = BlockSchedule(model.graph.nodes, kind="custom", every=1, schedule=[[4, 5, 6]])
    freezer = BlockFreezer(model, opt, schedule)

    def check(t, before):
        for (p, rows), (p0, _) in zip(model.per_cell_parameters(), before, strict=True):
            frozen, act = _split(rows, {4, 5, 6})
            assert torch.equal(p[frozen], p0[frozen])
            if act.any():
                assert not torch.equal(p[act], p0[act])

    _run(model, recipe, freezer, opt, 2, check)
    memory = [rows for _, rows in model.per_cell_parameters() if rows == [5, 6]]
    assert memory  # the memory-slot rows are actually part of the block


def test_train_shared_false_keeps_shared_params():
    recipe, model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    schedule = BlockSchedule(model.graph.nodes, kind="none")
    per_cell = {id(p) for p, _ in model.per_cell_parameters()}
    shared = [p for p in model.parameters() if id(p) not in per_cell]
    assert shared
    before = [p.detach().clone() for p in shared]
    _run(model, recipe, BlockFreezer(model, opt, schedule, train_shared=False), opt, 3)
    assert all(torch.equal(p, b) for p, b in zip(shared, before, strict=True))
    assert all(p not in opt.state or not opt.state[p] for p in shared)
    # and with the default they do train
    _run(model, recipe, BlockFreezer(model, opt, schedule), opt, 1)
    assert not all(torch.equal(p, b) for p, b in zip(shared, before, strict=True))


def test_step_guarantee_without_mask_grads():
    recipe, model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    freezer = BlockFreezer(
        model, opt, BlockSchedule(model.graph.nodes, kind="custom", schedule=[[3]])
    )
    x = torch.randn(4, recipe.data.window, recipe.data.grid)
    for t in range(2):
        opt.zero_grad()
        _loss(model, x).backward()
        before = [p.detach().clone() for p, _ in model.per_cell_parameters()]
        freezer.step(t)
        for (p, rows), p0 in zip(model.per_cell_parameters(), before, strict=True):
            frozen = _split(rows, {3})[0]
            assert torch.equal(p[frozen], p0[frozen])
            for k in ("exp_avg", "exp_avg_sq"):
                assert opt.state[p][k][frozen].abs().sum() == 0  # zeros of a fresh state


def test_model_without_per_cell_parameters():
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="Linear"):
        BlockFreezer(lin, opt, BlockSchedule(1, kind="none"))


def test_mask_grads_zeroes_frozen_rows_only():
    recipe, model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = BlockSchedule(model.graph.nodes, kind="custom", schedule=[[1, 2]])
    freezer = BlockFreezer(model, opt, schedule, train_shared=False)
    _loss(model, torch.randn(4, recipe.data.window, recipe.data.grid)).backward()
    freezer.mask_grads(0)
    for p, rows in model.per_cell_parameters():
        frozen, act = _split(rows, {1, 2})
        assert torch.equal(p.grad[frozen], torch.zeros_like(p.grad[frozen]))
        assert p.grad[act].abs().sum() > 0
    per_cell = {id(p) for p, _ in model.per_cell_parameters()}
    assert all(p.grad is None for p in model.parameters() if id(p) not in per_cell)


def test_train_shared_false_without_mask_grads():
    recipe, model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    freezer = BlockFreezer(
        model, opt, BlockSchedule(model.graph.nodes, kind="none"), train_shared=False
    )
    per_cell = {id(p) for p, _ in model.per_cell_parameters()}
    shared = [p for p in model.parameters() if id(p) not in per_cell]
    before = [p.detach().clone() for p in shared]
    _loss(model, torch.randn(4, recipe.data.window, recipe.data.grid)).backward()
    freezer.step(0)
    assert all(torch.equal(p, b) for p, b in zip(shared, before, strict=True))
    assert all(p.grad is not None for p in shared)  # handed back after the step


def test_a_plan_over_a_cell_layout_freezes_like_the_model_itself():
    """The trainer's route (task → BlockPlan → from_plan) equals a freezer on the model."""
    cfg = BlocksConfig(kind="round_robin", size=2, every=2, shared=False)
    results = []
    for via_plan in (False, True):
        torch.manual_seed(0)
        recipe, model = _model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        if via_plan:
            cells = CellLayout.of(
                model, nodes=model.graph.nodes, per_cell=model.per_cell_parameters()
            )
            plan = BlockPlan.from_config(cells, cfg)
            assert plan is not None and plan.schedule.blocks[0] == [0, 1]
            freezer = BlockFreezer.from_plan(plan, opt)
        else:
            schedule = BlockSchedule.from_config(cfg, model.graph.nodes)
            freezer = BlockFreezer(model, opt, schedule, train_shared=False)
        torch.manual_seed(1)
        _run(model, recipe, freezer, opt, 4)
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_no_plan_for_kind_none():
    recipe, model = _model()
    cells = CellLayout.of(model, nodes=model.graph.nodes, per_cell=model.per_cell_parameters())
    assert BlockPlan.from_config(cells, BlocksConfig()) is None
    assert cells.per_cell_parameters() == [(p, r) for p, r in model.per_cell_parameters()]
    assert list(cells.parameters()) == list(model.parameters())
