"""`metertwin bill`: bill a stored history under the scenario's tariffs, or under another
tariff to compare, and print per-account energy and charges by band and tier as CSV.

It reads the history and the scenario, runs the billing kernel, and never touches the
ledger. Each account's charge is the sum of its meters' exact charges of that utility,
rounded half-up to the fen once, as the ledger's posting does. A yearly-tier tariff
starts the month with the account's use since 1 January (site-local) as recorded in the
history; a month before the history begins counts from zero.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import TextIO
from zoneinfo import ZoneInfo

import numpy as np

from scenarios.loader import load_scenario
from scenarios.schema import Scenario
from twin.history import History, open_history
from twin.kernels.billing import MAX_BANDS, MAX_TIERS, bill_fleet
from twin.ledger import round_half_up
from twin.model import TwinSpec
from twin.tariffs import Tariff, parse_tariff, price_tables


@dataclass
class Line:
    """One account's bill for one utility."""

    account: str
    utility: str
    tariff: str
    meters: int
    units: float
    fen: float
    band_units: np.ndarray
    band_fen: np.ndarray
    tier_units: np.ndarray
    tier_fen: np.ndarray


def month_bounds(month: str, timezone: str) -> tuple[int, int]:
    """UTC epoch seconds of a site-local month's start and end."""
    tz = ZoneInfo(timezone)
    try:
        start = datetime.strptime(month, "%Y-%m")
    except ValueError:
        raise ValueError(f"--month {month!r}: use YYYY-MM, for example 2026-01") from None
    end = datetime(start.year + (start.month == 12), start.month % 12 + 1, 1)
    return int(start.replace(tzinfo=tz).timestamp()), int(end.replace(tzinfo=tz).timestamp())


@dataclass
class MeterBill:
    """One billed meter's charges for a month (or the part of it up to `until`)."""

    twin: str  #: twin id of the meter
    building: str  #: building the meter sits in
    account: str  #: account billed for it
    utility: str  #: electric or water
    tariff: str  #: tariff it was billed under
    units: float  #: kWh or m3 in the span
    fen: float  #: exact charge, not yet rounded to the fen
    band_units: np.ndarray  #: units by band index of the tariff
    band_fen: np.ndarray  #: charge by band index
    tier_units: np.ndarray  #: units by tier
    tier_fen: np.ndarray  #: tier surcharges by tier


def last_month(history: History, timezone: str) -> str:
    """'YYYY-MM' of the site-local month holding the history's last interval."""
    if history.end is None:
        raise ValueError(f"{history.directory} holds no readings")
    last = datetime.fromtimestamp(history.end - 1, tz=ZoneInfo(timezone))
    return f"{last.year:04d}-{last.month:02d}"


def bill_meters(scenario: Scenario, history: History, month: str, tariff_name: str | None = None,
                until: int | None = None) -> tuple[list[MeterBill], dict[str, list[str]]]:
    """Bill every billed meter of a history over a site-local month, or over its first part
    up to `until` (UTC, on an interval boundary); returns (meter bills in history column
    order, band names by tariff). A meter is billed when it is a sub meter with an account
    and a tariff; `tariff_name` bills its utility's meters under that tariff instead."""
    tz = scenario.site.timezone
    start, end = month_bounds(month, tz)
    if until is not None:
        end = min(end, until)
    interval = history.interval_s
    if start % interval or end % interval:
        raise ValueError(f"month {month} does not start on an interval of {interval}s in {tz}")
    if end <= start:
        raise ValueError(f"nothing to bill in {month} before {until}")
    tariffs: dict[str, Tariff] = {name: parse_tariff(name, table) for name, table in scenario.tariffs.items()}
    if tariff_name is not None and tariff_name not in tariffs:
        known = ", ".join(sorted(tariffs)) or "none"
        raise ValueError(f"--tariff {tariff_name!r} is not in the scenario; it has: {known}")
    specs = {t.id: t for t in scenario.site.twins}
    rows: list[tuple[int, TwinSpec, str]] = []  # column, meter, tariff
    for column, twin_id in enumerate(history.topology.ids):
        spec = specs.get(twin_id)
        if spec is None or spec.role != "sub" or spec.account is None or spec.utility is None:
            continue
        name = spec.tariff
        if tariff_name is not None and tariffs[tariff_name].utility == spec.utility:
            name = tariff_name
        if name is None:
            continue
        rows.append((column, spec, name))
    if not rows:
        if not any(twin_id in specs for twin_id in history.topology.ids):
            raise ValueError(f"none of the history's twins is in the scenario (site {scenario.site.id}): "
                             "give the scenario that made the history")
        raise ValueError("no billed meter in this history: meters need an account and a tariff in the scenario")
    order = sorted({name for *_, name in rows})
    index = {name: i for i, name in enumerate(order)}
    n = (end - start) // interval
    tables = price_tables([tariffs[name] for name in order], start, n, interval, tz)
    columns = [c for c, *_ in rows]
    energy = history.read(start, end, columns)
    used0 = np.zeros(len(rows))
    for i, (_, _, name) in enumerate(rows):
        if tariffs[name].period == "year":  # the year's use so far, from the history
            year_start = month_bounds(f"{month[:4]}-01", tz)[0]
            if year_start < start:
                used0[i] = float(np.nansum(history.read(year_start, start, [columns[i]]), dtype=np.float64))
    out = bill_fleet(energy, np.array([index[name] for *_, name in rows]), used0, tables)
    bills = [MeterBill(spec.id, spec.building, spec.account or "", spec.utility or "", name,
                       float(out["band_units"][i].sum()), float(out["charge_fen"][i]), out["band_units"][i],
                       out["band_fen"][i], out["tier_units"][i], out["tier_fen"][i])
             for i, (_, spec, name) in enumerate(rows)]
    return bills, {name: tables.band_names[i] for i, name in enumerate(order)}


