"""Periodic 1-D PDE trajectories: exact heat/advection, ETDRK4 Burgers, noise, files.

Domain and sampling. ``x ∈ [0, 2π)`` on ``G`` points ``x_j = 2π j / G``; frames at
``t_k = k·dt`` for ``k = 0 … T-1``. Fourier modes ``û_k`` use ``numpy.fft.rfft`` along
the last axis, wavenumbers ``k = 0 … G/2``.

Initial conditions (``InitialConditionConfig``), zero mean by construction::

    u0(x) = Σ_{m=1..terms} a_m sin(k_m x + φ_m),
    k_m ~ U{1, …, max_mode},  a_m ~ U(-A, A) / sqrt(terms),  φ_m ~ U(0, 2π)

Equations::

    heat       u_t = ν u_xx          û_k(t) = û_k(0) exp(-ν k² t)            (exact)
    advection  u_t + c u_x = 0       û_k(t) = û_k(0) exp(-i k c t)           (exact)
    Burgers    u_t + u u_x = ν u_xx  v̂_t = L v̂ + N(v̂),  L = -ν k²,
                                     N(v̂) = -½ i k · P_{2/3} F[(F⁻¹ v̂)²]

Burgers is pseudo-spectral in space (``P_{2/3}`` zeroes modes ``k ≥ G/3`` of the
product, Orszag's 2/3 rule) and ETDRK4 in time (Cox & Matthews 2002; Kassam &
Trefethen 2005). One step of size ``h`` with ``E = e^{hL}``, ``E₂ = e^{hL/2}``::

    a = E₂ v + Q N(v)          b = E₂ v + Q N(a)          c = E₂ a + Q (2 N(b) - N(v))
    v ← E v + f₁ N(v) + 2 f₂ (N(a) + N(b)) + f₃ N(c)

    Q  = h (e^{z/2} - 1) / z
    f₁ = h (-4 - z + e^{z}(4 - 3z + z²)) / z³
    f₂ = h ( 2 + z + e^{z}(-2 + z)) / z³
    f₃ = h (-4 - 3z - z² + e^{z}(4 - z)) / z³,     z = hL

The ``f`` are averaged over ``M`` points of a unit circle centred on each ``z`` (a
contour integral), so nothing cancels catastrophically as ``z → 0``. ``simulate``
solves Burgers on ``G·refine`` points and keeps every ``refine``-th one, so steep
fronts at small ν stay resolved while the models see ``G`` points (the initial
sines are the same on both grids).

Cole–Hopf reference for ``u0 = A sin x``: ``u = -2ν φ_x / φ`` with ``φ_t = ν φ_xx``
and ``φ0 = exp(A cos x / (2ν))``. With ``z = A/(2ν)`` and ``e^{z cos x} = I₀(z) +
2 Σ_{k≥1} I_k(z) cos kx``::

    u(x, t) = 4ν Σ_k k I_k(z) e^{-νk²t} sin kx / (I₀(z) + 2 Σ_k I_k(z) e^{-νk²t} cos kx)

Observation noise (``NoiseConfig``)::  σ = σ0 + σ1 |u|,  y = u + σ ε,  ε ~ N(0, 1).

Axes legend: ``N`` trajectories (count), ``T`` frames, ``G`` grid points, ``K = G//2+1``
rfft modes, ``M`` contour points, ``…`` any leading batch axes.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_safetensors
from scipy.special import ive

from ..config import DataConfig, InitialConditionConfig, NoiseConfig
from ..errors import DataError
from .cache import cache_path, load_or_build

GENERATOR_VERSION = "tertulia-pde-1"
"""Bump when the generator's output for a given config changes (invalidates caches)."""

SPLITS = ("train", "val", "test")
FILE_SUFFIXES = (".npz", ".safetensors")
_CONTOUR_POINTS = 32
_COLE_HOPF_TOLERANCE = 1e-6  # largest allowed estimated error of the series, relative to A
_ARRAYS = ("u", "y", "sigma")


# ------------------------------------------------------------------------------ grid, ICs


def grid_points(grid: int) -> np.ndarray:
    """``x_j = 2π j / G`` for ``j = 0 … G-1``. Returns (G,) float64."""
    if not isinstance(grid, (int, np.integer)) or grid < 2:
        raise DataError(f"grid={grid!r} must be an integer ≥ 2")
    return 2.0 * np.pi * np.arange(grid, dtype=np.float64) / grid


