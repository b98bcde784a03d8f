"""The seed's island: fish F and pelicans P, linearised about their equilibrium.

States are deviations from an equilibrium population, ``h = (F − F*, P − P*)``,
so h = 0 is the balance point and negative values mean fewer animals than
there. The linear model (time in arbitrary units)::

    h' = A h + B u,     A = [[0.5, −4], [0.1, −0.05]],   B = [0.3, 0]ᵀ
    y  = C h + v,       C = [[0.20, 0], [0.05, 0], [0, 0.25], [0, 0.10]]

Fish breed (+0.5) and are eaten by pelicans (−4); pelicans grow with fish
(+0.1) and die off slowly (−0.05). The single input u adds or removes fish
(stocking or fishing). Cameras 1 and 2 see 20 % and 5 % of the fish, drones 1
and 2 see 25 % and 10 % of the pelicans.

Eigenvalues: ``tr A = 0.45``, ``det A = 0.5·(−0.05) − (−4)·0.1 = 0.375`` and
``λ = (tr ± √(tr² − 4 det)) / 2 = 0.225 ± i √(0.375 − 0.050625) = 0.225 ± 0.56954 i``.
Both grow: a boom-and-bust cycle of period ``2π / 0.56954 ≈ 11.03`` whose
amplitude doubles every ``ln 2 / 0.225 ≈ 3.08`` time units.

:func:`simulate_island` samples this system every ``dt`` with a zero-order
hold (exact for an input held over each step); continuous process noise of
spectral density Q becomes the exact per-step covariance by Van Loan's method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import CovarianceError, ShapeError
from ..filters._checks import as_tensor
from ..filters.lti import LinearSSM

__all__ = [
    "INPUT_NAMES",
    "ISLAND_A",
    "ISLAND_B",
    "ISLAND_C",
    "IslandData",
    "SENSOR_NAMES",
    "STATE_NAMES",
    "island_system",
    "simulate_island",
]

STATE_NAMES = ("fish", "pelicans")
SENSOR_NAMES = ("camera 1", "camera 2", "drone 1", "drone 2")
INPUT_NAMES = ("fish added",)

ISLAND_A = ((0.5, -4.0), (0.1, -0.05))
ISLAND_B = (0.3, 0.0)
ISLAND_C = ((0.20, 0.0), (0.05, 0.0), (0.0, 0.25), (0.0, 0.10))

ArrayLike = Any  # tensors, numpy arrays, nested sequences, Python scalars
Policy = Callable[[torch.Tensor], ArrayLike]


def _sensor_covariance(sensor_noise: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    # standard deviations -> diagonal covariance (4, 4); one number serves every sensor
    sd = as_tensor("sensor_noise", sensor_noise)
    if sd.dim() == 0:
        sd = sd.expand(len(SENSOR_NAMES))
    if tuple(sd.shape) != (len(SENSOR_NAMES),):
        raise ShapeError(
            f"sensor_noise must be one standard deviation or {len(SENSOR_NAMES)} (one per sensor);"
            f" got shape {tuple(sd.shape)}"
        )
    if (sd < 0).any():
        raise CovarianceError(
            f"sensor_noise must hold non-negative standard deviations; got {sd.tolist()}"
        )
    return torch.diag(sd**2)


def island_system(
    *,
    process_noise: ArrayLike | None = None,
    sensor_noise: float | Sequence[float] | torch.Tensor | None = None,
) -> LinearSSM:
    """The continuous-time island model (see the module docstring).

    ``process_noise`` is the spectral density of the process noise: a scalar q
    (Q = q·I) or a (2, 2) matrix. ``sensor_noise`` holds the standard deviation
    of each sensor's reading, one number for all or four (R = diag(σ²)). None
    leaves the model noiseless in that part.
    """
    R = None if sensor_noise is None else _sensor_covariance(sensor_noise)
    return LinearSSM(ISLAND_A, ISLAND_B, ISLAND_C, dt=None, Q=process_noise, R=R)


@dataclass(frozen=True)
class IslandData:
    """A simulated island: ``t (T,)``, ``states (T, 2)`` (fish, pelicans deviations),
    ``sensors (T, 4)`` (noisy readings), ``inputs (T, 1)`` (the u applied over
    [t_k, t_k + dt)) and the discretised ``system`` that produced them."""

    t: torch.Tensor
    states: torch.Tensor
    sensors: torch.Tensor
    inputs: torch.Tensor
    system: LinearSSM


def simulate_island(
    steps: int = 300,
    dt: float = 0.1,
    h0: ArrayLike = (10.0, 2.0),
    *,
    controller: ArrayLike | Policy | None = None,
    process_noise: ArrayLike = 0.05,
    sensor_noise: float | Sequence[float] | torch.Tensor = 0.3,
    seed: int = 0,
) -> IslandData:
    """Simulates the island sampled every ``dt`` (ZOH, Van Loan for the noise).

    With ``h_k`` the state at ``t_k = k·dt`` (``h_0 = h0``)::

        y_k = C h_k + v_k,     h_{k+1} = A_d h_k + B_d u_k + w_k

    ``controller``: None (u = 0, the cycle grows), a gain K (1, 2) or (2,)
    applied to the *true* state, ``u_k = −K h_k`` (full-state feedback held over
    each step), or a callable ``policy(y_k) -> u_k`` that sees only the noisy
    sensors (it may keep its own state, e.g. a Kalman filter, to act on an
    estimate). ``process_noise`` is a spectral density (scalar q: Q = q·I, or a
    (2, 2) matrix), ``sensor_noise`` the standard deviation of each sensor
    (one or four numbers); zero turns either off. ``seed`` fixes the noise.
    """
    sys = island_system(process_noise=process_noise, sensor_noise=sensor_noise).discretize(dt)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ShapeError(f"steps must be a positive integer; got {steps!r}")
    h = as_tensor("h0", h0)
    if tuple(h.shape) != (sys.n,):
        raise ShapeError(f"h0 must have shape ({sys.n},) (fish, pelicans); got {tuple(h.shape)}")
    gain: torch.Tensor | None = None
    policy: Policy | None = None
    if callable(controller):
        policy = controller
    elif controller is not None:
        gain = as_tensor("controller", controller)
        if gain.dim() == 1:
            gain = gain[None, :]
        if tuple(gain.shape) != (sys.m, sys.n):
            raise ShapeError(
                f"controller gain K must have shape ({sys.m}, {sys.n}) or ({sys.n},);"
                f" got {tuple(gain.shape)}"
            )
    gen = torch.Generator().manual_seed(int(seed))
    w, v = sys.sample_noise(steps, generator=gen)  # (T, 2), (T, 4)
    states = torch.empty(steps, sys.n, dtype=torch.float64)
    sensors = torch.empty(steps, sys.p, dtype=torch.float64)
    inputs = torch.zeros(steps, sys.m, dtype=torch.float64)
    for k in range(steps):
        states[k] = h
        sensors[k] = sys.C @ h + v[k]  # D = 0: the reading does not depend on u_k
        if gain is not None:
            inputs[k] = -(gain @ h)
        elif policy is not None:
            u = as_tensor("policy output", policy(sensors[k].clone())).reshape(-1)
            if u.shape[0] != sys.m:
                raise ShapeError(f"policy must return {sys.m} input value(s); got {u.shape[0]}")
            inputs[k] = u
        h = sys.A @ h + sys.B @ inputs[k] + w[k]
    t = torch.arange(steps, dtype=torch.float64) * sys.dt
    return IslandData(t=t, states=states, sensors=sensors, inputs=inputs, system=sys)
