"""Selective scan (fast vs sequential vs the published algorithm) and the Mamba block."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tertulia.errors import ShapeError
from tertulia.nn.mamba import MambaBlock
from tertulia.nn.scan import (
    _numba_available,
    selective_scan,
    selective_scan_reference,
    selective_scan_sequential,
)

FAST_IMPLS = ["fast", "chunked"] + (["numba"] if _numba_available() else [])


def _problem(b, l, d, n, skip=True, gate=True, dtype=torch.float64, dt_scale=1.0):
    g = torch.Generator().manual_seed(1000 * l + 10 * d + n)
    u = torch.randn(b, l, d, generator=g, dtype=dtype)
    delta = dt_scale * F.softplus(torch.randn(b, l, d, generator=g, dtype=dtype))
    A = -torch.exp(torch.randn(d, n, generator=g, dtype=dtype))
    Bm = torch.randn(b, l, n, generator=g, dtype=dtype)
    Cm = torch.randn(b, l, n, generator=g, dtype=dtype)
    Ds = torch.randn(d, generator=g, dtype=dtype) if skip else None
    z = torch.randn(b, l, d, generator=g, dtype=dtype) if gate else None
    return [u, delta, A, Bm, Cm, Ds, z]


def _value_and_grads(fn, args, **kw):
    args = [None if a is None else a.detach().clone().requires_grad_() for a in args]
    y = fn(*args, **kw)
    w = torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y)
    live = [a for a in args if a is not None]
    grads = torch.autograd.grad((y * w).sum(), live)
    return y, grads


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize(
    "b,l,d,n,skip,gate",
    [
        (2, 150, 5, 4, True, True),  # L not a multiple of 32 or 64
        (1, 1, 3, 2, True, True),  # L = 1
        (3, 64, 4, 3, False, False),
        (2, 37, 6, 5, True, False),
        (2, 200, 3, 4, False, True),
    ],
)
def test_fast_matches_sequential_values_and_grads(impl, b, l, d, n, skip, gate):
    args = _problem(b, l, d, n, skip, gate)
    y0, g0 = _value_and_grads(selective_scan_sequential, args)
    y1, g1 = _value_and_grads(selective_scan, args, impl=impl)
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-10)
    assert len(g0) == len(g1)
    for a, e in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-10)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_fast_matches_published_algorithm(impl):
    args = _problem(2, 130, 4, 6)
    y0, g0 = _value_and_grads(selective_scan_reference, args)
    y1, g1 = _value_and_grads(selective_scan, args, impl=impl)
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-10)
    for a, e in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-10)


def test_sequential_impl_selects_reference_loop():
    args = _problem(1, 20, 3, 2)
    torch.testing.assert_close(
        selective_scan(*args, impl="sequential"), selective_scan_sequential(*args), rtol=0, atol=0
    )


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_delta_is_finite(impl, dtype):
    args = _problem(2, 300, 4, 8, dtype=dtype)
    args[1] = torch.full_like(args[1], 10.0)
    A_log = torch.linspace(0, math.log(16), 4 * 8, dtype=dtype).view(4, 8)
    args[2] = -torch.exp(A_log)
    y, grads = _value_and_grads(selective_scan, args, impl=impl)
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(g).all() for g in grads)
    y0 = selective_scan_sequential(*args)
    torch.testing.assert_close(y, y0, rtol=1e-4, atol=1e-4)


def test_float32_fast_close_to_float64():
    args = _problem(2, 500, 8, 16)
    y64 = selective_scan_sequential(*args)
    y32 = selective_scan(*[a.float() for a in args])
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "bad",
    [
        lambda a: [a[0][0]] + a[1:],  # u not 3-D
        lambda a: [a[0], a[1][:, :-1]] + a[2:],  # delta length
        lambda a: a[:2] + [a[2][:-1]] + a[3:],  # A rows ≠ D
        lambda a: a[:3] + [a[3][..., :-1]] + a[4:],  # Bm state size
        lambda a: a[:4] + [a[4][:1]] + a[5:],  # Cm batch
        lambda a: a[:5] + [a[5][:-1], a[6]],  # Dskip length
        lambda a: a[:6] + [a[6][:, :-1]],  # z length
    ],
)
def test_shape_errors(bad):
    args = bad(_problem(2, 10, 3, 4))
    for impl in ("fast", "sequential"):
        with pytest.raises(ShapeError):
            selective_scan(*args, impl=impl)


# -- Mamba block -------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["fast", "sequential"])
def test_step_matches_forward(impl):
    torch.manual_seed(3)
    m = MambaBlock(8, d_state=4, d_conv=3, expand=2, scan_impl=impl).double()
    x = torch.randn(2, 23, 8, dtype=torch.float64)
    y = m(x)
    state = m.init_state(2)
    ys = []
    for t in range(x.shape[1]):
        yt, state = m.step(x[:, t], state)
        ys.append(yt)
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=0, atol=1e-10)


def test_causality():
    torch.manual_seed(4)
    m = MambaBlock(6, d_state=4, d_conv=4).double()
    x = torch.randn(2, 30, 6, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 17:] = torch.randn(2, 13, 6, dtype=torch.float64)
    y, y2 = m(x), m(x2)
    torch.testing.assert_close(y[:, :17], y2[:, :17], rtol=0, atol=0)
    assert (y[:, 17] - y2[:, 17]).abs().max() > 1e-6


def test_block_gradients_fast_vs_sequential():
    torch.manual_seed(5)
    m = MambaBlock(8, d_state=4).double()
    x = torch.randn(2, 40, 8, dtype=torch.float64)
    grads = {}
    for impl in ("fast", "sequential"):
        m.scan_impl = impl
        m.zero_grad()
        m(x).pow(2).sum().backward()
        grads[impl] = [p.grad.clone() for p in m.parameters()]
    for a, b in zip(grads["fast"], grads["sequential"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_dt_bias_and_A_log_init():
    torch.manual_seed(6)
    m = MambaBlock(32, d_state=16, dt_min=1e-3, dt_max=1e-1)
    dt = F.softplus(m.dt_proj.bias.detach().double())
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    assert m.dt_rank == 2 and m.d_inner == 64
    expect = torch.log(torch.arange(1, 17, dtype=torch.float32)).repeat(64, 1)
    torch.testing.assert_close(m.A_log.detach(), expect)
    torch.testing.assert_close(-torch.exp(m.A_log.detach())[0], -torch.arange(1.0, 17.0))
    torch.testing.assert_close(m.D.detach(), torch.ones(64))


def test_block_shape_error():
    m = MambaBlock(4)
    with pytest.raises(ShapeError):
        m(torch.randn(2, 5, 3))
    with pytest.raises(ShapeError):
        m.step(torch.randn(2, 3))
