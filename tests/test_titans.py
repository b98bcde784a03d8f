"""Titans neural memory (:mod:`tertulia.nn.titans`): a hand-computed linear-memory step, the
chunked form (both read modes) against a literal autograd recurrence — values and outer
gradients —, clipping under large inputs, partial chunks, streaming state, bad arguments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tertulia.nn.titans import MemoryState, NeuralMemory


def _gates(b: int, length: int, theta: float, eta: float, alpha: float):
    return tuple(torch.full((b, length), v, dtype=torch.float64) for v in (theta, eta, alpha))


def _memory(mem: NeuralMemory, weights: list[torch.Tensor], k: torch.Tensor) -> torch.Tensor:
    return k @ weights[0] if mem.depth == 1 else F.silu(k @ weights[0]) @ weights[1]


def _literal(mem: NeuralMemory, x: torch.Tensor, chunk: int, gates=None):
    """The recurrence written out token by token: each token's gradient of ‖M(k) − v‖² by
    autograd (``create_graph=True``) at its chunk's starting weights, clipped, then
    S ← η S − θ g, M ← (1 − α) M + S. Reads before writing: ``token`` mode reads the current
    M, ``chunk`` mode the chunk's starting M. Returns y (B, L, d) and the final state."""
    b, length, _ = x.shape
    k = F.normalize(mem.to_k(x), dim=-1)
    v = mem.to_v(x)
    q = F.normalize(mem.to_q(x), dim=-1)
    theta, eta, alpha = gates if gates is not None else mem.gate_values(x)
    outs, final_w, final_s = [], [], []
    for s in range(b):
        weights = list(mem.init_weights)
        momenta = [torch.zeros_like(w) for w in weights]
        start = weights
        for t in range(length):
            if t % chunk == 0:
                start = weights
            loss = (_memory(mem, start, k[s, t]) - v[s, t]).pow(2).sum()
            g = torch.autograd.grad(loss, start, create_graph=True)
            norm = torch.sqrt(sum(gi.pow(2).sum() for gi in g))
            scale = (mem.clip / (norm + 1e-12)).clamp(max=1.0)
            reader = weights if mem.read_mode == "token" else start
            outs.append(mem.out(_memory(mem, reader, q[s, t])))
            th, et, al = theta[s, t], eta[s, t], alpha[s, t]
            momenta = [et * m - th * scale * gi for m, gi in zip(momenta, g, strict=True)]
            weights = [(1 - al) * w + m for w, m in zip(weights, momenta, strict=True)]
        final_w.append(weights)
        final_s.append(momenta)
    y = torch.stack(outs).view(b, length, -1)
    stack = lambda per: [torch.stack(ts) for ts in zip(*per, strict=True)]  # noqa: E731
    return y, MemoryState(stack(final_w), stack(final_s))


# ---------------------------------------------------------------- hand-computed step


@pytest.mark.parametrize("via", ["gates", "biases"])
def test_one_token_of_a_linear_memory_matches_the_hand_computed_step(via):
    mem = NeuralMemory(3, depth=1, chunk=16, clip=1e9).double()
    theta, eta, alpha = 0.5, 0.9, 0.1
    w0 = torch.tensor([[0.1, 0.0, -0.2], [0.0, 0.3, 0.0], [0.4, 0.0, 0.1]], dtype=torch.float64)
    with torch.no_grad():
        mem.to_k.weight.copy_(torch.eye(3))
        mem.to_v.weight.copy_(torch.diag(torch.tensor([1.0, -1.0, 0.5])))
        mem.init_weights[0].copy_(w0)
        # frozen gates: zero weights, biases at the logits of the wanted values
        mem.gates.weight.zero_()
        logit = lambda p: math.log(p / (1 - p))  # noqa: E731
        mem.gates.bias.copy_(torch.tensor([logit(theta / mem.theta_max), logit(eta), logit(alpha)]))
    x = torch.tensor([[[1.0, 2.0, -1.0]]], dtype=torch.float64)
    kw = {"gates": _gates(1, 1, theta, eta, alpha)} if via == "gates" else {}
    _, state = mem(x, return_state=True, **kw)
    # by hand: k = x/‖x‖ = (1, 2, −1)/√6, v = (1, −2, −0.5); M(k) = k W (row vector), so
    # ∇_W ‖k W − v‖² = 2 kᵀ (k W − v)   (= the transpose of 2 (M k − v) kᵀ for M = Wᵀ)
    k = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64) / math.sqrt(6)
    v = torch.tensor([1.0, -2.0, -0.5], dtype=torch.float64)
    kw0 = torch.stack([sum(k[i] * w0[i, j] for i in range(3)) for j in range(3)])
    grad = 2 * torch.outer(k, kw0 - v)
    s1 = -theta * grad  # S₀ = 0
    m1 = (1 - alpha) * w0 + s1
    torch.testing.assert_close(state.momenta[0][0], s1, rtol=0, atol=1e-6)
    torch.testing.assert_close(state.weights[0][0], m1, rtol=0, atol=1e-6)


