"""Tariffs: flat, time of use (尖峰平谷 bands, seasonal variants), tiered (阶梯, monthly or
yearly thresholds) and tiered time of use, for electricity and water, effective-dated.

Every tariff is the same two parts, so one billing kernel serves them all:
- a band price for each interval: the band in force at the interval's start (site-local
  time and month) sets the price; a flat tariff has one band;
- a tier surcharge added on top: the tier is where the period's running total stands, and
  energy that crosses a threshold inside one interval is split at the threshold. A plain
  tiered tariff is a flat band at the first tier's price plus surcharges of (tier price -
  first price). Tier counters reset at the start of the billing period (a calendar month,
  or a calendar year) in the site's time zone.
A change takes effect at its date (site-local midnight), mid-month too: each interval
uses the version in force at its start, and the tier counter runs on across the change.

Band rule for seasons: a band with `months` applies in those months only and, in those
months, wins over bands without `months` where they overlap (so a summer 尖 band at
19:00-21:00 sits on top of the all-year 峰 band). Outside every band's hours a time-of-use
tariff is refused: each minute of each month must have exactly one band.

Prices are in fen per unit (kWh or m3), as floats: published prices have fractions of a
fen (0.4983 yuan = 49.83 fen); the ledger rounds charges once, at posting.

Scenario tables (any `[tariffs.NAME]`)::

    kind = "flat";   price_yuan = 0.55
    kind = "tiered"; period = "month"; thresholds_kwh = [180, 350]; prices_yuan = [0.4983, 0.5483, 0.7983]
    kind = "time_of_use"; bands = [{ name = "peak", price_yuan = 0.94, hours = ["08:00-11:30"] }, ...]
    kind = "tiered_time_of_use"; bands = [...]; thresholds_kwh = [...]; surcharges_yuan = [0, 0.05, 0.3]
    utility = "water"   # thresholds_m3 then; default electric
    [[tariffs.NAME.changes]]   # effective-dated versions: the same keys, plus effective = "2026-07-01"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

KINDS = ("flat", "time_of_use", "tiered", "tiered_time_of_use")
MAX_TIERS = 6
MAX_BANDS = 8


class TariffError(ValueError):
    """A tariff table that breaks a rule; the message names the tariff and the field."""


def _windows(hours: list[str], where: str) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for text in hours:
        try:
            a, b = (part.strip() for part in text.split("-"))
            s, e = int(a[:2]) * 60 + int(a[3:5]), int(b[:2]) * 60 + int(b[3:5])
        except (ValueError, IndexError):
            raise TariffError(f"{where}: {text!r} is not a window like 08:00-11:30") from None
        if not (0 <= s < 1440 and 0 < e <= 1440) or s == e:
            raise TariffError(f"{where}: {text!r} is not a window within a day")
        out += [(s, e)] if s < e else [(s, 1440), (0, e)]
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Band:
    """A time-of-use band. Example: ``Band("peak", 94.03, ((480, 690),))``."""

    name: str  #: sharp, peak, flat, valley, or any name
    price_fen: float  #: fen per unit
    windows: tuple[tuple[int, int], ...]  #: (start minute, end minute) within a local day
    months: tuple[int, ...] = ()  #: months it applies in (1..12); empty: all year


@dataclass(frozen=True, slots=True)
class Version:
    """A tariff as it stands from `effective` (site-local date) on."""

    effective: date  #: first day it applies
    bands: tuple[Band, ...]  #: one band for flat and tiered
    thresholds: tuple[float, ...] = ()  #: tier thresholds in units per period, ascending
    surcharges_fen: tuple[float, ...] = (0.0,)  #: per tier, len(thresholds) + 1, first 0

    def band_at(self, minute: int, month: int) -> int:
        """Index of the band in force at a local minute of day in a month (1..12)."""
        chosen = -1
        for i, band in enumerate(self.bands):
            if band.months and month not in band.months:
                continue
            if any(s <= minute < e for s, e in band.windows):
                if chosen < 0 or (band.months and not self.bands[chosen].months):
                    chosen = i
        return chosen


@dataclass(frozen=True, slots=True)
class Tariff:
    """A named tariff with its effective-dated versions, oldest first."""

    name: str  #: its name in the scenario
    kind: str  #: flat, time_of_use, tiered or tiered_time_of_use
    utility: str  #: electric or water
    period: str  #: "month" or "year": when tier counters reset
    versions: tuple[Version, ...] = field(default_factory=tuple)  #: oldest first

    @property
    def band_names(self) -> list[str]:
        """Band names across versions, in first-seen order (the kernel's band index)."""
        names: list[str] = []
        for version in self.versions:
            for band in version.bands:
                if band.name not in names:
                    names.append(band.name)
        return names

    def version_at(self, day: date) -> int:
        """Index of the version in force on a local date."""
        index = 0
        for i, version in enumerate(self.versions):
            if version.effective <= day:
                index = i
        return index


def _yuan_list(table: dict[str, Any], key: str, where: str) -> list[float]:
    values = table.get(key)
    if not isinstance(values, list) or not values or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in values):
        raise TariffError(f"{where}.{key}: give a list of prices in yuan, >= 0")
    return [100.0 * float(v) for v in values]


