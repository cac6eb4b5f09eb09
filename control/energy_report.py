"""Energy and cost by time-of-use band, per account or per building, for a site-local
month beside the same month last year.

Both months are billed from the interval history by the billing kernel (`control.bill`)
under the scenario's tariffs as they stand, so the comparison is of use, priced alike: the
history keeps readings, not the tariffs of the past. A building's figures are those of
the billed meters in it (sub meters with an account and a tariff), so a building's energy
is the sum of its accounts' energy; common-area and master meters are left out.

Money is in whole fen, each figure rounded half-up once from the exact charge, as the
ledger posts it: a row's `fen` may differ from the sum of its band parts and surcharge,
and a building's from the sum of its accounts', by under half a fen per part. A month
still in progress (the history ends inside it) is reported up to the history's end and
compared with the same part of last year's month; `from` and `until` say where the
figures start and stop (a history that begins inside the month starts them late).
Last year's figures are None when the history does not hold the whole of that span, and
so are the changes. Intervals missing inside the history (NaN) count as no use.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from control.bill import MeterBill, bill_meters, last_month, month_bounds
from scenarios.loader import load_scenario
from scenarios.schema import Scenario
from twin.history import History, open_history
from twin.ledger import round_half_up
from twin.model import UNIT_OF_UTILITY

#: What a report row is per: the key of each row, and the meter field it groups on.
GROUPS: dict[str, Callable[[MeterBill], str]] = {
    "account": lambda bill: bill.account,
    "building": lambda bill: bill.building,
}


class NoReadings(ValueError):
    """The history holds no readings for the month asked for; the message names the month
    and the span the history covers."""


@dataclass
class _Sum:
    """Exact (unrounded) figures of one row's meters over one span."""

    meters: int = 0
    tariffs: set[str] = field(default_factory=set)
    units: float = 0.0
    fen: float = 0.0
    surcharge_fen: float = 0.0
    band_units: dict[str, float] = field(default_factory=dict)
    band_fen: dict[str, float] = field(default_factory=dict)


def check_month(month: str) -> datetime:
    """The first day of a 'YYYY-MM' month; ValueError with an example otherwise."""
    try:
        first = datetime.strptime(month, "%Y-%m")
    except (TypeError, ValueError):
        first = None
    if first is None or len(month) != 7:
        raise ValueError(f"month {month!r}: use YYYY-MM, for example 2026-01")
    return first