def test_clip_bounds_one_tokens_step_to_theta_times_clip():
    mem = NeuralMemory(3, depth=1, chunk=4, clip=1e-3).double()
    x = 10 * torch.randn(1, 1, 3, dtype=torch.float64)
    _, state = mem(x, gates=_gates(1, 1, 0.5, 0.9, 0.0), return_state=True)
    assert float(state.momenta[0].detach().norm()) == pytest.approx(0.5 * 1e-3, rel=1e-9)


# ------------------------------------------------- chunked form against the recurrence


@pytest.mark.parametrize("read", ["token", "chunk"])
@pytest.mark.parametrize("depth", [1, 2])
def test_chunk_one_equals_the_exact_token_by_token_recurrence(depth, read):
    torch.manual_seed(1)
    mem = NeuralMemory(5, hidden=7, depth=depth, chunk=1, clip=0.5, read=read).double()
    with torch.no_grad():
        mem.init_weights[0].normal_(0, 0.3)
        mem.gates.weight.normal_(0, 0.5)  # gates that vary along the sequence
    x = torch.randn(2, 9, 5, dtype=torch.float64)
    y, state = mem(x, return_state=True)
    y_ref, ref = _literal(mem, x, 1)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-11)  # in fact to rounding
    for a, b in zip(state.weights + state.momenta, ref.weights + ref.momenta, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("read", ["token", "chunk"])
@pytest.mark.parametrize("depth", [1, 2])
def test_chunked_form_equals_the_literal_chunked_recurrence(depth, read):
    torch.manual_seed(2)
    mem = NeuralMemory(6, hidden=10, depth=depth, chunk=4, clip=0.5, read=read).double()
    with torch.no_grad():
        mem.init_weights[0].normal_(0, 0.3)
        mem.gates.weight.normal_(0, 0.5)
    x = torch.randn(2, 11, 6, dtype=torch.float64)  # 11 tokens: the last chunk is partial
    y, state = mem(x, return_state=True)
    y_ref, ref = _literal(mem, x, 4)
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-11)
    for a, b in zip(state.weights + state.momenta, ref.weights + ref.momenta, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_token_reads_differ_from_chunk_start_reads_inside_a_chunk():
    torch.manual_seed(3)
    x = torch.randn(2, 8, 6)
    token = NeuralMemory(6, chunk=8, read="token")
    chunk = NeuralMemory(6, chunk=8, read="chunk")
    chunk.load_state_dict(token.state_dict())
    yt, yc = token(x), chunk(x)
    torch.testing.assert_close(yt[:, 0], yc[:, 0])  # the first token reads M_{c₀} in both
    assert not torch.allclose(yt[:, 1:], yc[:, 1:], atol=1e-6)


# ------------------------------------------------------------------- outer training


@pytest.mark.parametrize("read", ["token", "chunk"])
def test_outer_gradients_equal_backprop_through_the_literal_recurrence(read):
    torch.manual_seed(4)
    mem = NeuralMemory(5, hidden=6, depth=2, chunk=3, clip=0.7, read=read).double()
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    target = torch.randn(2, 7, 5, dtype=torch.float64)

    def grads(fn):
        mem.zero_grad()
        y, state = fn()
        loss = (y - target).pow(2).mean() + sum(w.pow(2).sum() for w in state.weights)
        loss.backward()
        return {n: p.grad.clone() for n, p in mem.named_parameters()}

    got = grads(lambda: mem(x, return_state=True))
    want = grads(lambda: _literal(mem, x, 3))
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-8, atol=1e-10, msg=name)


@pytest.mark.parametrize("read", ["token", "chunk"])
@pytest.mark.parametrize("depth", [1, 2])
def test_outer_gradients_reach_projections_gates_and_initial_weights(depth, read):
    torch.manual_seed(5)
    mem = NeuralMemory(8, depth=depth, chunk=3, read=read)
    with torch.no_grad():
        mem.init_weights[0].normal_(0, 0.3)  # depth 1 starts at zero: give W_q a signal at t₀
    mem(torch.randn(2, 7, 8)).pow(2).mean().backward()
    names = {n for n, _ in mem.named_parameters()}
    assert {"to_k.weight", "to_v.weight", "to_q.weight", "out.weight"} <= names
    assert {"gates.weight", "gates.bias", "init_weights.0"} <= names
    for name, p in mem.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ------------------------------------------------------------- stability, short inputs


