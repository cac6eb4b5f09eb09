"""Tariffs and the billing kernel: worked examples computed by hand, the kernel against a
plain reference, and the rules (band at the interval's start, split at thresholds,
resets at the site's period start, effective-dated changes)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.kernels.billing import MAX_BANDS, MAX_TIERS, bill_fleet
from twin.tariffs import TariffError, parse_tariff, price_tables

TZ = "Asia/Shanghai"
SHAANXI_TIERED = {"kind": "tiered", "period": "month", "thresholds_kwh": [180, 350],
                  "prices_yuan": [0.4983, 0.5483, 0.7983]}
TOU = {"kind": "time_of_use", "bands": [
    {"name": "sharp", "price_yuan": 1.1283, "hours": ["19:00-21:00"], "months": [7, 8, 12, 1]},
    {"name": "peak", "price_yuan": 0.9403, "hours": ["08:00-11:30", "18:30-23:00"]},
    {"name": "flat", "price_yuan": 0.6269, "hours": ["07:00-08:00", "11:30-18:30"]},
    {"name": "valley", "price_yuan": 0.3134, "hours": ["23:00-07:00"]}]}


def utc(*args: int) -> int:
    """Epoch seconds of a Shanghai-local datetime."""
    return int(datetime(*args, tzinfo=ZoneInfo(TZ)).timestamp())


def charge(table: dict, start_utc: int, energy: list[float], interval_s: int = 900, used0: float = 0.0) -> dict:
    tariff = parse_tariff("t", table)
    tables = price_tables([tariff], start_utc, len(energy), interval_s, TZ)
    out = bill_fleet(np.array([energy], dtype=np.float32), np.array([0]), np.array([used0]), tables)
    return {k: v[0] for k, v in out.items()} | {"names": tables.band_names[0]}


def test_flat():
    """Flat 0.55 yuan: 100 kWh cost 5,500 fen."""
    assert charge({"kind": "flat", "price_yuan": 0.55}, utc(2026, 3, 1), [60.0, 40.0])["charge_fen"] == \
        pytest.approx(5500.0)


def test_tiered_month_split_inside_an_interval():
    """Shaanxi tiers 180/350 kWh: 170 + 20 + 210 kWh in one month is 180 at 49.83, 170 at
    54.83 and 50 at 79.83 fen = 8,969.4 + 9,321.1 + 3,991.5 = 22,282.0 fen; the second
    interval crosses 180 and is split 10 + 10."""
    out = charge(SHAANXI_TIERED, utc(2026, 3, 1), [170.0, 20.0, 210.0])
    assert out["charge_fen"] == pytest.approx(22282.0)
    np.testing.assert_allclose(out["tier_units"][:3], [180.0, 170.0, 50.0])


def test_time_of_use_band_is_the_one_at_the_interval_start():
    """2 kWh at 10:00 (peak 94.03) + 2 kWh at 03:00 (valley 31.34) = 250.74 fen; an
    interval starting 11:30 is flat (62.69), one starting 11:15 is peak, though it ends
    in the flat band."""
    start = utc(2026, 4, 1)
    energy = np.zeros(96)
    energy[40], energy[12], energy[46], energy[45] = 2.0, 2.0, 1.0, 1.0  # 10:00, 03:00, 11:30, 11:15
    out = charge(TOU, start, list(energy))
    assert out["charge_fen"] == pytest.approx(2 * 94.03 + 2 * 31.34 + 62.69 + 94.03)
    names = out["names"]
    assert out["band_units"][names.index("peak")] == pytest.approx(3.0)


def test_seasonal_sharp_band_sits_on_the_peak():
    """19:30 is sharp (112.83) in July and January, peak (94.03) in April."""
    for month, price in ((7, 112.83), (1, 112.83), (4, 94.03)):
        start = utc(2026, month, 10, 19, 30)
        assert charge(TOU, start, [1.0])["charge_fen"] == pytest.approx(price), month


def test_tiered_time_of_use_adds_the_tier_surcharge_to_the_band():
    """Thresholds [200], surcharges [0, 0.05] over TOU: with 190 kWh used, 20 kWh at a
    valley hour cost 10 x 31.34 + 10 x (31.34 + 5) = 676.8 fen."""
    table = {**TOU, "kind": "tiered_time_of_use", "thresholds_kwh": [200], "surcharges_yuan": [0, 0.05]}
    out = charge(table, utc(2026, 4, 10, 2, 0), [20.0], used0=190.0)
    assert out["charge_fen"] == pytest.approx(676.8)
    assert out["band_fen"].sum() == pytest.approx(20 * 31.34) and out["tier_fen"][1] == pytest.approx(10 * 5.0)
    assert out["used_end"] == pytest.approx(210.0)


def test_tier_counters_reset_at_the_local_period_start():
    """A monthly tier counter resets at local midnight of the 1st (16:00 UTC the day
    before in Shanghai); a yearly water counter resets on 1 January local."""
    start = utc(2026, 1, 31, 23, 0)  # 23:00 and 00:00 local, in two months
    out = charge(SHAANXI_TIERED, start, [10.0] + [0.0] * 3 + [10.0], used0=175.0)
    # 5 at tier 1, 5 at tier 2 in January; February starts again at tier 1
    assert out["charge_fen"] == pytest.approx(5 * 49.83 + 5 * 54.83 + 10 * 49.83)
    water = {"kind": "tiered", "utility": "water", "period": "year", "thresholds_m3": [180, 300],
             "prices_yuan": [3.8, 5.3, 11.35]}
    out = charge(water, utc(2026, 12, 31, 23, 0), [5.0, 5.0], interval_s=3600, used0=178.0)
    assert out["charge_fen"] == pytest.approx(2 * 380 + 3 * 530 + 5 * 380)


def test_a_change_takes_effect_at_its_date_mid_month():
    """A price change effective 15 July applies from that local midnight; the tier
    counter runs on across it."""
    table = {**SHAANXI_TIERED, "changes": [{"effective": "2026-07-15", "prices_yuan": [0.6, 0.7, 0.9]}]}
    out = charge(table, utc(2026, 7, 14, 23, 0), [100.0, 100.0], interval_s=3600)
    assert out["charge_fen"] == pytest.approx(100 * 49.83 + 80 * 60.0 + 20 * 70.0)


def test_bad_tables_name_the_field():
    """Unknown kinds, uncovered hours, wrong counts of prices and falling thresholds are
    refused naming tariff and field."""
    with pytest.raises(TariffError, match="kind"):
        parse_tariff("x", {"kind": "magic"})
    with pytest.raises(TariffError, match=r"no band covers 23:00"):
        parse_tariff("x", {"kind": "time_of_use", "bands": [{"name": "a", "price_yuan": 1, "hours": ["00:00-23:00"]}]})
    with pytest.raises(TariffError, match="prices_yuan: give 3 prices"):
        parse_tariff("x", {**SHAANXI_TIERED, "prices_yuan": [0.5, 0.6]})
    with pytest.raises(TariffError, match="thresholds must rise"):
        parse_tariff("x", {**SHAANXI_TIERED, "thresholds_kwh": [350, 180]})


def reference(energy, tariff_of, used0, tables):
    """The billing rules written plainly, one interval at a time."""
    n, t_n = energy.shape
    out = np.zeros(n)
    for m in range(n):
        k, used, total, last = tariff_of[m], float(used0[m]), 0.0, tables.period[tariff_of[m], 0]
        for i in range(t_n):
            e = float(energy[m, i])
            if np.isnan(e):
                continue
            if tables.period[k, i] != last:
                used, last = 0.0, tables.period[k, i]
            v = tables.version[k, i]
            thr = [x for x in tables.thresholds[k, v] if np.isfinite(x)]
            base = tables.price_fen[k, i]
            if e <= 0:
                total += e * (base + tables.surcharges_fen[k, v, 0])
                used += e
                continue
            left = e
            while left > 0:
                tier = sum(1 for x in thr if used >= x)
                room = thr[tier] - used if tier < len(thr) else np.inf
                part = min(left, room)
                total += part * (base + tables.surcharges_fen[k, v, tier])
                used += part
                left -= part
        out[m] = total
    return out


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 12), days=st.integers(1, 40))
def test_kernel_agrees_with_the_plain_reference(seed, n, days):
    """On random fleets (missing readings, negative readings, meters of five tariffs,
    random starting totals, spans across month ends) the kernel equals the reference."""
    rng = np.random.default_rng(seed)
    tariffs = [parse_tariff("a", SHAANXI_TIERED), parse_tariff("b", TOU),
               parse_tariff("c", {**TOU, "kind": "tiered_time_of_use", "thresholds_kwh": [50, 120],
                                  "surcharges_yuan": [0, 0.05, 0.3]}),
               parse_tariff("d", {"kind": "flat", "price_yuan": 0.55}),
               parse_tariff("e", {"kind": "time_of_use", "bands": [  # five bands: the kernel's general path
                   *TOU["bands"][:3], {"name": "valley", "price_yuan": 0.3134, "hours": ["23:00-03:00"]},
                   {"name": "deep", "price_yuan": 0.2, "hours": ["03:00-07:00"]}]})]
    intervals = days * 24
    start = utc(2026, int(rng.integers(1, 13)), int(rng.integers(1, 28)))
    tables = price_tables(tariffs, start, intervals, 3600, TZ)
    energy = rng.gamma(0.8, 1.5, (n, intervals)).astype(np.float32)
    energy[rng.random(energy.shape) < 0.05] = np.nan
    energy[rng.random(energy.shape) < 0.01] *= -1
    tariff_of = rng.integers(0, len(tariffs), n)
    used0 = rng.uniform(0, 200, n)
    got = bill_fleet(energy, tariff_of, used0, tables)
    np.testing.assert_allclose(got["charge_fen"], reference(energy, tariff_of, used0, tables), rtol=1e-12, atol=1e-9)
    parts = got["band_fen"].sum(axis=1) + got["tier_fen"].sum(axis=1)  # 分时电费 + 阶梯加价
    np.testing.assert_allclose(parts, got["charge_fen"], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(got["band_units"].sum(axis=1), np.nansum(energy.astype(np.float64), axis=1),
                               rtol=1e-9, atol=1e-6)
    assert got["band_units"].shape == (n, MAX_BANDS) and got["tier_units"].shape == (n, MAX_TIERS)
