"""HiPPO-LegS memory layer: transitions, recurrence, gradients, and the LegS-vs-random gap."""

from __future__ import annotations

import pytest
import torch

from tertulia.config import ConfigError, load_recipe
from tertulia.data.sequences import delay_recall
from tertulia.jobs.sequence import build_sequence_model
from tertulia.nn.hippo import hippo_legs, legs_transitions, random_memory_matrix
from tertulia.nn.hippo_memory import HippoMemory
from tertulia.nn.seqmodel import SequenceModel
from tertulia.train.groups import declared_settings


@pytest.fixture(autouse=True)
def _one_thread():
    # Small matmuls in a 500-step loop: extra OpenMP threads only spin on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _literal_transitions(A, B, L):
    N = A.shape[0]
    eye = torch.eye(N, dtype=torch.float64)
    out_A, out_B = [], []
    for k in range(L):
        t = k + 1.0
        M = torch.linalg.inv(eye - A / (2 * t))
        out_A.append(M @ (eye + A / (2 * t)))
        out_B.append(M @ (B / t))
    return torch.stack(out_A), torch.stack(out_B)


@pytest.mark.parametrize("init", ["legs", "random"])
def test_legs_transitions_match_literal_formula(init):
    A, B = hippo_legs(16)
    if init == "random":
        A = random_memory_matrix(16, seed=3)
    Abar, Bbar = legs_transitions(A, B, 40)
    assert Abar.shape == (40, 16, 16) and Bbar.shape == (40, 16)
    assert Abar.dtype == Bbar.dtype == torch.float64
    ref_A, ref_B = _literal_transitions(A, B, 40)
    assert (Abar - ref_A).abs().max() < 1e-10
    assert (Bbar - ref_B).abs().max() < 1e-10
    # start= offsets the time index: steps 10..19 equal rows 10..19
    Ab2, Bb2 = legs_transitions(A, B, 10, start=10)
    assert (Ab2 - Abar[10:20]).abs().max() < 1e-12 and (Bb2 - Bbar[10:20]).abs().max() < 1e-12


def test_random_memory_matrix_is_seeded_and_stable():
    A = random_memory_matrix(32, seed=1)
    assert A.shape == (32, 32) and A.dtype == torch.float64
    assert torch.equal(A, random_memory_matrix(32, seed=1))
    assert not torch.equal(A, random_memory_matrix(32, seed=2))
    eig = torch.linalg.eigvals(A)
    assert eig.real.mean() < 0 and eig.abs().max() < 2 * 32  # left half-plane, LegS-sized
    with pytest.raises(ValueError, match="N must be"):
        random_memory_matrix(0)


@pytest.mark.parametrize("init", ["legs", "random"])
def test_forward_matches_reference_and_step(init):
    torch.manual_seed(0)
    m = HippoMemory(3, 8, init=init, seed=5).double()
    u = torch.randn(2, 25, 3, dtype=torch.float64)
    y = m(u)
    assert y.shape == (2, 25, 3) and y.dtype == torch.float64
    assert (y - m.reference(u)).abs().max() < 1e-10
    state = m.initial_state(2, dtype=torch.float64)
    ys = []
    for t in range(25):
        y_t, state = m.step(u[:, t], state, t)
        ys.append(y_t)
    assert (torch.stack(ys, 1) - y).abs().max() < 1e-10
    assert (state - m.memory(u)[:, -1]).abs().max() < 1e-10


def test_float32_forward_close_to_float64_and_cache_outside_state_dict():
    torch.manual_seed(0)
    m = HippoMemory(4, 16)
    u = torch.randn(3, 60, 4)
    y32 = m(u)
    y64 = m.double()(u.double())
    assert (y32.double() - y64).abs().max() < 1e-4
    assert set(m.state_dict()) == {"A", "B", "C", "D", "out.weight", "out.bias"}
    assert {key[:2] for key in m._cache} == {(60, torch.float32), (60, torch.float64)}
    assert not hasattr(m, "ssm_parameters")
    assert {n for n, _ in m.named_parameters()} == {"C", "D", "out.weight", "out.bias"}


