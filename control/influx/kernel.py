"""The line-building kernel: one interval row of readings to line-protocol bytes, in Numba,
without the GIL (the sender posts the previous batch meanwhile).

Each column's line up to its value (measurement, tags, field key and '=') is given as one
byte buffer with offsets; the kernel appends the value with 9 significant digits (enough
for any float32 to read back exactly), the time, and a newline, for every finite reading.
The value's text follows Python's ``format(v, ".9g")`` (positional for exponents -4..8,
else ``d.ddde+XX``); the ninth digit is rounded after one float64 multiplication or division
by an exact power of ten, which matched Python on 400,000 test values; where powers of ten
are inexact (below 1e-14) a last digit may differ, never by enough to change the float32
it reads back as. `ReadingLines.build` in lines.py is the plain-Python reference.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Bytes a value can take at most: sign, 9 digits, point, 'e', sign, 3 exponent digits.
VALUE_BYTES = 17


@njit(cache=True, nogil=True)
def _digits(out: np.ndarray, pos: int, number: int, width: int) -> int:
    """Write `number` with exactly `width` digits at `pos`; the new position."""
    for k in range(width - 1, -1, -1):
        out[pos + k] = 48 + number % 10
        number //= 10
    return pos + width


@njit(cache=True, nogil=True)
def _scaled(v: float, e: int) -> int:
    """round(v * 10**(8 - e)), multiplying or dividing by an exact power of ten (one
    rounding, so ties like 2050.421875 round half to even as Python does)."""
    if e <= 8:
        return int(np.rint(v * 10.0 ** (8 - e)))
    return int(np.rint(v / 10.0 ** (e - 8)))


@njit(cache=True, nogil=True)
def format_value(out: np.ndarray, pos: int, v: float, digits: np.ndarray) -> int:
    """Write `v` (finite) like format(v, '.9g') at `pos`; the new position. `digits` is
    scratch space of 9 bytes."""
    if v == 0.0:
        out[pos] = 48
        return pos + 1
    if v < 0:
        out[pos] = 45  # '-'
        pos += 1
        v = -v
    e = int(np.floor(np.log10(v)))
    m = _scaled(v, e)
    if m >= 1_000_000_000:
        e += 1
        m = _scaled(v, e)
    elif m < 100_000_000:
        e -= 1
        m = _scaled(v, e)
    if m >= 1_000_000_000:  # rounding carried into a tenth digit
        m //= 10
        e += 1
    k = 9
    while m % 10 == 0 and k > 1:  # strip trailing zeros
        m //= 10
        k -= 1
    _digits(digits, 0, m, k)
    if -4 <= e < 9:
        if e >= 0:
            for i in range(e + 1):
                out[pos] = digits[i] if i < k else 48
                pos += 1
            if k > e + 1:
                out[pos] = 46  # '.'
                pos += 1
                for i in range(e + 1, k):
                    out[pos] = digits[i]
                    pos += 1
        else:
            out[pos] = 48
            out[pos + 1] = 46
            pos += 2
            for _ in range(-e - 1):
                out[pos] = 48
                pos += 1
            for i in range(k):
                out[pos] = digits[i]
                pos += 1
        return pos
    out[pos] = digits[0]
    pos += 1
    if k > 1:
        out[pos] = 46
        pos += 1
        for i in range(1, k):
            out[pos] = digits[i]
            pos += 1
    out[pos] = 101  # 'e'
    out[pos + 1] = 45 if e < 0 else 43
    pos += 2
    e = -e if e < 0 else e
    return _digits(out, pos, e, 3 if e >= 100 else 2)


@njit(cache=True, nogil=True)
def build_row(prefixes: np.ndarray, offsets: np.ndarray, row: np.ndarray, stamp: np.ndarray,
              out: np.ndarray) -> tuple[int, int]:
    """Lines for the finite values of `row` into `out`, the last without its newline:
    (bytes used, lines). `out` holds at least len(prefixes) + len(row) * (VALUE_BYTES +
    len(stamp) + 1) bytes."""
    pos = 0
    lines = 0
    digits = np.empty(9, dtype=np.uint8)
    n_stamp = stamp.shape[0]
    for i in range(row.shape[0]):
        v = np.float64(row[i])
        if not np.isfinite(v):
            continue
        if lines:
            out[pos] = 10
            pos += 1
        a, b = offsets[i], offsets[i + 1]
        out[pos:pos + b - a] = prefixes[a:b]
        pos += b - a
        pos = format_value(out, pos, v, digits)
        out[pos:pos + n_stamp] = stamp
        pos += n_stamp
        lines += 1
    return pos, lines
