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
from twin.history import open_history
from twin.kernels.billing import MAX_BANDS, MAX_TIERS, bill_fleet
from twin.ledger import round_half_up
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


def bill_history(scenario_path: str, history_dir: str, month: str | None = None,
                 tariff_name: str | None = None) -> tuple[str, list[Line], dict[str, list[str]]]:
    """Bill a month of a history; returns (the month, lines, band names by tariff)."""
    scenario = load_scenario(scenario_path)
    history = open_history(history_dir)
    tz = scenario.site.timezone
    if history.end is None:
        raise ValueError(f"{history_dir} holds no readings")
    if month is None:
        last = datetime.fromtimestamp(history.end - 1, tz=ZoneInfo(tz))
        month = f"{last.year:04d}-{last.month:02d}"
    start, end = month_bounds(month, tz)
    interval = history.interval_s
    if start % interval or end % interval:
        raise ValueError(f"month {month} does not start on an interval of {interval}s in {tz}")
    tariffs: dict[str, Tariff] = {name: parse_tariff(name, table) for name, table in scenario.tariffs.items()}
    if tariff_name is not None and tariff_name not in tariffs:
        known = ", ".join(sorted(tariffs)) or "none"
        raise ValueError(f"--tariff {tariff_name!r} is not in the scenario; it has: {known}")
    specs = {t.id: t for t in scenario.site.twins}
    rows: list[tuple[int, str, str, str]] = []  # column, account, utility, tariff
    for column, twin_id in enumerate(history.topology.ids):
        spec = specs.get(twin_id)
        if spec is None or spec.role != "sub" or spec.account is None or spec.utility is None:
            continue
        name = spec.tariff
        if tariff_name is not None and tariffs[tariff_name].utility == spec.utility:
            name = tariff_name
        if name is None:
            continue
        rows.append((column, spec.account, spec.utility, name))
    if not rows:
        raise ValueError("no billed meter in this history: meters need an account and a tariff in the scenario")
    order = sorted({name for *_, name in rows})
    index = {name: i for i, name in enumerate(order)}
    n = (end - start) // interval
    tables = price_tables([tariffs[name] for name in order], start, n, interval, tz)
    columns = [c for c, *_ in rows]
    energy = history.read(start, end, columns)
    used0 = np.zeros(len(rows))
    for i, (_, _, _, name) in enumerate(rows):
        if tariffs[name].period == "year":  # the year's use so far, from the history
            year_start = month_bounds(f"{month[:4]}-01", tz)[0]
            if year_start < start:
                used0[i] = float(np.nansum(history.read(year_start, start, [columns[i]]), dtype=np.float64))
    out = bill_fleet(energy, np.array([index[name] for *_, name in rows]), used0, tables)
    lines: dict[tuple[str, str], Line] = {}
    for i, (_, account, utility, name) in enumerate(rows):
        key = (account, utility)
        if key not in lines:
            lines[key] = Line(account, utility, name, 0, 0.0, 0.0, np.zeros(MAX_BANDS), np.zeros(MAX_BANDS),
                              np.zeros(MAX_TIERS), np.zeros(MAX_TIERS))
        line = lines[key]
        line.meters += 1
        line.units += float(out["band_units"][i].sum())
        line.fen += float(out["charge_fen"][i])
        line.band_units += out["band_units"][i]
        line.band_fen += out["band_fen"][i]
        line.tier_units += out["tier_units"][i]
        line.tier_fen += out["tier_fen"][i]
    band_names = {name: tables.band_names[i] for i, name in enumerate(order)}
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