def test_bad_arguments():
    with pytest.raises(ValueError, match="expected one of legs, random"):
        HippoMemory(4, 8, init="lin")
    with pytest.raises(ValueError, match="N must be"):
        HippoMemory(4, 0)
    with pytest.raises(ValueError, match="d_model must be"):
        HippoMemory(0, 8)
    with pytest.raises(ValueError, match="L >= 1"):
        legs_transitions(*hippo_legs(4), 0)
    m = HippoMemory(4, 8)
    with pytest.raises(Exception, match="expects input"):
        m(torch.randn(2, 5, 3))
    with pytest.raises(Exception, match="expects a state"):
        m.step(torch.randn(2, 4), torch.zeros(2, 4, 7), 0)
    with pytest.raises(ValueError, match="t must be"):
        m.step(torch.randn(2, 4), m.initial_state(2), -1)


def test_gradients_reach_input_C_and_D():
    torch.manual_seed(0)
    m = HippoMemory(2, 4).double()
    u = torch.randn(1, 6, 2, dtype=torch.float64, requires_grad=True)
    C = m.C.detach().clone().requires_grad_(True)
    D = m.D.detach().clone().requires_grad_(True)

    def f(u, C, D):
        return torch.func.functional_call(m, {"C": C, "D": D}, (u,))

    assert torch.autograd.gradcheck(f, (u, C, D))
    f(u, C, D).sum().backward()
    for g in (u.grad, C.grad, D.grad):
        assert g is not None and g.abs().sum() > 0
    # the buffers A and B carry no gradient
    assert not m.A.requires_grad and not m.B.requires_grad


def _final_memory_accuracy(init: str) -> float:
    train = delay_recall(400, delay=60, distractors=True, seed=0)
    test = delay_recall(200, delay=60, distractors=True, seed=100)
    m = HippoMemory(train.x.shape[-1], 32, init=init).double()
    with torch.no_grad():
        Xtr = m.memory(train.x.double())[:, -1].flatten(1)
        Xte = m.memory(test.x.double())[:, -1].flatten(1)
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-8
    Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    Y = torch.nn.functional.one_hot(train.y, train.classes).double()
    gram = Xtr.T @ Xtr + torch.eye(Xtr.shape[1], dtype=torch.float64)  # ridge, λ = 1
    W = torch.linalg.solve(gram, Xtr.T @ (Y - Y.mean(0)))
    return float(((Xte @ W).argmax(1) == test.y).double().mean())


def test_legs_memory_recalls_first_token_random_memory_does_not():
    legs, rand = _final_memory_accuracy("legs"), _final_memory_accuracy("random")
    # measured: legs 1.00, random ≈ 0.12 (chance 0.125)
    assert legs > 0.9
    assert legs - rand >= 0.3


def test_config_rejects_non_hippo_inits_and_recipe_builds():
    with pytest.raises(ConfigError, match="not a hippo init"):
        load_recipe("delay-recall", ["model.init=lin"])
    with pytest.raises(ConfigError, match="not a hippo init"):
        load_recipe("delay-recall", ["model.compare_init=inv"])
    load_recipe("delay-recall", ["model.compare_init=none"])
    recipe = load_recipe("delay-recall")
    m = recipe.model
    assert (m.kind, m.init, m.compare_init, m.d_state) == ("hippo", "legs", "random", 64)
    assert recipe.data.distractors and recipe.data.delay == 500
    model = build_sequence_model(recipe, 9, 8, "random")
    assert isinstance(model, SequenceModel)
    layers = [mod for mod in model.modules() if isinstance(mod, HippoMemory)]
    assert len(layers) == m.layers and all(la.init == "random" and la.N == 64 for la in layers)
    assert declared_settings(model) == {}  # fixed dynamics: no SSM learning rate
    out = model(torch.randn(2, 12, 9))
    assert out.shape == (2, 8)
