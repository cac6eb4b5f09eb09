"""The simulation kernels against plain-numpy references, and the random streams."""

from __future__ import annotations

import numpy as np

from devices.sim import kernels, profiles
from devices.sim.rng import NOISE, twin_keys, uniform

GAMMA = np.uint64(0x9E3779B97F4A7C15)


def np_uniform(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """SplitMix64 in numpy: keys [n, 1] x counters [k] -> uniforms [n, k]."""
    with np.errstate(over="ignore"):
        x = keys[:, None] + counters[None, :].astype(np.uint64) * GAMMA
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def fleet(n: int = 500, seed: int = 3):
    keys = twin_keys([f"B01-{i:04d}.em" for i in range(n)], seed, NOISE)
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 3, n).astype(np.int64)
    shape = rng.uniform(0.2, 2.0, (3, 1440))
    return keys, cls, shape, rng


def test_uniform_matches_numpy_splitmix_and_is_uniform():
    """The kernel's uniform is SplitMix64 of key + counter x gamma, and its values fill
    [0, 1) evenly."""
    keys, *_ = fleet(200)
    counters = np.arange(300, dtype=np.uint64)
    ref = np_uniform(keys, counters)
    got = np.array([[uniform(k, c) for c in counters] for k in keys[:20]])
    np.testing.assert_array_equal(got, ref[:20])
    hist, _ = np.histogram(ref, bins=10, range=(0, 1))
    assert hist.min() > 0.9 * ref.size / 10


def test_electric_kernel_matches_numpy_reference():
    """advance_electric equals power = mean x shape x (0.3 + 1.4 u) summed over steps,
    with an open relay drawing nothing."""
    keys, cls, shape, rng = fleet()
    mean_kw = rng.uniform(0.1, 0.6, keys.size)
    on = (rng.random(keys.size) > 0.1).astype(np.int8)
    acc, power = np.zeros(keys.size), np.zeros(keys.size)
    k0, k1, step0, dt_h = 600, 615, 14400, 1 / 60
    kernels.advance_electric(keys, cls, mean_kw, on, shape, k0, k1, step0, dt_h, acc, power)
    u = np_uniform(keys, np.arange(step0 + k0, step0 + k1))
    p = mean_kw[:, None] * shape[cls][:, k0:k1] * (0.3 + 1.4 * u)
    expected = np.where(on == 1, p.sum(axis=1) * dt_h, 0.0)
    np.testing.assert_allclose(acc, expected, rtol=1e-12)
    np.testing.assert_allclose(power, np.where(on == 1, p[:, -1], 0.0), rtol=1e-12)


def test_water_kernel_matches_numpy_reference():
    """advance_water: a draw when u < rate (volume 2 x mean x u / rate), rate x mean x
    (0.5 + u) when rate >= 1, plus the leak; a closed valve stops everything."""
    keys, cls, shape, rng = fleet()
    draws = rng.uniform(0.0, 0.8, keys.size)
    flowing = (rng.random(keys.size) > 0.1).astype(np.int8)
    leak = np.where(rng.random(keys.size) > 0.9, 0.0003, 0.0)
    acc = np.zeros(keys.size)
    k0, k1, step0, draw = 400, 415, 2880, 0.006
    kernels.advance_water(keys, cls, draws, flowing, leak, shape, k0, k1, step0, draw, acc)
    u = np_uniform(keys, np.arange(step0 + k0, step0 + k1))
    rate = draws[:, None] * shape[cls][:, k0:k1]
    vol = np.where(rate >= 1.0, rate * draw * (0.5 + u),
                   np.where(u < rate, 2.0 * draw * u / np.maximum(rate, 1e-300), 0.0))
    expected = np.where(flowing == 1, vol.sum(axis=1) + leak * (k1 - k0), 0.0)
    np.testing.assert_allclose(acc, expected, rtol=1e-12)


def test_elevator_and_shared_kernels_match_numpy_reference():
    """Elevators: standby plus trips (whole part of the rate plus one with the remainder's
    probability) x energy per trip. Shared circuits: power in scheduled steps, kept by
    `duty`, or in every step when a fault holds them on."""
    keys, _, _, rng = fleet(40)
    rate = rng.uniform(0.0, 1.6, keys.size)
    trip_kwh, standby = rng.uniform(0.04, 0.08, keys.size), rng.uniform(0.1, 0.3, keys.size)
    shape = rng.uniform(0.2, 2.0, 1440)
    acc, trips = np.zeros(keys.size), np.zeros(keys.size, dtype=np.int64)
    kernels.advance_elevators(keys, rate, trip_kwh, standby, shape, 10, 70, 0, 1 / 60, acc, trips)
    u = np_uniform(keys, np.arange(10, 70))
    r = rate[:, None] * shape[None, 10:70]
    n = np.floor(r) + (u < r - np.floor(r))
    np.testing.assert_array_equal(trips, n.sum(axis=1))
    np.testing.assert_allclose(acc, standby * 60 / 60 + n.sum(axis=1) * trip_kwh, rtol=1e-12)

    power, duty = rng.uniform(0.5, 5.0, keys.size), np.where(rng.random(keys.size) > 0.5, 1.0, 0.3)
    scheduled = (rng.random((keys.size, 1440)) > 0.5).astype(np.int8)
    always = (rng.random(keys.size) > 0.8).astype(np.int8)
    acc, on = np.zeros(keys.size), np.zeros(keys.size, dtype=np.int8)
    kernels.advance_shared(keys, power, duty, scheduled, always, 0, 100, 0, 1 / 60, acc, on)
    u = np_uniform(keys, np.arange(0, 100))
    in_schedule = (scheduled[:, :100] == 1) | (always[:, None] == 1)
    active = in_schedule & ((duty[:, None] >= 1) | (u < duty[:, None]))
    np.testing.assert_allclose(acc, active.sum(axis=1) * power / 60, rtol=1e-12)
    np.testing.assert_array_equal(on, active[:, -1])


def test_profiles_are_normalised_and_shaped():
    """Electricity shapes average 1.0 over a 5+2 week; the household peak falls in
    19:00-22:00 and its night minimum is under 40% of the peak."""
    for shape in profiles.ELECTRIC.values():
        assert abs((5 * shape[0].mean() + 2 * shape[1].mean()) / 7 - 1.0) < 1e-12
    household = profiles.ELECTRIC["household"][0]
    assert 19 * 60 <= int(np.argmax(household)) < 22 * 60
    assert household[: 6 * 60].min() / household.max() < 0.4
