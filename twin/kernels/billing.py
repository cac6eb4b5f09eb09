"""The billing kernel: charges for a whole fleet from the interval matrix in one call.

Input is energy (or volume) per meter per interval, float32 [meters, intervals], NaN
for missing (billed as nothing: a meter's catch-up reading carries it later). Each meter
has a tariff; `twin.tariffs.price_tables` gives, per tariff and interval, the band in
force at the interval's start, its price, the tariff version and the billing period.
The running total of a meter's period (its tier counter) starts at `used0` and resets
when the period changes; energy that crosses a threshold inside an interval is split at
the threshold. Charges are float64 fen, unrounded: the ledger rounds once, when posting.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

MAX_TIERS = 6
MAX_BANDS = 8


@njit(cache=True, nogil=True, parallel=True, fastmath=False)
def bill(
    energy: np.ndarray,  # float32 [meters, intervals]
    tariff: np.ndarray,  # int64 [meters] tariff index
    used0: np.ndarray,  # float64 [meters] period total before the first interval
    band: np.ndarray,  # int8 [tariffs, intervals]
    price_fen: np.ndarray,  # float64 [tariffs, intervals]
    version: np.ndarray,  # int8 [tariffs, intervals]
    period: np.ndarray,  # int32 [tariffs, intervals]
    thresholds: np.ndarray,  # float64 [tariffs, versions, MAX_TIERS - 1], inf where unused
    surcharges_fen: np.ndarray,  # float64 [tariffs, versions, MAX_TIERS]
    charge_fen: np.ndarray,  # float64 [meters] out
    band_units: np.ndarray,  # float64 [meters, MAX_BANDS] out
    band_fen: np.ndarray,  # float64 [meters, MAX_BANDS] out
    tier_units: np.ndarray,  # float64 [meters, MAX_TIERS] out
    used_end: np.ndarray,  # float64 [meters] out: period total after the last interval
) -> None:
    """Charge every meter for every interval (see the module docstring for the rules)."""
    n_meters, n_intervals = energy.shape
    for m in prange(n_meters):
        k = tariff[m]
        used = used0[m]
        total = 0.0
        for b in range(MAX_BANDS):
            band_units[m, b] = 0.0
            band_fen[m, b] = 0.0
        for t in range(MAX_TIERS):
            tier_units[m, t] = 0.0
        last_period = period[k, 0]
        for i in range(n_intervals):
            e = energy[m, i]
            if e != e:  # NaN: missing
                continue
            p = period[k, i]
            if p != last_period:
                used = 0.0
                last_period = p
            v = version[k, i]
            base = price_fen[k, i]
            b = band[k, i]
            x = np.float64(e)
            cost = 0.0
            if x > 0.0:
                # walk the tiers from where the period's total stands, splitting at thresholds
                tier = 0
                while tier < MAX_TIERS - 1 and used >= thresholds[k, v, tier]:
                    tier += 1
                left = x
                while left > 0.0:
                    room = thresholds[k, v, tier] - used if tier < MAX_TIERS - 1 else np.inf
                    part = left if left <= room else room
                    cost += part * (base + surcharges_fen[k, v, tier])
                    tier_units[m, tier] += part
                    used += part
                    left -= part
                    if left > 0.0:
                        tier += 1
            else:
                # negative readings (a register running back) credit at the band price, tier 0
                cost = x * (base + surcharges_fen[k, v, 0])
                tier_units[m, 0] += x
                used += x
            band_units[m, b] += x
            band_fen[m, b] += cost
            total += cost
        charge_fen[m] = total
        used_end[m] = used


def bill_fleet(energy: np.ndarray, tariff: np.ndarray, used0: np.ndarray, tables) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Run `bill` with freshly allocated outputs; `tables` is a `twin.tariffs.PriceTables`."""
    n = energy.shape[0]
    out = {
        "charge_fen": np.zeros(n), "band_units": np.zeros((n, MAX_BANDS)), "band_fen": np.zeros((n, MAX_BANDS)),
        "tier_units": np.zeros((n, MAX_TIERS)), "used_end": np.zeros(n),
    }
    bill(np.ascontiguousarray(energy, dtype=np.float32), tariff.astype(np.int64), used0.astype(np.float64),
         tables.band, tables.price_fen, tables.version, tables.period, tables.thresholds, tables.surcharges_fen,
         out["charge_fen"], out["band_units"], out["band_fen"], out["tier_units"], out["used_end"])
    return out