def _version(name: str, kind: str, utility: str, table: dict[str, Any], effective: date) -> Version:
    where = f"tariff {name!r}"
    unit_key = "thresholds_m3" if utility == "water" else "thresholds_kwh"
    if kind == "flat":
        price = table.get("price_yuan")
        if not isinstance(price, int | float) or isinstance(price, bool) or price < 0:
            raise TariffError(f"{where}.price_yuan: give the price in yuan per unit, >= 0")
        return Version(effective, (Band("flat", 100.0 * float(price), ((0, 1440),)),))
    bands: tuple[Band, ...] = ()
    if kind in ("time_of_use", "tiered_time_of_use"):
        raw = table.get("bands")
        if not isinstance(raw, list) or not raw or len(raw) > MAX_BANDS:
            raise TariffError(f"{where}.bands: give 1 to {MAX_BANDS} bands")
        built = []
        for i, b in enumerate(raw):
            bw = f"{where}.bands[{i}]"
            if not isinstance(b, dict) or not isinstance(b.get("name"), str):
                raise TariffError(f"{bw}: a band is a table with a name, price_yuan and hours")
            price = b.get("price_yuan")
            if not isinstance(price, int | float) or isinstance(price, bool) or price < 0:
                raise TariffError(f"{bw}.price_yuan: give the price in yuan, >= 0")
            hours = b.get("hours")
            if not isinstance(hours, list) or not hours or not all(isinstance(h, str) for h in hours):
                raise TariffError(f"{bw}.hours: give windows like [\"08:00-11:30\"]")
            months = b.get("months", [])
            if not isinstance(months, list) or not all(isinstance(m, int) and 1 <= m <= 12 for m in months):
                raise TariffError(f"{bw}.months: give month numbers 1..12")
            built.append(Band(b["name"], 100.0 * float(price), _windows(hours, bw), tuple(months)))
        bands = tuple(built)
    thresholds: tuple[float, ...] = ()
    surcharges: tuple[float, ...] = (0.0,)
    if kind in ("tiered", "tiered_time_of_use"):
        raw_thr = table.get(unit_key)
        if not isinstance(raw_thr, list) or not raw_thr or len(raw_thr) >= MAX_TIERS or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in raw_thr):
            raise TariffError(f"{where}.{unit_key}: give 1 to {MAX_TIERS - 1} positive thresholds")
        thresholds = tuple(float(v) for v in raw_thr)
        if list(thresholds) != sorted(set(thresholds)):
            raise TariffError(f"{where}.{unit_key}: thresholds must rise")
        if kind == "tiered":
            prices = _yuan_list(table, "prices_yuan", where)
            if len(prices) != len(thresholds) + 1:
                raise TariffError(f"{where}.prices_yuan: give {len(thresholds) + 1} prices, one per tier")
            bands = (Band("flat", prices[0], ((0, 1440),)),)
            surcharges = tuple(p - prices[0] for p in prices)
        else:
            surcharges = tuple(_yuan_list(table, "surcharges_yuan", where))
            if len(surcharges) != len(thresholds) + 1:
                raise TariffError(f"{where}.surcharges_yuan: give {len(thresholds) + 1} surcharges, one per tier")
    version = Version(effective, bands, thresholds, surcharges)
    for month in range(1, 13):  # every minute of every month has a band
        for minute in range(0, 1440):
            if version.band_at(minute, month) < 0:
                raise TariffError(f"{where}: no band covers {minute // 60:02d}:{minute % 60:02d} in month {month}")
    return version


def parse_tariff(name: str, table: dict[str, Any]) -> Tariff:
    """A `Tariff` from a scenario table; TariffError names the field that is wrong."""
    kind = table.get("kind")
    if kind not in KINDS:
        raise TariffError(f"tariff {name!r}.kind: {kind!r} is not one of {', '.join(KINDS)}")
    utility = table.get("utility", "electric")
    if utility not in ("electric", "water"):
        raise TariffError(f"tariff {name!r}.utility: electric or water, not {utility!r}")
    period = table.get("period", "month")
    if period not in ("month", "year"):
        raise TariffError(f"tariff {name!r}.period: month or year, not {period!r}")
    versions = [_version(name, kind, utility, table, date.min)]
    changes = table.get("changes", [])
    if not isinstance(changes, list):
        raise TariffError(f"tariff {name!r}.changes: an array of tables [[tariffs.{name}.changes]]")
    for i, change in enumerate(changes):
        if not isinstance(change, dict) or "effective" not in change:
            raise TariffError(f"tariff {name!r}.changes[{i}]: needs effective = \"YYYY-MM-DD\"")
        effective = change["effective"]
        try:
            day = effective if isinstance(effective, date) else date.fromisoformat(str(effective))
        except ValueError:
            raise TariffError(f"tariff {name!r}.changes[{i}].effective: {effective!r} is not a date") from None
        merged = {**table, **{k: v for k, v in change.items() if k != "effective"}}
        versions.append(_version(name, kind, utility, merged, day))
    versions.sort(key=lambda v: v.effective)
    return Tariff(name, kind, utility, period, tuple(versions))