@pytest.mark.parametrize(("chunk", "read"), [(1, "token"), (16, "token"), (16, "chunk")])
def test_no_nan_or_inf_over_a_thousand_inner_updates_with_large_inputs(chunk, read):
    torch.manual_seed(6)
    mem = NeuralMemory(16, chunk=chunk, read=read)  # default clip
    with torch.no_grad():
        mem.gates.weight.normal_(0, 1.0)  # gates swinging with the large inputs
        y, state = mem(10 * torch.randn(2, 1000, 16), return_state=True)
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(t).all() for t in state.weights + state.momenta)


@pytest.mark.parametrize("read", ["token", "chunk"])
def test_a_sequence_shorter_than_a_chunk_still_writes_the_memory(read):
    torch.manual_seed(7)
    mem = NeuralMemory(8, chunk=16, read=read)
    x = torch.randn(3, 5, 8)
    y, state = mem(x, return_state=True)
    start = mem.initial_state(3)
    for w, w0 in zip(state.weights, start.weights, strict=True):
        assert not torch.allclose(w, w0)
    q = F.normalize(mem.to_q(x), dim=-1)
    initial_read = mem.out(mem.read(start.weights, q))
    if read == "token":  # tokens 2 … 5 read what tokens 1 … 4 wrote
        assert not torch.allclose(y, initial_read, atol=1e-6)
    else:  # the whole (partial) chunk reads M_{c₀}; the next call reads the write
        torch.testing.assert_close(y, initial_read)
    later = torch.randn(3, 4, 8)
    assert not torch.allclose(mem(later, state), mem(later), atol=1e-6)


# ---------------------------------------------------------------------- streaming


@pytest.mark.parametrize("read", ["token", "chunk"])
@pytest.mark.parametrize("depth", [1, 2])
def test_streaming_pieces_split_at_chunk_multiples_equal_one_pass(depth, read):
    torch.manual_seed(8)
    mem = NeuralMemory(8, depth=depth, chunk=4, read=read)
    with torch.no_grad():
        mem.init_weights[0].normal_(0, 0.3)
    x = torch.randn(2, 22, 8)  # pieces of 8, 4 and 10 tokens (the last ends in a partial chunk)
    whole, end = mem(x, return_state=True)
    pieces, state = [], None
    for a, b in ((0, 8), (8, 12), (12, 22)):
        y, state = mem(x[:, a:b], state, return_state=True)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-5, atol=1e-6)
    for a, b in zip(state.weights + state.momenta, end.weights + end.momenta, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_detached_state_carries_values_without_the_graph():
    mem = NeuralMemory(4, chunk=2)
    _, state = mem(torch.randn(1, 4, 4), return_state=True)
    cut = state.detach()
    assert all(not t.requires_grad for t in cut.weights + cut.momenta)
    torch.testing.assert_close(cut.weights[0], state.weights[0])


def test_initial_gates_start_moderate_theta_high_momentum_small_forgetting():
    mem = NeuralMemory(16)
    with torch.no_grad():
        theta, eta, alpha = mem.gate_values(0.1 * torch.randn(4, 32, 16))
    assert 0.3 < float(theta.mean()) / mem.theta_max < 0.7
    assert 0.8 < float(eta.mean()) < 0.95
    assert 0.0 < float(alpha.max()) < 0.05


def test_empty_sequence_returns_an_empty_output_and_the_unchanged_state():
    mem = NeuralMemory(4, chunk=2, read="token")
    y, state = mem(torch.randn(2, 0, 4), return_state=True)
    assert y.shape == (2, 0, 4)
    torch.testing.assert_close(state.weights[0], mem.initial_state(2).weights[0])


# ---------------------------------------------------------------------- arguments


def test_bad_arguments():
    with pytest.raises(ValueError, match="d must"):
        NeuralMemory(0)
    with pytest.raises(ValueError, match="hidden"):
        NeuralMemory(4, hidden=0)
    with pytest.raises(ValueError, match="depth"):
        NeuralMemory(4, depth=3)
    with pytest.raises(ValueError, match="chunk"):
        NeuralMemory(4, chunk=0)
    with pytest.raises(ValueError, match="clip"):
        NeuralMemory(4, clip=0.0)
    with pytest.raises(ValueError, match="theta_max"):
        NeuralMemory(4, theta_max=-1.0)
    with pytest.raises(ValueError, match="read"):
        NeuralMemory(4, read="after")
    mem = NeuralMemory(4)
    with pytest.raises(ValueError, match="expects"):
        mem(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="gates"):
        mem(torch.randn(2, 3, 4), gates=(torch.zeros(2, 3),) * 2)
    with pytest.raises(ValueError, match="gates"):
        mem(torch.randn(2, 3, 4), gates=(torch.zeros(2, 4),) * 3)
    with pytest.raises(ValueError, match="state"):
        mem(torch.randn(2, 3, 4), mem.initial_state(3))
