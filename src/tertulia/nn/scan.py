"""The selective state-space scan of Mamba (Gu & Dao, 2023), on the CPU.

Every channel d and state index n carries an independent scalar linear
recurrence whose coefficients depend on the input (the "selection"):

    Ā_t = exp(Δ_t A)                      (zero-order hold, per (d, n))
    h_t = Ā_t ⊙ h_{t−1} + Δ_t B_t u_t      (Euler for the input; h_0 = 0)
    y_t = ⟨h_t, C_t⟩_n + Dskip ⊙ u_t
    out = y ⊙ silu(z)                      (only when the gate z is given)

Shape legend: B batch, L sequence length, D channels (d_inner), N state size;
u, Δ, z: (B, L, D); A: (D, N) (negative reals); Bm, Cm: (B, L, N); Dskip: (D,);
h: (B, D, N) per step.

Implementations (``selective_scan(..., impl=...)``):

* ``"sequential"`` — :func:`selective_scan_sequential`, one Python step per t,
  autograd through it. The readable reference.
* ``"chunked"`` — :func:`_scan_chunked`, a two-level scan in pure PyTorch: the
  L axis is split in chunks of c steps; all chunks are scanned side by side
  from a zero state (c vectorised steps), the chunk-final states are carried
  across chunks (L/c steps), and the carry is injected with the
  chunk-relative decay ``exp(S_t)``, ``S_t = Σ_{s≤t in chunk} Δ_s A ≤ 0``, so
  no exponent is ever positive (no overflow whatever Δ is). Autograd through it.
* ``"numba"`` — a compiled CPU kernel (numba, parallel over batch×channels)
  with a hand-written backward (:class:`_NumbaScan`). The backward of a linear
  recurrence is a linear recurrence run in reverse: with g_t = ∂ℒ/∂h_t,

      g_t = C_t dy_t + Ā_{t+1} ⊙ g_{t+1}
      ∂Cm_t = Σ_d dy_t h_t          ∂Bm_t = Σ_d g_t Δ_t u_t
      ∂u_t  = Σ_n g_t Δ_t B_t       ∂A    = Σ_{b,t} g_t h_{t−1} Ā_t Δ_t
      ∂Δ_t  = Σ_n g_t (h_{t−1} Ā_t A + B_t u_t)

  The forward stores only the states at chunk boundaries (every 64 steps,
  (B, D, L/64, N)); the backward recomputes each chunk's states from its
  boundary into a (65, N) buffer, so no (B, L, D, N) tensor is ever formed.
  (Running the recurrence backwards, h_{t−1} = (h_t − Δ B u)/Ā_t, would divide
  by Ā_t ≈ 0 when Δ is large: not used.) Dskip and the gate are elementwise
  and left to autograd.
* ``"fast"`` — ``"numba"`` when numba imports, else ``"chunked"``.

Why numba is the fast path (measured on this 2-core CPU, B=8, L=1024, D=64,
N=16, float32, forward+backward, 2 threads, median; ``benchmarks/scan.py``):
numba ≈ 23 ms (forward ≈ 6, backward ≈ 18), chunked (c=32) ≈ 500 ms,
sequential ≈ 450–780 ms (machine load varies), mambapy's ``pscan`` selective scan ≈ 290 ms. The
pure-PyTorch variants are bound by materialising several (B, L, D, N) tensors
(33 MB each here) and by per-step dispatch; the kernel touches only (B, L, ·)
tensors plus a chunk buffer that stays in cache. Its cost is the exp (one per
state update forward, one in the backward's recomputation): libm's scalar exp
kept the loop scalar (forward 18 ms), so the kernels use their own vectorisable
exp (below), 3× faster. ``torch.compile`` of the sequential loop unrolls L
steps into one graph (minutes to compile at L=1024) and was not pursued. The
JIT compile of the kernels (≈ 5 s) happens once and is cached on disk
(``cache=True``; a cached first call ≈ 0.9 s); it is excluded from the timings.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ShapeError
from ..runtime import float32, full_precision

Impl = Literal["fast", "numba", "chunked", "sequential"]

_CKPT = 64  # steps between stored states in the numba forward


# -- checks ---------------------------------------------------------------------


def _check(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    Dskip: torch.Tensor | None,
    z: torch.Tensor | None,
) -> None:
    if u.dim() != 3:
        raise ShapeError(f"u must be (B, L, D), got shape {tuple(u.shape)}")
    b, l, d = u.shape
    if delta.shape != u.shape:
        raise ShapeError(f"delta must match u {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ShapeError(f"A must be (D={d}, N), got shape {tuple(A.shape)}")
    n = A.shape[1]
    for name, m in (("Bm", Bm), ("Cm", Cm)):
        if m.shape != (b, l, n):
            raise ShapeError(f"{name} must be (B, L, N)={(b, l, n)}, got {tuple(m.shape)}")
    if Dskip is not None and Dskip.shape != (d,):
        raise ShapeError(f"Dskip must be (D,)=({d},), got {tuple(Dskip.shape)}")
    if z is not None and z.shape != u.shape:
        raise ShapeError(f"z must match u {tuple(u.shape)}, got {tuple(z.shape)}")


def _finish(
    y: torch.Tensor, u: torch.Tensor, Dskip: torch.Tensor | None, z: torch.Tensor | None
) -> torch.Tensor:
    """``(y + Dskip u) ⊙ silu(z)``, each term only when given."""
    if Dskip is not None:
        y = y + u * Dskip
    if z is not None:
        y = y * F.silu(z)
    return y


# -- references -------------------------------------------------------------------


def selective_scan_sequential(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    Dskip: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
) -> torch.Tensor:
    """Readable reference: one step of ``h ← exp(Δ_t A) h + Δ_t B_t u_t`` per t.

    Only (B, D, N) tensors per step; autograd records every step. Returns (B, L, D).
    """
    _check(u, delta, A, Bm, Cm, Dskip, z)
    b, l, d = u.shape
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(l):
        dt = delta[:, t, :, None]  # (B, D, 1)
        h = torch.exp(dt * A) * h + dt * Bm[:, t, None, :] * u[:, t, :, None]
        ys.append((h * Cm[:, t, None, :]).sum(-1))
    return _finish(torch.stack(ys, dim=1), u, Dskip, z)


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    Dskip: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
) -> torch.Tensor:
    """Literal transcription of the published algorithm (materialises (B, L, D, N)).

    deltaA = exp(Δ ⊗ A), deltaB_u = Δ ⊗ B ⊗ u, loop h = deltaA_t h + deltaB_u_t,
    y_t = h · C_t, stack, add the skip, gate. Used by the tests as ground truth.
    """
    _check(u, delta, A, Bm, Cm, Dskip, z)
    deltaA = torch.exp(torch.einsum("bld,dn->bldn", delta, A))
    deltaB_u = torch.einsum("bld,bln,bld->bldn", delta, Bm, u)
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    ys = []
    for t in range(u.shape[1]):
        h = deltaA[:, t] * h + deltaB_u[:, t]
        ys.append(torch.einsum("bdn,bn->bd", h, Cm[:, t]))
    return _finish(torch.stack(ys, dim=1), u, Dskip, z)


# -- chunked pure PyTorch -----------------------------------------------------------


def _scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    chunk: int = 32,
) -> torch.Tensor:
    """Two-level scan (no skip/gate): chunks side by side, then a carry across chunks.

    With K = ⌈L/c⌉ chunks (L padded with Δ = 0, u = 0, which leaves h unchanged):
    local states h^loc (zero start), cumulative log decay S_t = Σ_{s≤t} Δ_s A
    within the chunk (≤ 0), chunk-final states H_k = exp(S_end) H_{k−1} + h^loc_end,
    then h_t = h^loc_t + exp(S_t) H_{k−1}. Returns y_core (B, L, D).
    """
    b, l, d = u.shape
    n = A.shape[1]
    c = max(1, min(chunk, l))
    k = -(-l // c)
    pad = k * c - l
    if pad:
        u, delta = F.pad(u, (0, 0, 0, pad)), F.pad(delta, (0, 0, 0, pad))
        Bm, Cm = F.pad(Bm, (0, 0, 0, pad)), F.pad(Cm, (0, 0, 0, pad))
    dA = delta.view(b, k, c, d, 1) * A  # (B, K, c, D, N) log-decays, ≤ 0
    x = delta.view(b, k, c, d, 1) * u.view(b, k, c, d, 1) * Bm.view(b, k, c, 1, n)
    decay = torch.exp(dA)
    h = x.new_zeros(b, k, d, n)
    locs = []
    # unbind once: indexing decay[:, :, t] in the loop would make autograd
    # scatter into a full-size zero tensor per step (O(c · BLDN) backward)
    for dec_t, x_t in zip(decay.unbind(2), x.unbind(2), strict=True):
        h = dec_t * h + x_t
        locs.append(h)
    hloc = torch.stack(locs, dim=2)  # (B, K, c, D, N)
    S = torch.cumsum(dA, dim=2)  # ≤ 0: exp never overflows
    end_decay = torch.exp(S[:, :, -1])  # (B, K, D, N)
    carry = [x.new_zeros(b, d, n)]
    for dec_j, h_j in zip(end_decay.unbind(1)[:-1], hloc[:, :, -1].unbind(1)[:-1], strict=True):
        carry.append(dec_j * carry[-1] + h_j)
    H = torch.stack(carry, dim=1)  # (B, K, D, N): state entering chunk j
    hs = hloc + torch.exp(S) * H[:, :, None]
    y = torch.einsum("bkcdn,bkcn->bkcd", hs, Cm.view(b, k, c, n))
    return y.reshape(b, k * c, d)[:, :l]


# -- numba kernel ---------------------------------------------------------------------

_KERNELS: dict[str, Any] | None = None


def _numba_available() -> bool:
    try:
        import numba  # noqa: F401  # lazy: a probe for the optional JIT
    except ImportError:
        return False
    return True


def _kernels() -> dict[str, Any]:
    """Compile (once, cached on disk) the forward and backward kernels."""
    global _KERNELS
    if _KERNELS is not None:
        return _KERNELS
    from llvmlite import ir  # lazy: numba (heavy, JIT) loads only when the kernel is used
    from numba import njit, prange, types
    from numba.extending import intrinsic, overload

    # A vectorisable exp: the libm call blocks SIMD and was 80 % of the forward.
    # exp(x) = 2^k · p(r), k = round(x / ln 2), r = x − k ln 2 (two-part ln 2),
    # p the Taylor polynomial of degree 6 (float32, ≤ 3e-7 rel.) or 13 (float64,
    # ≤ 3e-16 rel.); 2^k is built from its exponent bits. x is clamped to the
    # normal range, so exp(x) for x < −87 (float32) gives ≈ 1.6e-38, not 0.
    @intrinsic
    def _f32_from_bits(typingctx, x):  # type: ignore[no-untyped-def]
        def cg(context, builder, signature, args):  # type: ignore[no-untyped-def]
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.int32), cg

    @intrinsic
    def _f64_from_bits(typingctx, x):  # type: ignore[no-untyped-def]
        def cg(context, builder, signature, args):  # type: ignore[no-untyped-def]
            return builder.bitcast(args[0], ir.DoubleType())

        return types.float64(types.int64), cg

    def _exp32(x):  # type: ignore[no-untyped-def]
        x = min(max(x, np.float32(-87.0)), np.float32(88.0))
        k = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
        r = (x - k * np.float32(0.693359375)) - k * np.float32(-2.12194440e-4)
        p = np.float32(1 / 720) * r + np.float32(1 / 120)  # Horner, unrolled for SIMD
        p = p * r + np.float32(1 / 24)
        p = p * r + np.float32(1 / 6)
        p = p * r + np.float32(0.5)
        p = p * r + np.float32(1.0)
        p = p * r + np.float32(1.0)
        return p * _f32_from_bits(np.int32(k + np.float32(127.0)) << np.int32(23))

    def _exp64(x):  # type: ignore[no-untyped-def]
        x = min(max(x, -708.0), 709.0)
        k = np.floor(x * 1.4426950408889634 + 0.5)
        r = (x - k * 0.6931471803691238) - k * 1.9082149292705877e-10
        p = 1.6059043836821613e-10 * r + 2.08767569878681e-09  # 1/13!, 1/12!: Horner
        p = p * r + 2.505210838544172e-08
        p = p * r + 2.755731922398589e-07
        p = p * r + 2.7557319223985893e-06
        p = p * r + 2.48015873015873e-05
        p = p * r + 0.0001984126984126984
        p = p * r + 0.001388888888888889
        p = p * r + 0.008333333333333333
        p = p * r + 0.041666666666666664
        p = p * r + 0.16666666666666666
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        return p * _f64_from_bits(np.int64(k + 1023.0) << np.int64(52))

    def fexp(x):  # type: ignore[no-untyped-def]
        return np.exp(x)  # pragma: no cover - replaced in compiled code

    @overload(fexp, inline="always", fastmath=True)
    def _fexp_impl(x):  # type: ignore[no-untyped-def]
        return _exp32 if x == types.float32 else _exp64

    @njit(parallel=True, cache=True, fastmath=True)
    def fwd(u, delta, A, Bm, Cm, y, hck, ck):  # pragma: no cover - compiled
        nb, nl, nd = u.shape
        nn = A.shape[1]
        for bd in prange(nb * nd):
            b = bd // nd
            d = bd % nd
            h = np.zeros(nn, dtype=u.dtype)
            a = A[d]
            for t in range(nl):
                if t % ck == 0:
                    hck[b, d, t // ck, :] = h
                dt = delta[b, t, d]
                du = dt * u[b, t, d]
                acc = 0.0 * dt
                for i in range(nn):
                    h[i] = fexp(dt * a[i]) * h[i] + du * Bm[b, t, i]
                    acc += h[i] * Cm[b, t, i]
                y[b, t, d] = acc

    @njit(parallel=True, cache=True, fastmath=True)
    def bwd(u, delta, A, Bm, Cm, dy, hck, ck, groups, du, ddelta, dA, dB, dC):  # pragma: no cover
        nb, nl, nd = u.shape
        nn = A.shape[1]
        per = (nd + groups - 1) // groups
        nk = hck.shape[2]
        for bg in prange(nb * groups):
            b = bg // groups
            gi = bg % groups
            buf = np.empty((ck + 1, nn), dtype=u.dtype)
            abuf = np.empty((ck, nn), dtype=u.dtype)
            g = np.empty(nn, dtype=u.dtype)
            anext = np.empty(nn, dtype=u.dtype)
            for d in range(gi * per, min(nd, (gi + 1) * per)):
                a = A[d]
                g[:] = 0.0
                anext[:] = 0.0
                for kk in range(nk - 1, -1, -1):
                    t0 = kk * ck
                    t1 = min(nl, t0 + ck)
                    buf[0, :] = hck[b, d, kk, :]
                    for t in range(t0, t1):
                        dt = delta[b, t, d]
                        dut = dt * u[b, t, d]
                        j = t - t0
                        for i in range(nn):
                            at = fexp(dt * a[i])
                            abuf[j, i] = at
                            buf[j + 1, i] = at * buf[j, i] + dut * Bm[b, t, i]
                    for t in range(t1 - 1, t0 - 1, -1):
                        j = t - t0
                        dt = delta[b, t, d]
                        ut = u[b, t, d]
                        dyt = dy[b, t, d]
                        s_dt = 0.0 * dt
                        s_u = 0.0 * dt
                        for i in range(nn):
                            gi_ = g[i] * anext[i] + Cm[b, t, i] * dyt
                            g[i] = gi_
                            dC[gi, b, t, i] += dyt * buf[j + 1, i]
                            at = abuf[j, i]
                            da = gi_ * buf[j, i] * at
                            s_dt += da * a[i] + gi_ * Bm[b, t, i] * ut
                            dA[b, d, i] += da * dt
                            dB[gi, b, t, i] += gi_ * dt * ut
                            s_u += gi_ * Bm[b, t, i]
                            anext[i] = at
                        ddelta[b, t, d] = s_dt
                        du[b, t, d] = s_u * dt

    _KERNELS = {"fwd": fwd, "bwd": bwd}
    return _KERNELS


def _set_numba_threads() -> None:
    import numba  # lazy: numba is heavy; loaded only with its kernel

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


class _NumbaScan(torch.autograd.Function):
    """y_core = scan(u, Δ, A, Bm, Cm) with the numba kernels (no skip, no gate)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        Bm: torch.Tensor,
        Cm: torch.Tensor,
    ) -> torch.Tensor:
        k = _kernels()
        _set_numba_threads()
        u, delta, A, Bm, Cm = (x.detach().contiguous() for x in (u, delta, A, Bm, Cm))
        b, l, d = u.shape
        y = torch.empty_like(u)
        hck = u.new_empty(b, d, -(-l // _CKPT), A.shape[1])
        k["fwd"](
            u.numpy(),
            delta.numpy(),
            A.numpy(),
            Bm.numpy(),
            Cm.numpy(),
            y.numpy(),
            hck.numpy(),
            _CKPT,
        )
        ctx.save_for_backward(u, delta, A, Bm, Cm, hck)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        u, delta, A, Bm, Cm, hck = ctx.saved_tensors
        k = _kernels()
        _set_numba_threads()
        b, l, d = u.shape
        n = A.shape[1]
        # dBm/dCm sum over channels: channels are split in `groups` so that
        # b × groups ≥ threads, each group writing its own partial sum (no races).
        groups = max(1, min(d, -(-torch.get_num_threads() // b)))
        dy = dy.detach().contiguous()
        du, ddelta = torch.empty_like(u), torch.empty_like(u)
        dA = u.new_zeros(b, d, n)
        dB = u.new_zeros(groups, b, l, n)
        dC = u.new_zeros(groups, b, l, n)
        k["bwd"](
            u.numpy(), delta.numpy(), A.numpy(), Bm.numpy(), Cm.numpy(), dy.numpy(), hck.numpy(),
            _CKPT, groups, du.numpy(), ddelta.numpy(), dA.numpy(), dB.numpy(), dC.numpy(),
        )  # fmt: skip
        return du, ddelta, dA.sum(0), dB.sum(0), dC.sum(0)


# -- entry point ------------------------------------------------------------------------


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    Dskip: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    impl: Impl = "fast",
) -> torch.Tensor:
    """Selective scan ``(y + Dskip u) ⊙ silu(z)`` with y_t = ⟨h_t, C_t⟩; returns (B, L, D).

    ``impl``: ``"fast"`` (numba kernel if available, else chunked), ``"numba"``,
    ``"chunked"`` or ``"sequential"`` (see the module docstring). The numba
    kernel runs on CPU tensors of float32/float64; other devices or dtypes fall
    back to the chunked scan. Under bf16 autocast the scan leaves autocast and runs in
    float32 (half-precision inputs are cast up): a recurrence of L products is no place
    for 8 mantissa bits.
    """
    with full_precision(u):
        u, delta, A, Bm, Cm = float32(u, delta, A, Bm, Cm)
        Dskip = None if Dskip is None else float32(Dskip)[0]
        z = None if z is None else float32(z)[0]
        return _selective_scan(u, delta, A, Bm, Cm, Dskip, z, impl)


def _selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    Dskip: torch.Tensor | None,
    z: torch.Tensor | None,
    impl: Impl,
) -> torch.Tensor:
    if impl == "sequential":
        return selective_scan_sequential(u, delta, A, Bm, Cm, Dskip, z)
    if impl not in ("fast", "numba", "chunked"):
        raise ShapeError(f"impl must be fast, numba, chunked or sequential, got {impl!r}")
    _check(u, delta, A, Bm, Cm, Dskip, z)
    dtypes = {x.dtype for x in (u, delta, A, Bm, Cm)}
    use_numba = (
        impl != "chunked"
        and _numba_available()
        and len(dtypes) == 1
        and dtypes <= {torch.float32, torch.float64}
        and all(x.device.type == "cpu" for x in (u, delta, A, Bm, Cm))
    )
    if impl == "numba" and not use_numba:
        raise ShapeError("impl='numba' needs numba and CPU float32/float64 tensors of one dtype")
    y = _NumbaScan.apply(u, delta, A, Bm, Cm) if use_numba else _scan_chunked(u, delta, A, Bm, Cm)
    return _finish(y, u, Dskip, z)