def random_initial_conditions(
    count: int, grid: int, ic: InitialConditionConfig, rng: np.random.Generator
) -> np.ndarray:
    """Random sums of ``ic.terms`` sines (see module docstring). Returns (N, G) float64."""
    if count < 1:
        raise DataError(f"count={count} must be ≥ 1")
    x = grid_points(grid)
    if 2 * ic.max_mode >= grid:
        raise DataError(
            f"ic.max_mode={ic.max_mode} is not representable on grid={grid}; "
            f"allowed: max_mode < grid/2 = {grid / 2:g}"
        )
    shape = (count, ic.terms)
    k = rng.integers(1, ic.max_mode + 1, size=shape)  # (N, terms)
    a = rng.uniform(-ic.amplitude, ic.amplitude, size=shape) / math.sqrt(ic.terms)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=shape)
    arg = k[..., None] * x + phase[..., None]  # (N, terms, G)
    return np.einsum("nm,nmg->ng", a, np.sin(arg))


# ------------------------------------------------------------------------------ checks


def _wavenumbers(grid: int) -> np.ndarray:
    return np.arange(grid // 2 + 1, dtype=np.float64)  # (K,)


def _as_field(u0: np.ndarray) -> np.ndarray:
    u0 = np.asarray(u0, dtype=np.float64)
    if u0.ndim < 1 or u0.shape[-1] < 2:
        raise DataError(f"u0 has shape {u0.shape}; expected (..., G) with G ≥ 2 grid points")
    if not np.isfinite(u0).all():
        raise DataError(f"u0 has {int((~np.isfinite(u0)).sum())} non-finite values (NaN/Inf)")
    return u0


def _as_times(times: np.ndarray | list[float], *, increasing: bool = False) -> np.ndarray:
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise DataError(f"times has shape {t.shape}; expected a non-empty 1-D array")
    if not np.isfinite(t).all() or (t < 0).any():
        raise DataError("times must be finite and ≥ 0")
    if increasing and (np.diff(t) < 0).any():
        raise DataError("times must be non-decreasing")
    return t


# ------------------------------------------------------------------------------ exact


def heat_exact(u0: np.ndarray, *, nu: float, times: np.ndarray) -> np.ndarray:
    """Exact heat solution ``û_k(t) = û_k(0) e^{-νk²t}``. u0: (…, G) → (…, T, G)."""
    if not nu >= 0:
        raise DataError(f"nu={nu} must be ≥ 0 for the heat equation")
    u0 = _as_field(u0)
    t = _as_times(times)
    g = u0.shape[-1]
    k = _wavenumbers(g)
    decay = np.exp(-nu * k**2 * t[:, None])  # (T, K)
    return np.fft.irfft(np.fft.rfft(u0)[..., None, :] * decay, n=g)


def advection_exact(u0: np.ndarray, *, speed: float, times: np.ndarray) -> np.ndarray:
    """Exact shift ``u(x, t) = u0(x - c t)`` by Fourier phase. u0: (…, G) → (…, T, G).

    Exact for band-limited data (no content in the Nyquist mode of an even grid, whose
    sine part cannot be represented and is dropped).
    """
    if not math.isfinite(speed):
        raise DataError(f"speed={speed} must be finite")
    u0 = _as_field(u0)
    t = _as_times(times)
    g = u0.shape[-1]
    k = _wavenumbers(g)
    shift = np.exp(-1j * k * speed * t[:, None])  # (T, K)
    return np.fft.irfft(np.fft.rfft(u0)[..., None, :] * shift, n=g)


def _bessel_terms(z: float) -> int:
    """Smallest ``k`` with ``|I_k(z)| < 1e-17 |I₀(z)|`` (integer order, real z)."""
    ref = abs(float(ive(0, z)))
    kmax = 16
    while abs(float(ive(kmax, z))) >= 1e-17 * ref:
        kmax *= 2
        if kmax > 1 << 20:
            raise DataError(f"Cole–Hopf series for A/(2ν)={z:g} needs too many terms; raise nu")
    small = np.abs(ive(np.arange(kmax + 1), z)) < 1e-17 * ref
    return int(np.argmax(small))


def burgers_cole_hopf(
    x: np.ndarray, t: np.ndarray | float, *, nu: float, amplitude: float = 1.0
) -> np.ndarray:
    """Exact viscous Burgers solution for ``u0 = amplitude · sin x`` (Cole–Hopf).

    x: (P,) any points; t: scalar or (T,) times ≥ 0 → t.shape + x.shape, float64.
    Uses exponentially scaled Bessel functions ``ive`` (the ``e^{-|z|}`` cancels in the
    ratio). The series alternates near the shock at ``x = π``, so for small ν the
    result carries a relative error of roughly ``1e-16 · e^{A/ν}`` there at early times.
    """
    if not nu > 0:
        raise DataError(f"nu={nu} must be > 0 for the Cole–Hopf solution")
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if (t < 0).any():
        raise DataError("t must be ≥ 0")
    z = amplitude / (2.0 * nu)
    k = np.arange(_bessel_terms(z) + 1, dtype=np.float64)  # (Kb,)
    c = ive(k, z) * np.exp(-nu * k**2 * t[..., None])  # t.shape + (Kb,)
    kx = k[:, None] * x.ravel()[None, :]  # (Kb, P)
    num = 4.0 * nu * (c * k) @ np.sin(kx)
    den = c[..., :1] + 2.0 * c[..., 1:] @ np.cos(kx[1:])
    # Rounding estimate: each sum is off by ~eps · Σ|terms|; near x = π they cancel.
    spread = 4.0 * nu * np.abs(c * k).sum(-1, keepdims=True) + 2.0 * np.abs(c).sum(
        -1, keepdims=True
    ) * np.abs(amplitude)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = num / den
        error = np.finfo(np.float64).eps * spread / den
    worst = float(np.max(np.where(den > 0, error, np.inf), initial=0.0))
    if worst > _COLE_HOPF_TOLERANCE * max(abs(amplitude), 1e-300):
        raise DataError(
            f"Cole–Hopf series loses precision (error ~{worst:.1e}) for "
            f"amplitude/nu={amplitude / nu:.3g}; allowed: roughly |amplitude|/nu ≤ 22"
        )
    return u.reshape(t.shape + x.shape)


# ------------------------------------------------------------------------------ Burgers


def _etdrk4_coefficients(lin: np.ndarray, h: float) -> tuple[np.ndarray, ...]:
    """E, E₂, Q, f₁, f₂, f₃ for a real diagonal ``lin`` (K,) and step ``h``.

    The φ-functions are means over ``M`` points on the upper half of a unit circle
    centred on each ``z = hL``; the real part gives the full-circle mean because
    ``lin`` is real.
    """
    m = np.arange(1, _CONTOUR_POINTS + 1)
    r = np.exp(1j * np.pi * (m - 0.5) / _CONTOUR_POINTS)  # (M,)
    z = h * lin[:, None] + r[None, :]  # (K, M)
    ez = np.exp(z)
    q = h * np.real(np.mean((np.exp(z / 2) - 1) / z, axis=1))
    f1 = h * np.real(np.mean((-4 - z + ez * (4 - 3 * z + z**2)) / z**3, axis=1))
    f2 = h * np.real(np.mean((2 + z + ez * (z - 2)) / z**3, axis=1))
    f3 = h * np.real(np.mean((-4 - 3 * z - z**2 + ez * (4 - z)) / z**3, axis=1))
    return np.exp(h * lin), np.exp(h * lin / 2), q, f1, f2, f3


def _burgers_nonlinear(grid: int) -> Callable[[np.ndarray], np.ndarray]:
    """``N(v̂) = -½ i k P_{2/3} F[(F⁻¹ v̂)²]`` on (N, K) spectra."""
    k = _wavenumbers(grid)
    g = np.where(k < grid / 3, -0.5j * k, 0.0)  # (K,) derivative with the 2/3 mask

    def nonlinear(v: np.ndarray) -> np.ndarray:
        u = np.fft.irfft(v, n=grid)  # (N, G)
        return g * np.fft.rfft(u * u)  # (N, K)

    return nonlinear


def burgers(u0: np.ndarray, *, nu: float, times: np.ndarray, dt: float) -> np.ndarray:
    """Viscous Burgers by pseudo-spectral ETDRK4, batched. u0: (…, G) → (…, T, G).

    Integrates from ``t = 0`` through each of ``times`` (non-decreasing, ≥ 0). Within
    each interval the step is ``interval / ceil(interval / dt)`` so frames are hit
    exactly. Raises DataError if the solution becomes non-finite.
    """
    if not nu > 0:
        raise DataError(f"nu={nu} must be > 0 for Burgers")
    if not (dt > 0 and math.isfinite(dt)):
        raise DataError(f"dt={dt} must be a finite number > 0")
    u0 = _as_field(u0)
    t = _as_times(times, increasing=True)
    batch, g = u0.shape[:-1], u0.shape[-1]
    lin = -nu * _wavenumbers(g) ** 2  # (K,)
    nonlinear = _burgers_nonlinear(g)

    v = np.fft.rfft(u0.reshape(-1, g))  # (N, K)
    out = np.empty((v.shape[0], t.size, g))  # (N, T, G)
    now = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for frame, target in enumerate(t):
            interval = target - now
            steps = max(0, math.ceil(interval / dt - 1e-9))  # tolerance: 0.05/1e-3 → 50
            if steps:
                e, e2, q, f1, f2, f3 = _etdrk4_coefficients(lin, interval / steps)
                for _ in range(steps):
                    nv = nonlinear(v)
                    a = e2 * v + q * nv
                    na = nonlinear(a)
                    b = e2 * v + q * na
                    nb = nonlinear(b)
                    c = e2 * a + q * (2 * nb - nv)
                    v = e * v + f1 * nv + 2 * f2 * (na + nb) + f3 * nonlinear(c)
                if not np.isfinite(v).all():
                    raise DataError(
                        f"Burgers solution became non-finite by t={target:.4g} with "
                        f"nu={nu:g}, dt={interval / steps:.3g}; reduce dt (solver_dt) "
                        "or raise nu or grid"
                    )
            now = target
            # Before the first step keep u0 itself, not its FFT round trip.
            out[:, frame] = np.fft.irfft(v, n=g) if now > 0 else u0.reshape(-1, g)
    return out.reshape(batch + (t.size, g))


# ------------------------------------------------------------------------------ noise


def observe(
    u: np.ndarray, noise: NoiseConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy observations ``y = u + σ ε`` with ``σ = σ0 + σ1 |u|``. Returns (y, σ), u's shape."""
    u = np.asarray(u, dtype=np.float64)
    sigma = noise.sigma0 + noise.sigma1 * np.abs(u)
    return u + sigma * rng.standard_normal(u.shape), sigma


# ------------------------------------------------------------------------------ container


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous; compare fields
class Trajectories:
    """A set of trajectories: clean ``u``, noisy ``y``, true noise std ``sigma``.

    All three are float32 (N, T, G) (cast on construction); ``dt`` is the frame spacing.
    """

    u: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    dt: float

    def __post_init__(self) -> None:
        for name in _ARRAYS:
            arr = np.asarray(getattr(self, name))
            if arr.ndim != 3:
                raise DataError(
                    f"Trajectories.{name} has shape {arr.shape}; expected 3 axes (N, T, G)"
                )
            if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
                raise DataError(f"Trajectories.{name} has dtype {arr.dtype}; expected real numbers")
            object.__setattr__(self, name, np.ascontiguousarray(arr, dtype=np.float32))
        shape = self.y.shape
        for name in ("u", "sigma"):
            if getattr(self, name).shape != shape:
                raise DataError(
                    f"Trajectories.{name} has shape {getattr(self, name).shape} "
                    f"but y has shape {shape}; they must match"
                )
        if shape[0] < 1 or shape[2] < 1:
            raise DataError(f"Trajectories are empty: shape {shape}; need N ≥ 1 and G ≥ 1")
        if shape[1] < 2:
            raise DataError(f"Trajectories have T={shape[1]} frames; need T ≥ 2")
        for name in _ARRAYS:
            bad = int((~np.isfinite(getattr(self, name))).sum())
            if bad:
                raise DataError(f"Trajectories.{name} has {bad} non-finite values (NaN/Inf)")
        if (self.sigma < 0).any():
            raise DataError("Trajectories.sigma has negative values; a std must be ≥ 0")
        if not (math.isfinite(self.dt) and self.dt > 0):
            raise DataError(f"Trajectories.dt={self.dt} must be a finite number > 0")
        object.__setattr__(self, "dt", float(self.dt))

    def __len__(self) -> int:
        return self.y.shape[0]


# ------------------------------------------------------------------------------ generation


def simulate(cfg: DataConfig, count: int, seed: int | np.random.SeedSequence) -> Trajectories:
    """Draw ``count`` ICs, solve ``cfg.equation`` at ``t_k = k·cfg.dt``, add noise."""
    if count < 1:
        raise DataError(f"count={count} must be ≥ 1")
    fine = cfg.grid * (cfg.refine if cfg.equation == "burgers" else 1)
    if cfg.equation == "burgers" and 3 * cfg.ic.max_mode >= fine:
        raise DataError(
            f"ic.max_mode={cfg.ic.max_mode} is not resolved by the 2/3 rule on the solver "
            f"grid of {fine} points; allowed: max_mode < grid·refine/3 = {fine / 3:.4g}"
        )
    if 2 * cfg.ic.max_mode >= cfg.grid:
        raise DataError(
            f"ic.max_mode={cfg.ic.max_mode} is above the Nyquist mode of grid={cfg.grid}; "
            f"allowed: max_mode < grid/2 = {cfg.grid / 2:.4g}"
        )
    rng = np.random.default_rng(seed)
    # ICs are drawn on the solver grid; their values on the coarse grid are the same sines.
    u0 = random_initial_conditions(count, fine, cfg.ic, rng)  # (N, G·refine)
    times = cfg.dt * np.arange(cfg.frames)  # (T,)
    if cfg.equation == "burgers":
        # Solve on the fine grid (resolves steep fronts), keep every refine-th point.
        u = burgers(u0, nu=cfg.nu, times=times, dt=cfg.solver_dt)[..., :: fine // cfg.grid]
    elif cfg.equation == "heat":
        u = heat_exact(u0, nu=cfg.nu, times=times)
    elif cfg.equation == "advection":
        u = advection_exact(u0, speed=cfg.speed, times=times)
    else:  # pragma: no cover - DataConfig's Literal rejects anything else
        raise DataError(f"equation={cfg.equation!r}; allowed: burgers, heat, advection")
    y, sigma = observe(u, cfg.noise, rng)
    return Trajectories(u=u, y=y, sigma=sigma, dt=cfg.dt)


def generate(cfg: DataConfig) -> dict[str, Trajectories]:
    """Train/val/test splits with independent streams from ``SeedSequence(cfg.seed).spawn(3)``."""
    seeds = np.random.SeedSequence(cfg.seed).spawn(len(SPLITS))
    counts = (cfg.n_train, cfg.n_val, cfg.n_test)
    return {
        split: simulate(cfg, count, seed)
        for split, count, seed in zip(SPLITS, counts, seeds, strict=True)
    }


def dataset_key(cfg: DataConfig) -> dict[str, Any]:
    """Cache key: every DataConfig field that affects the data, plus the generator version."""
    return {
        "generator": GENERATOR_VERSION,
        "data": cfg.model_dump(mode="json", exclude={"window", "cache", "path"}),
    }


def _to_arrays(splits: dict[str, Trajectories]) -> dict[str, np.ndarray]:
    arrays = {f"{s}.{name}": getattr(tr, name) for s, tr in splits.items() for name in _ARRAYS}
    arrays |= {f"{s}.dt": np.array([tr.dt]) for s, tr in splits.items()}
    return arrays


def _from_arrays(arrays: dict[str, np.ndarray]) -> dict[str, Trajectories]:
    return {
        s: Trajectories(
            **{name: arrays[f"{s}.{name}"] for name in _ARRAYS}, dt=float(arrays[f"{s}.dt"][0])
        )
        for s in SPLITS
    }


def will_generate(cfg: DataConfig) -> bool:
    """True when :func:`load_dataset` is going to solve PDEs (no file, no cached copy)."""
    if cfg.path:
        return False
    return not cfg.cache or not cache_path(dataset_key(cfg)).is_file()


def load_dataset(cfg: DataConfig) -> dict[str, Trajectories]:
    """The configured splits: read ``cfg.path``, or generate (cached if ``cfg.cache``)."""
    if cfg.path:
        return load_file(cfg.path, cfg)
    if not cfg.cache:
        return generate(cfg)
    key = dataset_key(cfg)
    arrays = load_or_build(key, lambda: _to_arrays(generate(cfg)))
    try:
        return _from_arrays(arrays)
    except KeyError as exc:  # only a hand-edited file can lack arrays: the key checks the rest
        raise DataError(
            f"cached dataset {cache_path(key)} lacks array {exc.args[0]!r}; delete that file"
        ) from None


# ------------------------------------------------------------------------------ files


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":
        try:
            with open(path, "rb") as fh:
                is_zip = fh.read(4) == b"PK\x03\x04"
            if not is_zip:
                raise DataError(f"{path}: not a .npz (zip) archive")
            with np.load(path, allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        except ValueError:  # object arrays need pickle, which we refuse
            raise DataError(f"{path}: holds object arrays that need pickle, refused") from None
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: not a readable .npz file ({_one_line(exc)})") from None
    try:
        return load_safetensors(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .safetensors file ({_one_line(exc)})") from None


def load_file(path: str | Path, cfg: DataConfig) -> dict[str, Trajectories]:
    """Read trajectories from a user ``.npz`` or ``.safetensors`` file and split them.

    Keys: ``y`` (N, T, G) required; ``u`` optional (if missing, ``y`` is used as the
    truth); ``sigma`` optional (if missing, zeros: the noise level is unknown). Other
    keys are ignored. Frames are taken ``cfg.dt`` apart. Splits in file order: the first
    ``cfg.n_train`` trajectories train, the next ``n_val`` val, the next ``n_test``
    test; trajectories beyond their sum are unused.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(
            f"data file {str(path)!r} is a folder; give a {' or '.join(FILE_SUFFIXES)} file "
            "holding an array 'y' of shape (trajectories, frames, grid)"
        )
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    if path.suffix not in FILE_SUFFIXES:
        raise DataError(
            f"data file {path.name!r} has unsupported suffix {path.suffix!r}; "
            f"allowed: {', '.join(FILE_SUFFIXES)}"
        )
    raw = _read_arrays(path)
    if "y" not in raw:
        found = ", ".join(sorted(raw)) or "none"
        raise DataError(f"{path.name}: missing required array 'y'; keys found: {found}")
    arrays: dict[str, np.ndarray] = {}
    for name in _ARRAYS:
        if name not in raw:
            continue
        arr = np.asarray(raw[name])
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise DataError(f"{path.name}: array {name!r} has dtype {arr.dtype}; expected real")
        if arr.ndim != 3:
            raise DataError(
                f"{path.name}: array {name!r} has {arr.ndim} axes {arr.shape}; expected (N, T, G)"
            )
        if arr.size == 0:
            raise DataError(f"{path.name}: array {name!r} is empty, shape {arr.shape}")
        bad = int((~np.isfinite(arr)).sum())
        if bad:
            raise DataError(f"{path.name}: array {name!r} has {bad} non-finite values (NaN/Inf)")
        arrays[name] = arr
    y = arrays["y"]
    for name in ("u", "sigma"):
        if name in arrays and arrays[name].shape != y.shape:
            raise DataError(
                f"{path.name}: array {name!r} has shape {arrays[name].shape} "
                f"but 'y' has shape {y.shape}; they must match"
            )
    u = arrays.get("u", y)
    sigma = arrays.get("sigma", np.zeros_like(y))
    if y.shape[1] < 2:
        raise DataError(f"{path.name}: 'y' has T={y.shape[1]} frames; need at least 2")
    need = cfg.n_train + cfg.n_val + cfg.n_test
    if y.shape[0] < need:
        raise DataError(
            f"{path.name} holds {y.shape[0]} trajectories but n_train+n_val+n_test={need}; "
            "lower the split sizes or add trajectories"
        )
    bounds = np.cumsum([0, cfg.n_train, cfg.n_val, cfg.n_test])
    return {
        split: Trajectories(u=u[lo:hi], y=y[lo:hi], sigma=sigma[lo:hi], dt=cfg.dt)
        for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:], strict=True)
    }
