"""The billing kernel: charges for a whole fleet from the interval matrix in one call.

Input is energy (or volume) per meter per interval, float32 [meters, intervals], NaN
for missing (billed as nothing: a meter's catch-up reading carries it later). Each meter
has a tariff; `twin.tariffs.price_tables` gives, per tariff and interval, the band in
force at the interval's start, its price, the tariff version and the billing period, and
cuts the intervals into segments inside which neither the version nor the period changes.

A charge is two parts, as Chinese bills print them (分时电费 + 阶梯加价):
- the band part: each interval's energy at its band's price;
- the tier part: the period's running total (starting at `used0`, reset at each period)
  is split at the thresholds, energy crossing a threshold inside an interval split at
  it, each tier's units at that tier's surcharge.
Inside a segment the tier part depends only on the segment's total, so the kernel sums
each segment in vectorised passes over a row that sits in cache; a segment holding a
negative reading (a register running back) is walked interval by interval instead, its
negative readings credited at the first tier. Charges are float64 fen, unrounded: the
ledger rounds once, when posting.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

MAX_TIERS = 6
MAX_BANDS = 8
_FAST = {"nsz", "arcp", "contract", "reassoc"}  # reassociate sums; keep NaN and inf semantics


@njit(cache=True, nogil=True, inline="always")
def _tier_split(used: float, total: float, thresholds: np.ndarray, out: np.ndarray) -> None:
    """Units of [used, used + total] falling in each tier, added to `out`."""
    low = 0.0
    for t in range(MAX_TIERS):
        high = thresholds[t] if t < MAX_TIERS - 1 else np.inf
        a = used if used > low else low
        b = used + total if used + total < high else high
        if b > a:
            out[t] += b - a
        low = high


@njit(cache=True, nogil=True, parallel=True, fastmath=_FAST)
def bill(
    energy: np.ndarray,  # float32 [meters, intervals]
    tariff: np.ndarray,  # int64 [meters] tariff index
    used0: np.ndarray,  # float64 [meters] period total before the first interval
    band: np.ndarray,  # int8 [tariffs, intervals]
    onehot: np.ndarray,  # float64 [tariffs, MAX_BANDS, intervals] 1 where that band is in force
    n_bands: np.ndarray,  # int64 [tariffs]
    price_fen: np.ndarray,  # float64 [tariffs, intervals]
    version: np.ndarray,  # int8 [tariffs, intervals]
    period: np.ndarray,  # int32 [tariffs, intervals]
    segments: np.ndarray,  # int64 [tariffs, max segments + 1] interval bounds
    n_segments: np.ndarray,  # int64 [tariffs]
    thresholds: np.ndarray,  # float64 [tariffs, versions, MAX_TIERS - 1], inf where unused
    surcharges_fen: np.ndarray,  # float64 [tariffs, versions, MAX_TIERS]
    charge_fen: np.ndarray,  # float64 [meters] out: band part + tier part
    band_units: np.ndarray,  # float64 [meters, MAX_BANDS] out
    band_fen: np.ndarray,  # float64 [meters, MAX_BANDS] out: band part by band
    tier_units: np.ndarray,  # float64 [meters, MAX_TIERS] out
    tier_fen: np.ndarray,  # float64 [meters, MAX_TIERS] out: tier part by tier
    used_end: np.ndarray,  # float64 [meters] out: period total after the last interval
) -> None:
    """Charge every meter for every interval (see the module docstring for the rules)."""
    for m in prange(energy.shape[0]):
        k = tariff[m]
        row = energy[m]
        used = used0[m]
        units_t = np.zeros(MAX_TIERS)
        units_b = np.zeros(MAX_BANDS)
        fen_b = np.zeros(MAX_BANDS)
        fen_t = np.zeros(MAX_TIERS)
        seg_t = np.zeros(MAX_TIERS)
        for s in range(n_segments[k]):
            a = segments[k, s]
            b = segments[k, s + 1]
            if s > 0 and period[k, a] != period[k, segments[k, s - 1]]:
                used = 0.0
            v = version[k, a]
            # slices indexed from 0: numba then needs no negative-index check, and the loops vectorise
            seg = row[a:b]
            units = 0.0
            low = 0.0
            for i in range(seg.shape[0]):
                e = seg[i]
                x = np.float64(e) if e == e else 0.0
                units += x
                low = min(low, x)
            seg_t[:] = 0.0
            if low >= 0.0 and n_bands[k] <= 4:  # up to 4 bands (尖峰平谷): one fused pass
                prices = price_fen[k, a:b]
                bands = band[k, a:b]
                u0 = u1 = u2 = u3 = 0.0
                f0 = f1 = f2 = f3 = 0.0
                for i in range(seg.shape[0]):
                    e = seg[i]
                    x = np.float64(e) if e == e else 0.0
                    xp = x * prices[i]
                    bi = bands[i]
                    u0 += x if bi == 0 else 0.0
                    u1 += x if bi == 1 else 0.0
                    u2 += x if bi == 2 else 0.0
                    u3 += x if bi == 3 else 0.0
                    f0 += xp if bi == 0 else 0.0
                    f1 += xp if bi == 1 else 0.0
                    f2 += xp if bi == 2 else 0.0
                    f3 += xp if bi == 3 else 0.0
                units_b[0] += u0
                units_b[1] += u1
                units_b[2] += u2
                units_b[3] += u3
                fen_b[0] += f0
                fen_b[1] += f1
                fen_b[2] += f2
                fen_b[3] += f3
                _tier_split(used, units, thresholds[k, v], seg_t)
                used += units
            elif low >= 0.0:
                prices = price_fen[k, a:b]
                for bb in range(n_bands[k]):  # one pass per band over a row held in cache
                    bu = 0.0
                    bf = 0.0
                    weights = onehot[k, bb, a:b]
                    for i in range(seg.shape[0]):
                        e = seg[i]
                        w = (np.float64(e) if e == e else 0.0) * weights[i]
                        bu += w
                        bf += w * prices[i]
                    units_b[bb] += bu
                    fen_b[bb] += bf
                _tier_split(used, units, thresholds[k, v], seg_t)
                used += units
            else:  # a reading below zero: walk this segment interval by interval
                for i in range(a, b):
                    e = row[i]
                    if e != e:
                        continue
                    x = np.float64(e)
                    units_b[band[k, i]] += x
                    fen_b[band[k, i]] += x * price_fen[k, i]
                    if x < 0.0:
                        seg_t[0] += x
                    else:
                        _tier_split(used, x, thresholds[k, v], seg_t)
                    used += x
            for t in range(MAX_TIERS):
                units_t[t] += seg_t[t]
                fen_t[t] += seg_t[t] * surcharges_fen[k, v, t]
        total = 0.0
        for bb in range(MAX_BANDS):
            band_units[m, bb] = units_b[bb]
            band_fen[m, bb] = fen_b[bb]
            total += fen_b[bb]
        for t in range(MAX_TIERS):
            tier_units[m, t] = units_t[t]
            tier_fen[m, t] = fen_t[t]
            total += fen_t[t]
        charge_fen[m] = total
        used_end[m] = used


def bill_fleet(energy: np.ndarray, tariff: np.ndarray, used0: np.ndarray, tables: Any) -> dict[str, np.ndarray]:
    """Run `bill` with freshly allocated outputs; `tables` is a `twin.tariffs.PriceTables`."""
    n = energy.shape[0]
    out = {
        "charge_fen": np.zeros(n), "band_units": np.zeros((n, MAX_BANDS)), "band_fen": np.zeros((n, MAX_BANDS)),
        "tier_units": np.zeros((n, MAX_TIERS)), "tier_fen": np.zeros((n, MAX_TIERS)), "used_end": np.zeros(n),
    }
    bill(np.ascontiguousarray(energy, dtype=np.float32), np.asarray(tariff, dtype=np.int64),
         np.asarray(used0, dtype=np.float64), tables.band, tables.onehot, tables.n_bands, tables.price_fen,
         tables.version, tables.period, tables.segments, tables.n_segments, tables.thresholds,
         tables.surcharges_fen, out["charge_fen"], out["band_units"], out["band_fen"], out["tier_units"],
         out["tier_fen"], out["used_end"])
    return out


@njit(cache=True, nogil=True)
def reconcile(purchased_fen: np.ndarray, credit_fen: np.ndarray, charged_fen: np.ndarray, tolerance_fen: float,
              tolerance_ratio: float, expected_out: np.ndarray, gap_out: np.ndarray, over_out: np.ndarray) -> None:
    """Meter billing: the platform's figure of each meter's credit against the meter's own.

    The platform expects a meter to hold what was bought on it (its reported purchase
    total) less what the platform charged for the energy it measured; `gap` is the meter's
    reported credit less that figure (negative: the meter deducted more than the tariff
    says). A meter is `over` when the gap exceeds `tolerance_fen` plus `tolerance_ratio` of
    what was charged (meters floor their credit and some deduct at one averaged price).
    Rows with NaN charge (not billed) are never over.
    """
    for i in range(purchased_fen.shape[0]):
        charged = charged_fen[i]
        if np.isnan(charged):
            expected_out[i] = np.nan
            gap_out[i] = 0.0
            over_out[i] = False
            continue
        expected = purchased_fen[i] - charged
        gap = credit_fen[i] - expected
        expected_out[i] = expected
        gap_out[i] = gap
        over_out[i] = abs(gap) > tolerance_fen + tolerance_ratio * abs(charged)
