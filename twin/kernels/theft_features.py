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

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from twin.kernels.simd import transpose4

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


#: Meters of one master scored side by side: the pair loop runs across them (SIMD lanes),
#: each difference of the master's residual serving them all.
LANES = 16
#: Pairs per block of a whole day at 15 minutes (96 readings, 8 blocks): its fast path.
BLOCK_PAIRS = 12
#: Per block and lane: pairs, sum dx*dr, dx*dx, dr*dr, and the most contrary pair's dx and
#: dr (the first pair with the most negative dx*dr; 0 and 0 while none is negative).
_N, _XY, _XX, _YY, _WX, _WR = range(6)
_FIELDS = 6


def _bit_cast(to: ir.Type, signature: object) -> tuple:
    """A numba intrinsic's (signature, codegen) reinterpreting a value's 64 bits as `to`."""
    def codegen(context: object, builder: ir.IRBuilder, sig: object, args: list) -> ir.Value:
        return builder.bitcast(args[0], to)
    return signature, codegen


#: The IEEE 754 bits of a float64 as an int64, and back (bit casts, no conversion).
_bits: Any = intrinsic(lambda typingctx, x: _bit_cast(ir.IntType(64), types.int64(types.float64)))
_from_bits: Any = intrinsic(lambda typingctx, x: _bit_cast(ir.DoubleType(), types.float64(types.int64)))


# fdlibm's __ieee754_log (error below 1 ulp), written without branches so that a loop of
# them vectorises (the C library's log is a call per value)
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01


@njit(cache=True, nogil=True, error_model="numpy")
def _log(x: float) -> float:
    """log(x) for a positive normal float64 x (fdlibm's method: x = 2^k (1 + f) with 1 + f
    in [sqrt(2)/2, sqrt(2)), then log(1 + f) from s = f / (2 + f) by a polynomial in s^2)."""
    bits = _bits(x)
    hx = bits >> 32
    k = (hx >> 20) - 1023
    hx &= 0x000FFFFF
    i = (hx + 0x95F64) & 0x100000  # 1 + f above sqrt(2): halve it
    f = _from_bits(((hx | (i ^ 0x3FF00000)) << 32) | (bits & 0xFFFFFFFF)) - 1.0
    dk = np.float64(k + (i >> 20))
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    r = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7))) + w * (_LG2 + w * (_LG4 + w * _LG6))
    hfsq = 0.5 * f * f
    far = dk * _LN2_HI - ((hfsq - (s * (hfsq + r) + dk * _LN2_LO)) - f)
    near = dk * _LN2_HI - ((s * (f - r) - dk * _LN2_LO) - f)
    return far if ((hx - 0x6147A) | (0x6B851 - hx)) > 0 else near


