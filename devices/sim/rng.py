"""Counter-based random numbers: a value is a pure function of (seed, twin, step, purpose).

The world never draws from a shared generator. Each twin has a 64-bit key made from the
run's seed and the CRC-32 of its id; the number for a step is SplitMix64's output for the
counter `key + step * GAMMA`. So a run is the same bit for bit whatever the number of
threads, the order in which meters are visited, or which other twins exist.
"""

from __future__ import annotations

import zlib

import numpy as np
from numba import njit

GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0  # 2**-53

#: Purposes: separate streams for the same twin, so drawing one never shifts another.
NOISE, DAILY, SIZE, WATER, INJECT, PREPAID = 1, 2, 3, 4, 5, 6


@njit(cache=True, nogil=True, inline="always")
def mix64(x: np.uint64) -> np.uint64:
    """SplitMix64's finaliser: a bijection of 64-bit words with full avalanche."""
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@njit(cache=True, nogil=True, inline="always")
def uniform(key: np.uint64, counter: np.uint64) -> float:
    """A uniform float in [0, 1) for (key, counter)."""
    return float(mix64(key + counter * GAMMA) >> _S11) * _INV53


@njit(cache=True, nogil=True, inline="always")
def normal(key: np.uint64, counter: np.uint64) -> float:
    """A standard normal for (key, counter), by Box-Muller on two counters."""
    c = counter * np.uint64(2)
    u1 = uniform(key, c)
    u2 = uniform(key, c + np.uint64(1))
    return np.sqrt(-2.0 * np.log(1.0 - u1)) * np.cos(2.0 * np.pi * u2)


def twin_keys(ids: list[str], seed: int, purpose: int) -> np.ndarray:
    """One uint64 key per twin id for a seed and a purpose (NOISE, DAILY, ...)."""
    base = np.array([zlib.crc32(i.encode()) for i in ids], dtype=np.uint64)
    return _keys(base, np.uint64(seed & 0xFFFFFFFFFFFFFFFF), np.uint64(purpose))


@njit(cache=True, nogil=True)
def _keys(base: np.ndarray, seed: np.uint64, purpose: np.uint64) -> np.ndarray:
    out = np.empty(base.size, dtype=np.uint64)
    s = mix64(seed + purpose * GAMMA)
    for i in range(base.size):
        out[i] = mix64(s ^ (base[i] << np.uint64(20)) ^ purpose)
    return out


def key_for(text: str, seed: int, purpose: int) -> np.uint64:
    """One key for a named thing (an injection, a building), like `twin_keys`."""
    return twin_keys([text], seed, purpose)[0]