def _local(t: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(t, tz=tz).isoformat(timespec="minutes")


def _month_of(t: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(t, tz=tz).strftime("%Y-%m")


def _last_year_until(until: int, month_end: int, tz: ZoneInfo, interval_s: int) -> int:
    """The same site-local moment one year before `until`, on an interval boundary; a
    29 February has no match and stands for the whole of last year's February."""
    local = datetime.fromtimestamp(until, tz=tz)
    try:
        t = int(local.replace(year=local.year - 1).timestamp())
    except ValueError:
        return month_end
    return t - t % interval_s


def _sums(bills: list[MeterBill], band_names: dict[str, list[str]], by: str) -> dict[tuple[str, str], _Sum]:
    """Meter bills summed per (row key, utility), bands matched by name across tariffs."""
    key_of = GROUPS[by]
    sums: dict[tuple[str, str], _Sum] = {}
    for bill in bills:
        row = sums.setdefault((key_of(bill), bill.utility), _Sum())
        row.meters += 1
        row.tariffs.add(bill.tariff)
        row.units += bill.units
        row.fen += bill.fen
        row.surcharge_fen += float(bill.tier_fen.sum())
        for b, name in enumerate(band_names[bill.tariff]):
            row.band_units[name] = row.band_units.get(name, 0.0) + float(bill.band_units[b])
            row.band_fen[name] = row.band_fen.get(name, 0.0) + float(bill.band_fen[b])
    return sums


def _bands_by_utility(sums: dict[tuple[str, str], _Sum], names: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each utility's band names over the tariffs its rows were billed under, so every row
    of a utility has the same columns (a flat tariff's one band is "flat")."""
    tariffs: dict[str, set[str]] = {}
    for (_, utility), row in sums.items():
        tariffs.setdefault(utility, set()).update(row.tariffs)
    return {utility: list(dict.fromkeys(b for t in sorted(used) for b in names[t]))
            for utility, used in tariffs.items()}


def _figures(row: _Sum | None, bands: list[str], prefix: str = "") -> dict[str, Any]:
    """One span's columns of a row: totals, then units and fen by band, then the tier
    surcharge; every value None when `row` is None (the span is not in the history)."""
    out: dict[str, Any] = {f"{prefix}units": None if row is None else round(row.units, 3),
                           f"{prefix}fen": None if row is None else round_half_up(row.fen)}
    for name in bands:
        out[f"{prefix}{name}_units"] = None if row is None else round(row.band_units.get(name, 0.0), 3)
        out[f"{prefix}{name}_fen"] = None if row is None else round_half_up(row.band_fen.get(name, 0.0))
    out[f"{prefix}surcharge_fen"] = None if row is None else round_half_up(row.surcharge_fen)
    return out


def change_pct(now: float | None, before: float | None) -> float | None:
    """Change from `before` to `now` in percent, to 0.1; None when `before` is None or 0."""
    if now is None or before is None or before == 0:
        return None
    return round(100.0 * (now - before) / before, 1)


def energy_report(scenario: str | Path | Scenario, history_dir: str | os.PathLike[str] | History,
                  month: str | None = None, by: str = "account") -> list[dict[str, Any]]:
    """Rows of energy and cost by band for a site-local month (default: the history's last),
    one per account (or building) and utility, sorted by utility then key, each with the
    same figures for the same month last year and the change in percent.

    Example row (by="account")::

        {"month": "2026-01", "from": "2026-01-01T00:00+08:00", "until": "2026-02-01T00:00+08:00",
         "last_year_month": "2025-01",
         "account": "A-B01-01-01", "utility": "electric", "unit": "kWh", "tariff": "tou",
         "meters": 2, "units": 412.5, "fen": 30318, "peak_units": 301.2, "peak_fen": 27108,
         "valley_units": 111.3, "valley_fen": 3339, "surcharge_fen": 0,
         "last_year_units": 398.0, "last_year_fen": 29140, ..., "units_change_pct": 3.6,
         "fen_change_pct": 4.0}

    Raises ValueError on a malformed month or `by`, NoReadings when the history holds
    nothing of the month (naming the span it does hold).
    """
    if by not in GROUPS:
        raise ValueError(f"by is account or building, not {by!r}")
    scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    history = history_dir if isinstance(history_dir, History) else open_history(history_dir)
    tz = ZoneInfo(scenario.site.timezone)
    first, last = history.start, history.end
    if first is None or last is None:
        raise NoReadings(f"{history.directory} holds no readings yet")
    if month is None:
        month = last_month(history, scenario.site.timezone)
    year = check_month(month).year
    start, end = month_bounds(month, scenario.site.timezone)
    if end <= first or start >= last:
        raise NoReadings(f"month {month} is not in the history, which covers {_local(first, tz)} to "
                         f"{_local(last, tz)}: pick a month from {_month_of(first, tz)} to "
                         f"{_month_of(last - 1, tz)}")
    until = min(end, last)
    bills, names = bill_meters(scenario, history, month, until=until)
    now = _sums(bills, names, by)
    before: dict[tuple[str, str], _Sum] | None = None
    last_year = f"{year - 1:04d}-{month[5:]}"
    if year > 1:
        ly_start, ly_end = month_bounds(last_year, scenario.site.timezone)
        ly_until = ly_end if until == end else _last_year_until(until, ly_end, tz, history.interval_s)
        if first <= ly_start and ly_until <= last and ly_until > ly_start:
            ly_bills, ly_names = bill_meters(scenario, history, last_year, until=ly_until)
            before = _sums(ly_bills, ly_names, by)
    bands_of = _bands_by_utility(now, names)
    rows = []
    for (key, utility), row in sorted(now.items(), key=lambda item: (item[0][1], item[0][0])):
        old = None if before is None else before.get((key, utility), _Sum())
        current = _figures(row, bands_of[utility])
        previous = _figures(old, bands_of[utility], "last_year_")
        rows.append({"month": month, "from": _local(max(start, first), tz), "until": _local(until, tz),
                     "last_year_month": last_year, by: key,
                     "utility": utility, "unit": UNIT_OF_UTILITY[utility], "tariff": ",".join(sorted(row.tariffs)),
                     "meters": row.meters, **current, **previous,
                     "units_change_pct": change_pct(row.units, None if old is None else old.units),
                     "fen_change_pct": change_pct(current["fen"], previous["last_year_fen"])})
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV with every column any row has, a column new in a row placed after its
    neighbour in that row (water's `flat_units` beside electricity's band columns); a
    missing or None value (a band of another utility, a year the history lacks) is an
    empty cell."""
    columns: list[str] = []
    for row in rows:
        previous = None
        for column in row:
            if column not in columns:
                columns.insert(0 if previous is None else columns.index(previous) + 1, column)
            previous = column
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


__all__ = ["GROUPS", "NoReadings", "change_pct", "check_month", "energy_report", "to_csv"]
