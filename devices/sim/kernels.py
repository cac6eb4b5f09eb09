"""Numba kernels that advance the whole simulated fleet by a run of steps.

Every kernel takes typed arrays, loops over twins in parallel, and draws its randomness
from `devices.sim.rng` keyed by (twin key, global step), so the result of a twin does not
depend on threads or on other twins. Energy accumulates per twin into `acc` (kWh or m3);
the world empties `acc` into the interval matrix at each interval boundary.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from devices.sim.rng import uniform


@njit(cache=True, nogil=True, parallel=True)
def advance_electric(
    keys: np.ndarray,  # uint64 [n]
    cls: np.ndarray,  # int64 [n] profile class
    mean_kw: np.ndarray,  # float64 [n] today's mean power (size x daily factor)
    on: np.ndarray,  # int8 [n] 1 while the relay is closed
    shape: np.ndarray,  # float64 [n_classes, steps_of_day]
    k0: int,
    k1: int,  # steps [k0, k1) of the day
    step0: int,  # global index of the day's first step
    dt_h: float,  # hours per step
    acc: np.ndarray,  # float64 [n] energy this interval, kWh (added to)
    power_kw: np.ndarray,  # float64 [n] power of the last step (written)
) -> None:
    """Household electricity: expected power times a per-minute appliance factor in
    [0.3, 1.7) (mean 1). An open relay draws nothing."""
    for m in prange(keys.size):
        if on[m] == 0:
            power_kw[m] = 0.0
            continue
        key = keys[m]
        c = cls[m]
        a = mean_kw[m]
        e = 0.0
        p = 0.0
        for k in range(k0, k1):
            u = uniform(key, np.uint64(step0 + k))
            p = a * shape[c, k] * (0.3 + 1.4 * u)
            e += p
        acc[m] += e * dt_h
        power_kw[m] = p


@njit(cache=True, nogil=True, parallel=True)
def advance_water(
    keys: np.ndarray,  # uint64 [n]
    cls: np.ndarray,  # int64 [n]
    draws: np.ndarray,  # float64 [n] today's expected draws per step at shape 1.0
    flowing: np.ndarray,  # int8 [n] 1 while water can flow (valve open or stuck open)
    leak_m3: np.ndarray,  # float64 [n] leak volume per step, m3
    shape: np.ndarray,  # float64 [n_classes, steps_of_day]
    k0: int,
    k1: int,
    step0: int,
    draw_m3: float,  # mean volume of one draw, m3
    acc: np.ndarray,  # float64 [n] volume this interval, m3 (added to)
) -> None:
    """Water draws: in each step a draw happens with probability rate (rate = draws x
    shape; above 1 the step draws rate x mean volume, scaled by a factor in [0.5, 1.5));
    a draw's volume is uniform in [0, 2 x mean). Leaks add a constant flow. A closed
    valve stops both."""
    for m in prange(keys.size):
        if flowing[m] == 0:
            continue
        key = keys[m]
        c = cls[m]
        d = draws[m]
        v = 0.0
        for k in range(k0, k1):
            rate = d * shape[c, k]
            u = uniform(key, np.uint64(step0 + k))
            if rate >= 1.0:
                v += rate * draw_m3 * (0.5 + u)
            elif u < rate:
                v += 2.0 * draw_m3 * (u / rate)
        acc[m] += v + leak_m3[m] * (k1 - k0)


@njit(cache=True, nogil=True)
def advance_elevators(
    keys: np.ndarray,  # uint64 [n]
    trips_per_step: np.ndarray,  # float64 [n] today's mean trips per step at shape 1.0
    trip_kwh: np.ndarray,  # float64 [n] energy of one trip now (drift included)
    standby_kw: np.ndarray,  # float64 [n]
    shape: np.ndarray,  # float64 [steps_of_day]
    k0: int,
    k1: int,
    step0: int,
    dt_h: float,
    acc: np.ndarray,  # float64 [n] kWh (added to)
    trips: np.ndarray,  # int64 [n] trip counter (added to)
) -> None:
    """Elevators: standby power plus a trip per step with probability rate (rate above 1:
    that many trips, rounded down, plus one more with the remainder's probability)."""
    for m in range(keys.size):
        key = keys[m]
        e = standby_kw[m] * dt_h * (k1 - k0)
        for k in range(k0, k1):
            rate = trips_per_step[m] * shape[k]
            whole = int(rate)
            n = whole + (1 if uniform(key, np.uint64(step0 + k)) < rate - whole else 0)
            trips[m] += n
            e += n * trip_kwh[m]
        acc[m] += e


@njit(cache=True, nogil=True)
def advance_shared(
    keys: np.ndarray,  # uint64 [n]
    power_kw: np.ndarray,  # float64 [n] power when drawing
    duty: np.ndarray,  # float64 [n] share of scheduled steps it draws
    scheduled: np.ndarray,  # int8 [n, steps_of_day] 1 inside the schedule
    always_on: np.ndarray,  # int8 [n] 1 while a fault keeps it on outside the schedule
    k0: int,
    k1: int,
    step0: int,
    dt_h: float,
    acc: np.ndarray,  # float64 [n] kWh (added to)
    is_on: np.ndarray,  # int8 [n] on in the last step (written)
) -> None:
    """Shared circuits: on inside their schedule (or always, under a fault), drawing
    their power in a share `duty` of those steps (pumps cycle; lights have duty 1)."""
    for m in range(keys.size):
        key = keys[m]
        e = 0.0
        state = 0
        for k in range(k0, k1):
            state = 0
            if scheduled[m, k] == 1 or always_on[m] == 1:
                if duty[m] >= 1.0 or uniform(key, np.uint64(step0 + k)) < duty[m]:
                    state = 1
                    e += power_kw[m] * dt_h
        acc[m] += e
        is_on[m] = state


@njit(cache=True, nogil=True, parallel=True)
def ceiling_loop(
    mean_kw: np.ndarray, shape: np.ndarray, cls: np.ndarray, k0: int, k1: int,
    dt_h: float, acc: np.ndarray,
) -> None:
    """The bare loop over the same arrays with no randomness and no state: the ceiling
    the electric kernel is measured against in bench/."""
    for m in prange(mean_kw.size):
        c = cls[m]
        a = mean_kw[m]
        e = 0.0
        for k in range(k0, k1):
            e += a * shape[c, k]
        acc[m] += e * dt_h
