"""Theft kernels for localising a master's unexplained energy and for the room's water as
a witness of the day's occupancy: per meter-day values from one pass over the readings.

`balance_block_z`: a flat that hides a share of its load (h1, bypass, h3) leaves a copy of
its own interval-to-interval moves in its master's unexplained energy (the residual of
`twin.kernels.theft.balance_residual`). The day is cut into `n_blocks` blocks of local
time (3 hours at 15 minutes); in each block the correlation of first differences (meter
against residual) becomes a Fisher z, `atanh(r) * sqrt(pairs - 3)` (about N(0, 1) for a
meter whose moves are its own), leaving out the block's one most contrary pair (the
largest negative dx * dr), and the day's value is the best standardised sum over the last
1, 2, 4 ... `n_blocks` blocks of the day: `sum(z) / sqrt(blocks)`.
Why: a single pair of readings can own a day's correlation. In the interval a theft
starts the meter falls as the residual rises by the same energy (and the reverse when it
ends): a move against the pattern, larger than every later move of a meter that hides 80%
of its load. Leaving out each block's most contrary pair removes it, and blocks keep any
other odd pair to one block. Windows end at the day's end because a theft that starts in
the evening is a few blocks of the day, which a whole-day sum would bury.

Onset evidence (`onset`): on the first day of a theft that begins in the day's last
block (the last 3 hours), too few pairs follow the start for a correlation, but the start
itself is plain: in the block's most contrary pair the reading falls and the residual
rises by about the same energy, and that rise is most of the residual's movement in the
block, and the block's other pairs agree (its Fisher z is positive). The value is (that
pair's dr^2 / the block's sum of dr^2) * sqrt(min(dx^2, dr^2) / max(dx^2, dr^2)), in
[0, 1]; 0 otherwise. A neighbour whose reading happened to fall by as much in the same
quarter hour matches too; the agreement of the other pairs halves those.

`row_day_totals`: each listed row's energy (or volume) per local day; NaN for a day with
a missing reading (a partial total would read as a fall).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

#: Fewest pairs of readings per block (hourly data gets 2 blocks, daily none).
MIN_PAIRS_PER_BLOCK = 12
#: Most blocks per day (3 hours each at 15 minutes).
MAX_BLOCKS = 8
#: Correlations are clipped to this before atanh, so one block cannot say more than
#: atanh(0.99) * sqrt(pairs - 3) (about 8 at 15 minutes).
R_CLIP = 0.99


def blocks_per_day(n_slots: int) -> int:
    """Blocks a day is cut into: as many as keep `MIN_PAIRS_PER_BLOCK` pairs in each, at
    most `MAX_BLOCKS`, a power of two (0: too few readings a day to localise)."""
    n = 1
    while n * 2 <= MAX_BLOCKS and n_slots // (n * 2) >= MIN_PAIRS_PER_BLOCK:
        n *= 2
    return n if n_slots >= MIN_PAIRS_PER_BLOCK else 0


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
def _pair_sums(row: np.ndarray, res: np.ndarray, lo: int, hi: int) -> tuple[float, float, float, float, float, int]:
    """Over t in [lo, hi), lo >= 1, of the first differences dx = row[t] - row[t - 1] and
    dr = res[t] - res[t - 1] where all four readings are known: (pairs, sum dx*dr, dx*dx,
    dr*dr, the most negative dx*dr or 0, its t or -1). Branch-free."""
    n = sxy = sxx = syy = 0.0
    worst = 0.0
    at = -1
    for t in range(lo, hi):
        dx = np.float64(row[t]) - np.float64(row[t - 1])
        dr = res[t] - res[t - 1]
        ok = (dx == dx) & (dr == dr)
        cx = dx if ok else 0.0
        cr = dr if ok else 0.0
        n += 1.0 if ok else 0.0
        p = cx * cr
        sxy += p
        sxx += cx * cx
        syy += cr * cr
        at = t if p < worst else at
        worst = min(worst, p)
    return n, sxy, sxx, syy, worst, at


@njit(cache=True, nogil=True)
def _add_run(row: np.ndarray, res: np.ndarray, lo: int, hi: int, sums: np.ndarray, b: int) -> None:
    """Add the pairs of [lo, hi) to block b's sums (see balance_block_z; indexed in place,
    no view per call)."""
    n, sxy, sxx, syy, worst, at = _pair_sums(row, res, lo, hi)
    sums[b, 0] += n
    sums[b, 1] += sxy
    sums[b, 2] += sxx
    sums[b, 3] += syy
    if worst < sums[b, 4]:
        dx = np.float64(row[at]) - np.float64(row[at - 1])
        dr = res[at] - res[at - 1]
        sums[b, 4] = worst
        sums[b, 5] = dx * dx
        sums[b, 6] = dr * dr
        sums[b, 7] = dr


@njit(cache=True, nogil=True)
def _fisher(n: float, sxy: float, sxx: float, syy: float) -> float:
    """Fisher z of the block's correlation times sqrt(pairs - 3); 0 (no evidence) when a
    side did not move or the block is too short."""
    if n <= 3.0 or sxx <= 0.0 or syy <= 0.0:
        return 0.0
    r = sxy / np.sqrt(sxx * syy)
    r = min(max(r, -R_CLIP), R_CLIP)
    return 0.5 * np.log((1.0 + r) / (1.0 - r)) * np.sqrt(n - 3.0)  # atanh(r), cheaper


def block_of_interval(slot: np.ndarray, n_slots: int, n_blocks: int) -> np.ndarray:
    """int64 [intervals]: the block of its local day each interval falls in."""
    return (slot * max(n_blocks, 1) // n_slots).astype(np.int64)


@njit(cache=True, nogil=True, parallel=True)
def balance_block_z(
    matrix: np.ndarray,  # float32 [columns, intervals]
    meters: np.ndarray,  # int64 [meters]: columns to score
    residual_row: np.ndarray,  # int64 [meters]: row of `residual` of each meter's master, -1 none
    residual: np.ndarray,  # float64 [masters, intervals]: the masters' unexplained energy
    day_bounds: np.ndarray,  # int64 [days + 1]
    block: np.ndarray,  # int64 [intervals]: block_of_interval
    n_blocks: int,  # blocks_per_day(n_slots); 0: NaN everywhere
    out: np.ndarray,  # float64 [meters, days] out: best standardised block sum; NaN without a master
    onset: np.ndarray,  # float64 [meters, days] out: onset evidence (last block); NaN without a master
) -> None:
    """Per meter and day, the balance localisation and the onset evidence of the module
    docstring. The pair (last reading of day d - 1, first of day d) belongs to day d's
    first block."""
    n_rows = meters.shape[0]
    n_days = day_bounds.shape[0] - 1
    regular = np.zeros(n_days, dtype=np.bool_)  # whole days whose blocks are runs in order
    for d in range(n_days):
        a = day_bounds[d]
        n = day_bounds[d + 1] - a
        ok = n > 0
        for t in range(a, a + n):
            ok = ok and block[t] == (t - a) * n_blocks // n
        regular[d] = ok
    chunk = 16  # meters per task, sharing its buffers
    for c in prange((n_rows + chunk - 1) // chunk):
        # per block: pairs, dx*dr, dx*dx, dr*dr, and the most negative dx*dr with its dx*dx, dr*dr, dr
        sums = np.zeros((max(n_blocks, 1), 8))
        fz = np.zeros(max(n_blocks, 1))
        for j in range(c * chunk, min(n_rows, (c + 1) * chunk)):
            _meter_days(matrix[meters[j]], residual, residual_row[j], day_bounds, block, regular, n_blocks, sums,
                        fz, out[j], onset[j])


@njit(cache=True, nogil=True)
def _meter_days(row: np.ndarray, residual: np.ndarray, g: int, day_bounds: np.ndarray, block: np.ndarray,
                regular: np.ndarray, n_blocks: int, sums: np.ndarray, fz: np.ndarray, out: np.ndarray,
                onset: np.ndarray) -> None:
    """balance_block_z for one meter (row) into its out and onset rows."""
    n_days = day_bounds.shape[0] - 1
    if g < 0 or n_blocks <= 0:
        out[:] = np.nan
        onset[:] = np.nan
        return
    res = residual[g]
    for d in range(n_days):
        a = day_bounds[d]
        b_end = day_bounds[d + 1]
        sums[:, :] = 0.0
        if regular[d]:  # block b is slots ceil(b * n / n_blocks) .. of the day: no lookups
            n = b_end - a
            for b in range(n_blocks):
                lo = max(a + (b * n + n_blocks - 1) // n_blocks, 1)
                hi = a + ((b + 1) * n + n_blocks - 1) // n_blocks
                _add_run(row, res, lo, hi, sums, b)
        else:
            t = max(a, 1)  # the first reading of the history has no pair
            while t < b_end:  # one run of intervals of the same block at a time
                b = block[t]
                e = t + 1
                while e < b_end and block[e] == b:
                    e += 1
                _add_run(row, res, t, e, sums, b)
                t = e
        for b in range(n_blocks):
            if sums[b, 4] < 0.0:  # leave out the block's most contrary pair
                fz[b] = _fisher(sums[b, 0] - 1.0, sums[b, 1] - sums[b, 4], sums[b, 2] - sums[b, 5],
                                sums[b, 3] - sums[b, 6])
            else:
                fz[b] = _fisher(sums[b, 0], sums[b, 1], sums[b, 2], sums[b, 3])
        best = -np.inf
        acc = 0.0
        length = 0
        target = 1
        for b in range(n_blocks - 1, -1, -1):  # windows of the last 1, 2, 4 ... blocks
            acc += fz[b]
            length += 1
            if length == target:
                best = max(best, acc / np.sqrt(length))
                target *= 2
        out[d] = best
        last = n_blocks - 1
        onset[d] = 0.0
        if sums[last, 4] < 0.0 and sums[last, 7] > 0.0 and sums[last, 3] > 0.0 and fz[last] > 0.0:
            # the reading fell as the residual rose, and the block's other moves agree
            w_xx = sums[last, 5]
            w_yy = sums[last, 6]
            onset[d] = w_yy / sums[last, 3] * np.sqrt(min(w_xx, w_yy) / max(w_xx, w_yy))


@njit(cache=True, nogil=True, parallel=True, fastmath={"reassoc", "contract", "nsz"})
def row_day_totals(
    matrix: np.ndarray,  # float32 [columns, intervals]
    rows: np.ndarray,  # int64 [n]: columns to total
    day_bounds: np.ndarray,  # int64 [days + 1]
    out: np.ndarray,  # float64 [n, days] out: the day's sum; NaN when a reading is missing
) -> None:
    """Per listed row and local day, the sum of its readings (NaN if any is missing)."""
    n_days = day_bounds.shape[0] - 1
    for i in prange(rows.shape[0]):
        row = matrix[rows[i]]
        for d in range(n_days):
            s = np.float32(0.0)  # a day's readings in float32: relative error ~1e-6, and it vectorises
            for t in range(day_bounds[d], day_bounds[d + 1]):
                s += row[t]  # NaN propagates: a partial day is no total
            out[i, d] = s


__all__ = ["MAX_BLOCKS", "MIN_PAIRS_PER_BLOCK", "R_CLIP", "balance_block_z", "block_of_interval", "blocks_per_day",
           "row_day_totals"]