def block_of_interval(slot: np.ndarray, n_slots: int, n_blocks: int) -> np.ndarray:
    """int64 [intervals]: the block of its local day each interval falls in."""
    return (slot * max(n_blocks, 1) // n_slots).astype(np.int64)


@njit(cache=True, nogil=True)
def _lane_tasks(residual_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The meters with a master, ordered by master (stable), and the start of each task in
    that order: at most LANES meters of one master (the last entry is the end)."""
    n = 0
    for j in range(residual_row.shape[0]):
        n += residual_row[j] >= 0
    order = np.argsort(residual_row, kind="mergesort")[residual_row.shape[0] - n:]
    starts = np.empty(n + 1, dtype=np.int64)
    k = 0
    for i in range(n):
        if i == 0 or residual_row[order[i]] != residual_row[order[i - 1]] or i - starts[k - 1] == LANES:
            starts[k] = i
            k += 1
    starts[k] = n
    return order, starts[:k + 1]


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
    first block. Meters of one master are scored LANES at a time (see _lanes_days)."""
    n_days = day_bounds.shape[0] - 1
    for j in range(meters.shape[0]):
        if residual_row[j] < 0 or n_blocks <= 0:
            out[j, :] = np.nan
            onset[j, :] = np.nan
    if n_blocks <= 0 or n_days == 0:
        return
    order, starts = _lane_tasks(residual_row)
    most = 1
    for d in range(n_days):
        most = max(most, day_bounds[d + 1] - day_bounds[d])
    per_task = 4  # tasks per parallel iteration, sharing its buffers
    n_tasks = starts.shape[0] - 1
    for c in prange((n_tasks + per_task - 1) // per_task):
        dx = np.empty(most * LANES)
        by_lane = np.empty(LANES * most)  # the differences lane by lane, before transposing into dx
        sums = np.empty(n_blocks * _FIELDS * LANES)
        dr = np.empty(most)
        fz = np.empty((n_blocks, LANES))
        day_out = np.empty((2, LANES))
        for task in range(c * per_task, min(n_tasks, (c + 1) * per_task)):
            lanes = order[starts[task]:starts[task + 1]]
            _lanes_days(matrix, meters, lanes, residual[residual_row[lanes[0]]], day_bounds, block, n_blocks, dx,
                        by_lane, most, sums, dr, fz, day_out, out, onset)


@njit(cache=True, nogil=True)
def _even_blocks(dx: np.ndarray, dr: np.ndarray, n_blocks: int, sums: np.ndarray) -> None:
    """The block sums of a day whose blocks are BLOCK_PAIRS pairs each, in order (every
    whole day at 15 minutes): the pairs of a block unrolled, the lanes vectorised, the sums
    in registers (one store per block and field)."""
    for b in range(n_blocks):
        x = dx[b * BLOCK_PAIRS * LANES:(b + 1) * BLOCK_PAIRS * LANES]
        r = dr[b * BLOCK_PAIRS:(b + 1) * BLOCK_PAIRS]
        s = sums[b * _FIELDS * LANES:(b + 1) * _FIELDS * LANES]
        for lane in range(LANES):
            pairs = sxy = sxx = syy = wx = wr = 0.0
            for k in range(BLOCK_PAIRS):
                xk = x[k * LANES + lane]
                ok = (xk == xk) & (r[k] == r[k])
                cx = xk if ok else 0.0
                cr = r[k] if ok else 0.0
                p = cx * cr
                pairs += 1.0 if ok else 0.0
                sxy += p
                sxx += cx * cx
                syy += cr * cr
                take = p < wx * wr  # the first most negative p
                wx = cx if take else wx
                wr = cr if take else wr
            s[_N * LANES + lane] = pairs
            s[_XY * LANES + lane] = sxy
            s[_XX * LANES + lane] = sxx
            s[_YY * LANES + lane] = syy
            s[_WX * LANES + lane] = wx
            s[_WR * LANES + lane] = wr


@njit(cache=True, nogil=True)
def _any_blocks(dx: np.ndarray, dr: np.ndarray, day_block: np.ndarray, n: int, sums: np.ndarray) -> None:
    """The block sums of any day (pairs in any blocks): one pass over the pairs updating
    every lane's sums in memory. The flat buffer with LANES fixed lets the compiler prove
    the fields apart (no overlap checks per pair); the selects are exact arithmetic so that
    every store is plain (a masked store would stall the next pair's load of the same sums)."""
    sums[:] = 0.0
    for i in range(n):
        dri = dr[i]
        dr_ok = dri == dri
        x = dx[i * LANES:(i + 1) * LANES]
        s = sums[day_block[i] * _FIELDS * LANES:(day_block[i] + 1) * _FIELDS * LANES]
        for lane in range(LANES):
            ok = (x[lane] == x[lane]) & dr_ok
            cx = x[lane] if ok else 0.0
            cr = dri if ok else 0.0
            p = cx * cr
            s[_N * LANES + lane] += 1.0 if ok else 0.0
            s[_XY * LANES + lane] += p
            s[_XX * LANES + lane] += cx * cx
            s[_YY * LANES + lane] += cr * cr
            # keep the first most negative p (its dx and dr): exact arithmetic selects, so
            # every store is plain (a masked store would stall the next pair's load of it)
            take = 1.0 if p < s[_WX * LANES + lane] * s[_WR * LANES + lane] else 0.0
            keep = 1.0 - take
            s[_WX * LANES + lane] = cx * take + s[_WX * LANES + lane] * keep
            s[_WR * LANES + lane] = cr * take + s[_WR * LANES + lane] * keep


@njit(cache=True, nogil=True, error_model="numpy")
def _lanes_days(matrix: np.ndarray, meters: np.ndarray, lanes: np.ndarray, res: np.ndarray, day_bounds: np.ndarray,
                block: np.ndarray, n_blocks: int, dx: np.ndarray, by_lane: np.ndarray, most: int, sums: np.ndarray,
                dr: np.ndarray, fz: np.ndarray, day_out: np.ndarray, out: np.ndarray, onset: np.ndarray) -> None:
    """balance_block_z for up to LANES meters of one master (rows `lanes` of out and
    onset), day by day: each meter's first differences of the day into its row of by_lane
    [lane * most + pair], then into dx [pair * LANES + lane] by 4 x 4 tiles (NaN in unused
    lanes; a day's buffers stay in L1, a whole row's did not and ran 1.5x slower), every
    lane's block sums [(block * _FIELDS + field) * LANES + lane]
    (_even_blocks, else _any_blocks), then the Fisher z, the windows and the onset
    evidence, each vectorised across the lanes."""
    n_days = day_bounds.shape[0] - 1
    w = lanes.shape[0]
    for d in range(n_days):
        a = max(day_bounds[d], 1)  # the first reading of the history has no pair
        n = day_bounds[d + 1] - a
        for lane in range(w):  # each lane's differences in a row of by_lane (contiguous, vectorised)
            row = matrix[meters[lanes[lane]]]
            cur = row[a:a + n]  # slices: indices provably >= 0, no wraparound checks
            prev = row[a - 1:a - 1 + n]
            own = by_lane[lane * most:lane * most + n]
            for i in range(n):
                own[i] = np.float64(cur[i]) - np.float64(prev[i])
        for lane in range(w, LANES):
            by_lane[lane * most:lane * most + n] = np.nan
        n4 = n - n % 4  # rows into lanes, 4 x 4 tiles at a time (twin.kernels.simd: a loop here scatters)
        for i0 in range(0, n4, 4):
            for l0 in range(0, LANES, 4):
                transpose4(by_lane, l0 * most + i0, most, dx, i0 * LANES + l0, LANES)
        for i in range(n4, n):
            for lane in range(LANES):
                dx[i * LANES + lane] = by_lane[lane * most + i]
        res_cur = res[a:a + n]
        res_prev = res[a - 1:a - 1 + n]
        day_block = block[a:a + n]
        even = n == n_blocks * BLOCK_PAIRS
        for i in range(n):
            dr[i] = res_cur[i] - res_prev[i]
            even = even and day_block[i] * BLOCK_PAIRS <= i < (day_block[i] + 1) * BLOCK_PAIRS
        if even:
            _even_blocks(dx, dr, n_blocks, sums)
        else:
            _any_blocks(dx, dr, day_block, n, sums)
        for b in range(n_blocks):  # each block's Fisher z without its most contrary pair
            s = sums[b * _FIELDS * LANES:(b + 1) * _FIELDS * LANES]
            z = fz[b]
            for lane in range(LANES):  # vectorised; wx = wr = 0 (nothing to leave out) unless worst < 0
                wx = s[_WX * LANES + lane]
                wr = s[_WR * LANES + lane]
                worst = wx * wr
                pairs = s[_N * LANES + lane] - (1.0 if worst < 0.0 else 0.0)
                sxy = s[_XY * LANES + lane] - worst
                sxx = s[_XX * LANES + lane] - wx * wx
                syy = s[_YY * LANES + lane] - wr * wr
                valid = (pairs > 3.0) & (sxx > 0.0) & (syy > 0.0)  # else 0: too short, or a side did not move
                r = sxy / np.sqrt(sxx * syy) if valid else 0.0
                r = min(max(r, -R_CLIP), R_CLIP)
                scale = np.sqrt(pairs - 3.0) if valid else 0.0
                z[lane] = 0.5 * _log((1.0 + r) / (1.0 - r)) * scale  # atanh(r) * sqrt(pairs - 3)
        best = day_out[0]  # the day's value and onset evidence of every lane, vectorised
        acc = day_out[1]
        for lane in range(LANES):
            best[lane] = -np.inf
            acc[lane] = 0.0
        length = 0
        target = 1
        for b in range(n_blocks - 1, -1, -1):  # windows of the last 1, 2, 4 ... blocks
            z = fz[b]
            length += 1
            if length == target:
                root = np.sqrt(length)
                for lane in range(LANES):
                    acc[lane] += z[lane]
                    best[lane] = max(best[lane], acc[lane] / root)
                target *= 2
            else:
                for lane in range(LANES):
                    acc[lane] += z[lane]
        last = sums[(n_blocks - 1) * _FIELDS * LANES:n_blocks * _FIELDS * LANES]
        z = fz[n_blocks - 1]
        evidence = day_out[1]
        for lane in range(LANES):
            wx = last[_WX * LANES + lane]
            wr = last[_WR * LANES + lane]
            yy = last[_YY * LANES + lane]
            w_xx = wx * wx
            w_yy = wr * wr
            ratio = w_yy / yy * np.sqrt(min(w_xx, w_yy) / max(w_xx, w_yy))
            # the reading fell as the residual rose, and the block's other moves agree
            agree = (wx * wr < 0.0) & (wr > 0.0) & (yy > 0.0) & (z[lane] > 0.0)
            evidence[lane] = ratio if agree else 0.0
        for lane in range(w):
            out[lanes[lane], d] = best[lane]
            onset[lanes[lane], d] = evidence[lane]

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
            day = row[day_bounds[d]:day_bounds[d + 1]]  # a slice: no wraparound check, so loads, not gathers
            for t in range(day.shape[0]):
                s += day[t]  # NaN propagates: a partial day is no total
            out[i, d] = s


__all__ = ["MAX_BLOCKS", "MIN_PAIRS_PER_BLOCK", "R_CLIP", "balance_block_z", "block_of_interval", "blocks_per_day",
           "row_day_totals"]