def bill_history(scenario_path: str | Scenario, history_dir: str | History, month: str | None = None,
                 tariff_name: str | None = None) -> tuple[str, list[Line], dict[str, list[str]]]:
    """Bill a month of a history (default: its last); returns (the month, lines, band names
    by tariff). The scenario and history may be given loaded or as paths."""
    scenario = scenario_path if isinstance(scenario_path, Scenario) else load_scenario(scenario_path)
    history = history_dir if isinstance(history_dir, History) else open_history(history_dir)
    if month is None:
        month = last_month(history, scenario.site.timezone)
    elif history.end is None:
        raise ValueError(f"{history.directory} holds no readings")
    else:
        start, end = month_bounds(month, scenario.site.timezone)
        if history.start is None or end <= history.start or start >= history.end:
            first = f"{datetime.fromtimestamp(history.start or history.end, tz=ZoneInfo(scenario.site.timezone)):%Y-%m}"
            last = last_month(history, scenario.site.timezone)
            held = first if first == last else f"{first} to {last}"
            raise ValueError(f"--month {month} is outside the history, which holds {held}: pick a month in it")
    bills, band_names = bill_meters(scenario, history, month, tariff_name)
    lines: dict[tuple[str, str], Line] = {}
    for bill in bills:
        key = (bill.account, bill.utility)
        if key not in lines:
            lines[key] = Line(bill.account, bill.utility, bill.tariff, 0, 0.0, 0.0, np.zeros(MAX_BANDS),
                              np.zeros(MAX_BANDS), np.zeros(MAX_TIERS), np.zeros(MAX_TIERS))
        line = lines[key]
        line.meters += 1
        line.units += bill.units
        line.fen += bill.fen
        line.band_units += bill.band_units
        line.band_fen += bill.band_fen
        line.tier_units += bill.tier_units
        line.tier_fen += bill.tier_fen
    return month, sorted(lines.values(), key=lambda x: (x.utility, x.account)), band_names


def write_csv(month: str, lines: list[Line], band_names: dict[str, list[str]],
              stream: TextIO = sys.stdout) -> dict[str, float]:
    """The bill as CSV: one row per account and utility, then one total row per utility.
    Band columns carry the band names of the billed tariffs (sharp, peak, flat, valley...),
    tiers are tier1..tierN. Money in yuan, units in kWh or m3; each row's charge is
    rounded half-up to the fen (band parts and surcharges are shown unrounded to the fen)."""
    names: list[str] = []
    for line in lines:
        for b, name in enumerate(band_names[line.tariff]):
            if line.band_units[b] and name not in names:
                names.append(name)
    tiers = sorted({t for line in lines for t in range(MAX_TIERS) if line.tier_units[t]})
    writer = csv.writer(stream)
    writer.writerow(["month", "account", "utility", "tariff", "meters", "units", "charge_yuan",
                     *[f"{name}_units" for name in names], *[f"{name}_yuan" for name in names],
                     *[f"tier{t + 1}_units" for t in tiers], *[f"tier{t + 1}_surcharge_yuan" for t in tiers]])
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for line in lines:
        fen = round_half_up(line.fen)
        totals[line.utility][0] += line.units
        totals[line.utility][1] += fen
        own = band_names[line.tariff]
        units = {name: line.band_units[b] for b, name in enumerate(own)}
        money = {name: line.band_fen[b] for b, name in enumerate(own)}
        writer.writerow([month, line.account, line.utility, line.tariff, line.meters, f"{line.units:.3f}",
                         f"{fen / 100:.2f}", *[f"{units.get(n, 0.0):.3f}" for n in names],
                         *[f"{money.get(n, 0.0) / 100:.2f}" for n in names],
                         *[f"{line.tier_units[t]:.3f}" for t in tiers],
                         *[f"{line.tier_fen[t] / 100:.2f}" for t in tiers]])
    for utility, (units_total, fen_total) in sorted(totals.items()):
        writer.writerow([month, "TOTAL", utility, "", sum(1 for x in lines if x.utility == utility),
                         f"{units_total:.3f}", f"{fen_total / 100:.2f}"])
    return {utility: fen_total / 100 for utility, (_, fen_total) in totals.items()}