@dataclass
class PriceTables:
    """What the billing kernel needs for a set of tariffs over a run of intervals.

    Arrays are indexed [tariff, interval] (and [tariff, version, tier] for tiers)."""

    band: np.ndarray  #: int8 [tariffs, intervals] band index in force at each interval's start
    price_fen: np.ndarray  #: float64 [tariffs, intervals] band price
    version: np.ndarray  #: int8 [tariffs, intervals] version index in force
    period: np.ndarray  #: int32 [tariffs, intervals] billing-period number (changes reset tiers)
    thresholds: np.ndarray  #: float64 [tariffs, versions, MAX_TIERS - 1], +inf where unused
    surcharges_fen: np.ndarray  #: float64 [tariffs, versions, MAX_TIERS]
    band_names: list[list[str]]  #: per tariff, band names by index
    onehot: np.ndarray  #: float64 [tariffs, MAX_BANDS, intervals]: 1 where the band is in force
    n_bands: np.ndarray  #: int64 [tariffs]
    segments: np.ndarray  #: int64 [tariffs, max segments + 1]: bounds where version or period change
    n_segments: np.ndarray  #: int64 [tariffs]


def price_tables(tariffs: list[Tariff], start_utc: int, n_intervals: int, interval_s: int,
                 timezone: str) -> PriceTables:
    """Band, price, version and period of every interval from `start_utc`, per tariff."""
    tz = ZoneInfo(timezone)
    starts = start_utc + np.arange(n_intervals, dtype=np.int64) * interval_s
    # local calendar of each interval start, computed per distinct local day (cheap)
    local_days: list[datetime] = []
    minute = np.empty(n_intervals, dtype=np.int64)
    day_index = np.empty(n_intervals, dtype=np.int64)
    t = 0
    while t < n_intervals:
        local = datetime.fromtimestamp(int(starts[t]), tz=tz)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        next_mid = (midnight + timedelta(days=1)).replace(tzinfo=None).replace(tzinfo=tz)
        end_utc = int(next_mid.timestamp())
        n_day = min(n_intervals - t, max(1, -(-(end_utc - int(starts[t])) // interval_s)))
        offsets = (starts[t:t + n_day] - int(midnight.timestamp())) // 60
        minute[t:t + n_day] = np.clip(offsets, 0, 1439)
        day_index[t:t + n_day] = len(local_days)
        local_days.append(midnight)
        t += n_day
    n_t = len(tariffs)
    n_v = max((len(tf.versions) for tf in tariffs), default=1)
    band = np.zeros((n_t, n_intervals), dtype=np.int8)
    price = np.zeros((n_t, n_intervals))
    version = np.zeros((n_t, n_intervals), dtype=np.int8)
    period = np.zeros((n_t, n_intervals), dtype=np.int32)
    thresholds = np.full((n_t, n_v, MAX_TIERS - 1), np.inf)
    surcharges = np.zeros((n_t, n_v, MAX_TIERS))
    names = []
    for k, tf in enumerate(tariffs):
        names.append(tf.band_names)
        for v, ver in enumerate(tf.versions):
            thresholds[k, v, :len(ver.thresholds)] = ver.thresholds
            surcharges[k, v, :len(ver.surcharges_fen)] = ver.surcharges_fen
            surcharges[k, v, len(ver.surcharges_fen):] = ver.surcharges_fen[-1]
        lookups: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        for d, midnight in enumerate(local_days):
            sel = day_index == d
            v = tf.version_at(midnight.date())
            ver = tf.versions[v]
            if (v, midnight.month) not in lookups:  # band and price by minute of day
                in_version = np.array([ver.band_at(m, midnight.month) for m in range(1440)])
                global_index = np.array([names[k].index(b.name) for b in ver.bands])
                prices = np.array([b.price_fen for b in ver.bands])
                lookups[v, midnight.month] = (global_index[in_version], prices[in_version])
            by_minute_band, by_minute_price = lookups[v, midnight.month]
            band[k, sel] = by_minute_band[minute[sel]]
            price[k, sel] = by_minute_price[minute[sel]]
            version[k, sel] = v
            period[k, sel] = midnight.year * 12 + midnight.month - 1 if tf.period == "month" else midnight.year
    onehot = np.zeros((n_t, MAX_BANDS, n_intervals))
    for k in range(n_t):
        for b in range(len(names[k])):
            onehot[k, b] = band[k] == b
    bounds = []
    for k in range(n_t):
        change = np.flatnonzero((np.diff(version[k]) != 0) | (np.diff(period[k]) != 0)) + 1
        bounds.append(np.concatenate(([0], change, [n_intervals])))
    segments = np.zeros((n_t, max((len(b) for b in bounds), default=2)), dtype=np.int64)
    for k, cut in enumerate(bounds):
        segments[k, :len(cut)] = cut
    return PriceTables(band, price, version, period, thresholds, surcharges, names, onehot,
                       np.array([len(n) for n in names], dtype=np.int64), segments,
                       np.array([len(b) - 1 for b in bounds], dtype=np.int64))
