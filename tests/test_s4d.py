"""HiPPO-LegS / S4D inits, discretisations, the S4D kernel and layer (conv vs recurrence)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from tertulia.errors import ShapeError
from tertulia.nn.hippo import (
    discretize_bilinear,
    discretize_zoh,
    hippo_legs,
    legs_nplr,
    s4d_init,
)
from tertulia.nn.s4d import S4D, S4DKernel, ssm_parameter_groups

# -- hippo ---------------------------------------------------------------------


def test_hippo_legs_n4_by_hand():
    s = math.sqrt
    A_hand = np.array(
        [
            [-1.0, 0.0, 0.0, 0.0],
            [-s(3) * 1, -2.0, 0.0, 0.0],
            [-s(5) * 1, -s(5) * s(3), -3.0, 0.0],
            [-s(7) * 1, -s(7) * s(3), -s(7) * s(5), -4.0],
        ]
    )
    B_hand = np.array([1.0, s(3), s(5), s(7)])
    A, B = hippo_legs(4)
    assert A.dtype == torch.float64 and B.dtype == torch.float64
    np.testing.assert_allclose(A.numpy(), A_hand, rtol=0, atol=1e-14)
    np.testing.assert_allclose(B.numpy(), B_hand, rtol=0, atol=1e-14)


@pytest.mark.parametrize("N", [4, 16, 64])
def test_legs_nplr_identity(N):
    A, B = hippo_legs(N)
    d = legs_nplr(N)
    normal = d.V @ torch.diag(d.Lambda) @ d.V.conj().T
    recon = normal - torch.outer(d.P, d.P).to(torch.complex128)
    assert (recon - A).abs().max().item() < 1e-10
    # V unitary, normal part = −½ I + skew
    eye = torch.eye(N, dtype=torch.complex128)
    assert (d.V.conj().T @ d.V - eye).abs().max().item() < 1e-10
    S = A + torch.outer(d.P, d.P)
    assert torch.allclose(torch.diagonal(S), torch.full((N,), -0.5, dtype=torch.float64))
    skew = S + 0.5 * torch.eye(N, dtype=torch.float64)
    assert (skew + skew.T).abs().max().item() < 1e-12
    assert torch.equal(d.B, B)


def test_s4d_legs_eigenvalues():
    N = 32
    full = legs_nplr(N).Lambda
    assert (full.real + 0.5).abs().max().item() < 1e-8
    # conjugate pairs: the sorted imaginary parts are symmetric about zero
    im = torch.sort(full.imag).values
    assert (im + im.flip(0)).abs().max().item() < 1e-8
    Lam, B = s4d_init("legs", N)
    assert Lam.shape == (N // 2,) and B.shape == (N // 2,)
    assert (Lam.real + 0.5).abs().max().item() < 1e-8
    assert (Lam.imag > 0).all()
    # the stored half plus its conjugates are all the eigenvalues
    both = torch.sort(torch.cat([Lam.imag, -Lam.imag])).values
    assert (both - im).abs().max().item() < 1e-8


def test_s4d_other_inits():
    N = 8
    n = np.arange(4)
    lin, B = s4d_init("lin", N)
    np.testing.assert_allclose(lin.numpy(), -0.5 + 1j * math.pi * n)
    np.testing.assert_allclose(B.numpy(), np.ones(4))
    inv, _ = s4d_init("inv", N)
    np.testing.assert_allclose(inv.numpy(), -0.5 + 1j * N / math.pi * (N / (2 * n + 1) - 1))
    real, _ = s4d_init("real", N)
    np.testing.assert_allclose(real.numpy(), -(n + 1.0) + 0j)
    with pytest.raises(ValueError, match="legs, lin, inv, real"):
        s4d_init("hippo", N)
    with pytest.raises(ValueError):
        s4d_init("lin", 7)


def test_discretisations_match_dense_formulas():
    Lam, _ = s4d_init("legs", 8)
    B = torch.tensor([1.0 + 0.5j, -0.3j, 2.0, 0.7 - 0.1j], dtype=torch.complex128)
    dt = 0.07
    Abar, Bbar = discretize_zoh(Lam, B, dt)
    # ZOH: expm of the block [[ΔΛ, ΔB], [0, 0]] gives e^{ΔΛ} and ∫₀^Δ e^{Λs} ds B.
    n = Lam.shape[0]
    M = np.zeros((n + 1, n + 1), dtype=np.complex128)
    M[:n, :n] = np.diag(Lam.numpy()) * dt
    M[:n, n] = B.numpy() * dt
    E = scipy.linalg.expm(M)
    np.testing.assert_allclose(Abar.numpy(), np.diag(E[:n, :n]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.diag(E[:n, :n]), np.diag(scipy.linalg.expm(M[:n, :n])))
    assert np.abs(E[:n, :n] - np.diag(np.diag(E[:n, :n]))).max() < 1e-14
    np.testing.assert_allclose(Bbar.numpy(), E[:n, n], rtol=0, atol=1e-12)
    # bilinear against the dense formula (I − ΔA/2)⁻¹(I + ΔA/2), (I − ΔA/2)⁻¹ Δ B
    Ab, Bb = discretize_bilinear(Lam, B, dt)
    A = np.diag(Lam.numpy())
    inv = np.linalg.inv(np.eye(n) - dt / 2 * A)
    np.testing.assert_allclose(Ab.numpy(), np.diag(inv @ (np.eye(n) + dt / 2 * A)), atol=1e-13)
    np.testing.assert_allclose(Bb.numpy(), inv @ (dt * B.numpy()), atol=1e-13)


# -- kernel --------------------------------------------------------------------


def _reference_kernel(k: S4DKernel, L: int) -> torch.Tensor:
    Abar, Bbar, C = k.discrete(torch.float64)
    out = torch.zeros(k.H, L, dtype=torch.float64)
    power = torch.ones_like(Abar)
    for ell in range(L):
        out[:, ell] = 2 * (C * Bbar * power).sum(-1).real
        power = power * Abar
    return out


@pytest.mark.parametrize("init", ["legs", "lin", "inv", "real", "random"])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_kernel_matches_power_loop(init, disc):
    torch.manual_seed(0)
    k = S4DKernel(3, 16, init=init, disc=disc)
    K = k.kernel(50, dtype=torch.float64)
    assert K.shape == (3, 50) and K.dtype == torch.float64
    assert (K - _reference_kernel(k, 50)).abs().max().item() < 1e-10
    K32 = k.kernel(50)
    assert K32.dtype == torch.float32
    assert (K32.double() - K).abs().max().item() < 1e-3 * K.abs().max().item()


def test_kernel_finite_under_extreme_log_dt():
    torch.manual_seed(0)
    k = S4DKernel(4, 16, init="legs")
    with torch.no_grad():
        k.log_dt.copy_(torch.tensor([1e6, -1e6, 0.0, 1e6]))
    for disc in ("zoh", "bilinear"):
        k.disc = disc
        assert torch.isfinite(k.kernel(128)).all()
        assert torch.isfinite(k.kernel(128, dtype=torch.float64)).all()
    assert torch.allclose(k.dt(), torch.tensor([1.0, 1e-4, 1.0, 1.0]))


def test_real_part_stays_negative_and_bad_args():
    k = S4DKernel(2, 8, init="lin")
    with torch.no_grad():
        k.log_neg_re.fill_(-200.0)  # Re Λ would underflow to −0: floored
    Abar, _, _ = k.discrete()
    assert (Abar.abs() < 1).all()
    assert torch.isfinite(k.kernel(16)).all()
    for kwargs in ({"init": "nope"}, {"disc": "euler"}, {"dt_min": 0.2, "dt_max": 0.1}):
        with pytest.raises(ValueError):
            S4DKernel(2, 8, **kwargs)
    with pytest.raises(ValueError):
        S4DKernel(2, 7)


# -- layer ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("init", "disc", "L", "activation"),
    [
        ("legs", "zoh", 2048, "gelu"),
        ("lin", "zoh", 1024, "glu"),
        ("inv", "bilinear", 1024, "gelu"),
        ("real", "zoh", 1024, "gelu"),
        ("random", "bilinear", 1024, "glu"),
    ],
)
def test_conv_equals_recurrence_float64(init, disc, L, activation):
    torch.manual_seed(1)
    layer = S4D(4, 16, init, activation=activation, disc=disc, learn_B=init == "random").double()
    u = torch.randn(2, L, 4, dtype=torch.float64)
    with torch.no_grad():
        y_conv = layer(u)
        y_rec = layer.forward_recurrent(u)
    assert y_conv.shape == y_rec.shape == (2, L, 4)
    assert (y_conv - y_rec).abs().max().item() < 1e-8


def test_step_and_initial_state():
    torch.manual_seed(2)
    layer = S4D(3, 8, "lin").double()
    state = layer.initial_state(5)
    assert state.shape == (5, 3, 4) and state.dtype == torch.complex128
    u = torch.randn(5, 6, 3, dtype=torch.float64)
    ys = []
    for t in range(6):
        y, state = layer.step(u[:, t], state)
        ys.append(y)
    assert torch.allclose(torch.stack(ys, 1), layer(u), atol=1e-10)
    with pytest.raises(ShapeError):
        layer.step(u[:, 0, :2], layer.initial_state(5))
    with pytest.raises(ShapeError):
        layer.step(u[:, 0], layer.initial_state(4))


def test_bidirectional_matches_direct_sum():
    torch.manual_seed(3)
    layer = S4D(2, 8, "lin", bidirectional=True).double()
    L = 9
    u = torch.randn(1, L, 2, dtype=torch.float64)
    k = layer.kernel.kernel(L)
    kf, kb = k[:2], k[2:]
    v = torch.zeros(2, L, dtype=torch.float64)
    for t in range(L):
        for s in range(L):
            if s <= t:
                v[:, t] += kf[:, t - s] * u[0, s]
            else:
                v[:, t] += kb[:, s - t - 1] * u[0, s]
    v = v + layer.D[:, None] * u[0].T
    expected = layer._head(v.T)[None]
    assert torch.allclose(layer(u), expected, atol=1e-10)
    with pytest.raises(ShapeError):
        layer.forward_recurrent(u)


def test_gradients_reach_ssm_parameters():
    torch.manual_seed(4)
    layer = S4D(4, 8, "legs")
    layer(torch.randn(2, 32, 4)).pow(2).mean().backward()
    k = layer.kernel
    for p in (k.log_dt, k.log_neg_re, k.im, k.C_re, k.C_im, layer.D):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(4, 16), (2, 16, 5), (2, 0, 4), (1, 2, 16, 4)])
def test_bad_input_shape(shape):
    layer = S4D(4, 8)
    with pytest.raises(ShapeError) as info:
        layer(torch.randn(*shape))
    assert "\n" not in str(info.value) and "(B, L, H)" in str(info.value)


def test_stack_shapes_and_float32():
    torch.manual_seed(5)
    stack = torch.nn.Sequential(
        S4D(6, 16, "legs", dropout=0.1), S4D(6, 16, "inv", activation="glu"), S4D(6, 8, "real")
    )
    y = stack(torch.randn(3, 40, 6))
    assert y.shape == (3, 40, 6) and y.dtype == torch.float32 and torch.isfinite(y).all()
    layer = S4D(6, 16, "lin")
    assert layer.initial_state(2).dtype == torch.complex64


def test_ssm_parameter_groups_partition():
    stack = torch.nn.Sequential(S4D(4, 8, "legs", learn_B=True), S4D(4, 8, "lin"))
    groups = ssm_parameter_groups(stack, lr=1e-2, weight_decay=0.05, ssm_lr=1e-3)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in stack.parameters()}
    rest, ssm = groups
    assert rest["lr"] == 1e-2 and rest["weight_decay"] == 0.05
    assert ssm["lr"] == 1e-3 and ssm["weight_decay"] == 0.0
    ssm_ids = {id(p) for p in ssm["params"]}
    k0, k1 = stack[0].kernel, stack[1].kernel
    expected = {id(p) for p in (*k0.ssm_parameters(), *k1.ssm_parameters())}
    assert len(expected) == 8  # log_dt, log_neg_re, im (+ B_re, B_im when learnt)
    assert ssm_ids == expected
    torch.optim.AdamW(groups)  # accepted by a real optimizer
