"""Titans neural memory: hand-computed steps, the chunked form against a literal reference,
short sequences, streaming state, clipping, outer gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tertulia.nn.titans import NeuralMemory


def _gates(b: int, length: int, theta: float, eta: float, alpha: float):
    return tuple(torch.full((b, length), v, dtype=torch.float64) for v in (theta, eta, alpha))


def test_one_and_two_tokens_match_a_hand_computed_linear_memory():
    torch.manual_seed(0)
    mem = NeuralMemory(3, depth=1, chunk=4, clip=1e9).double()
    x = torch.randn(1, 2, 3, dtype=torch.float64)
    k = F.normalize(x @ mem.to_k.weight.T, dim=-1)[0]
    v = (x @ mem.to_v.weight.T)[0]
    theta, eta, alpha = 0.5, 0.9, 0.1
    _, state = mem(x[:, :1], gates=_gates(1, 1, theta, eta, alpha), return_state=True)
    w0 = torch.zeros(3, 3, dtype=torch.float64)  # depth 1 starts empty
    g1 = 2 * torch.outer(k[0], k[0] @ w0 - v[0])  # ∇_W ‖k W − v‖²
    s1 = -theta * g1
    w1 = (1 - alpha) * w0 + s1
    torch.testing.assert_close(state.weights[0][0], w1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.momenta[0][0], s1, rtol=1e-12, atol=1e-12)
    # token-by-token (chunk 1): the second gradient is taken at W₁
    mem.chunk = 1
    _, state = mem(x, gates=_gates(1, 2, theta, eta, alpha), return_state=True)
    g2 = 2 * torch.outer(k[1], k[1] @ w1 - v[1])
    s2 = eta * s1 - theta * g2
    torch.testing.assert_close(state.weights[0][0], (1 - alpha) * w1 + s2, rtol=1e-12, atol=1e-12)


def _reference(mem: NeuralMemory, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """A literal loop: autograd gradient of ‖M(k) − v‖² at the chunk's starting weights."""
    b, length, _ = x.shape
    k = F.normalize(mem.to_k(x), dim=-1)
    v = mem.to_v(x)
    q = F.normalize(mem.to_q(x), dim=-1)
    theta, eta, alpha = (g.detach() for g in mem.gate_values(x))
    outs = []
    for s in range(b):
        weights = [w.detach().clone() for w in mem.init_weights]
        momenta = [torch.zeros_like(w) for w in weights]
        for c0 in range(0, length, chunk):
            start = [w.clone().requires_grad_(True) for w in weights]
            grads = []
            for t in range(c0, min(c0 + chunk, length)):
                kt = k[s, t].detach()
                pred = kt @ start[0] if mem.depth == 1 else F.silu(kt @ start[0]) @ start[1]
                loss = (pred - v[s, t].detach()).pow(2).sum()
                g = torch.autograd.grad(loss, start)
                norm = torch.sqrt(sum(gi.pow(2).sum() for gi in g))
                scale = min(1.0, mem.clip / (float(norm) + 1e-12))
                grads.append([gi * scale for gi in g])
            for i, t in enumerate(range(c0, min(c0 + chunk, length))):
                qt = q[s, t].detach()  # every token of the chunk reads the chunk-start memory
                read = qt @ start[0] if mem.depth == 1 else F.silu(qt @ start[0]) @ start[1]
                outs.append(mem.out(read.detach()))
                th, et, al = float(theta[s, t]), float(eta[s, t]), float(alpha[s, t])
                momenta = [et * m - th * g for m, g in zip(momenta, grads[i], strict=True)]
                weights = [(1 - al) * w + m for w, m in zip(weights, momenta, strict=True)]
    return torch.stack(outs).view(b, length, -1)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("chunk", [1, 4])
def test_chunked_form_equals_the_literal_recurrence(depth, chunk):
    torch.manual_seed(1)
    mem = NeuralMemory(6, hidden=10, depth=depth, chunk=chunk, clip=0.5).double()
    if depth == 1:
        with torch.no_grad():
            mem.init_weights[0].normal_(0, 0.3)
    x = torch.randn(2, 11, 6, dtype=torch.float64)  # 11 tokens: the last chunk is partial
    got = mem(x).detach()
    want = _reference(mem, x, chunk).detach()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_a_sequence_shorter_than_a_chunk_still_writes_the_memory():
    torch.manual_seed(2)
    mem = NeuralMemory(8, chunk=16)
    x = torch.randn(3, 5, 8)
    _, state = mem(x, return_state=True)
    start = mem.initial_state(3)
    assert all(
        not torch.allclose(w, w0) for w, w0 in zip(state.weights, start.weights, strict=True)
    )
    later = torch.randn(3, 4, 8)  # the next call reads what the short one wrote
    assert not torch.allclose(mem(later, state), mem(later))


def test_streaming_halves_equal_one_pass():
    torch.manual_seed(3)
    mem = NeuralMemory(8, chunk=4)
    x = torch.randn(2, 16, 8)
    whole = mem(x)
    first, state = mem(x[:, :8], return_state=True)
    second = mem(x[:, 8:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-5, atol=1e-6)


def test_no_nan_over_a_thousand_inner_updates_with_large_inputs():
    torch.manual_seed(4)
    mem = NeuralMemory(16, chunk=16)
    with torch.no_grad():
        y, state = mem(10 * torch.randn(2, 1000, 16), return_state=True)
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(w).all() for w in state.weights)


def test_outer_gradients_reach_projections_gates_and_initial_weights():
    torch.manual_seed(5)
    mem = NeuralMemory(8, chunk=3)
    mem(torch.randn(2, 7, 8)).pow(2).mean().backward()
    for name, p in mem.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        NeuralMemory(4, depth=3)
    with pytest.raises(ValueError, match="chunk"):
        NeuralMemory(4, chunk=0)
    with pytest.raises(ValueError, match="expects"):
        NeuralMemory(4)(torch.randn(2, 3, 5))
