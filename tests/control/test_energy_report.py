"""The energy report: units and fen by band per account and building, beside the same
month last year, checked against figures computed here from the readings."""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
from collections import defaultdict
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx
import numpy as np
import pytest

from control.api.app import create_app
from control.auth import Role
from control.bill import month_bounds
from control.cli import main
from control.energy_report import NoReadings, energy_report, to_csv
from control.runtime import Platform
from tests.control.test_run_http import Running, make_key
from twin.history import open_history
from twin.ledger import round_half_up

TZ = ZoneInfo("Asia/Shanghai")

# hourly intervals make 400 days of two buildings cost about a second to simulate
SCENARIO = """\
[site]
id = "EN"
interval = "1h"

[tariffs.tou]
kind = "time_of_use"
bands = [
  { name = "peak", price_yuan = 0.9, hours = ["08:00-22:00"] },
  { name = "valley", price_yuan = 0.3, hours = ["22:00-08:00"] },
]

[tariffs.water]
kind = "tiered"
utility = "water"
period = "month"
thresholds_m3 = [2]
prices_yuan = [3.8, 5.3]

[[buildings]]
ids = "B01..B02"
floors = 2
rooms_per_floor = 2
electric = { tariff = "tou" }
water = { tariff = "water" }

[[rooms]]
id = "B01-02-01"
account = "A-B01-01-01"
"""


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A history from 2025-01-01 to 2026-02-05 (site-local): January 2026 has a last year,
    February 2026 is a month in progress."""
    root = tmp_path_factory.mktemp("energy")
    scenario = root / "energy.toml"
    scenario.write_text(SCENARIO)
    assert main(["simulate", str(scenario), "--days", "400", "--start", "2025-01-01", "--step", "1h",
                 "--out", str(root / "h"), "--quiet"]) == 0
    return scenario, root / "h"


def expected(directory, month: str, by: str, until: datetime | None = None) -> dict[tuple[str, str], dict]:
    """Per (account or building, utility), from the raw readings: units, exact fen, units
    and fen per band (peak 08-22h at 90 fen, valley at 30; water flat 380 fen), and water's
    per-meter tier surcharge (150 fen a m3 past 2 m3)."""
    h = open_history(directory)
    start, end = month_bounds(month, "Asia/Shanghai")
    if until is not None:
        end = int(until.timestamp())
    hours = np.array([datetime.fromtimestamp(int(t), tz=TZ).hour for t in h.times(start, end)])
    peak = (hours >= 8) & (hours < 22)
    out: dict[tuple[str, str], dict] = defaultdict(lambda: defaultdict(float))
    for column in h.topology.columns:
        if column.account is None or column.role != "sub":
            continue
        values = np.nan_to_num(h.read(start, end, [column.id])[0].astype(np.float64))
        row = out[(column.account if by == "account" else column.building, column.utility)]
        units = values.sum()
        row["units"] += units
        row["meters"] += 1
        if column.utility == "electric":
            row["peak_units"] += values[peak].sum()
            row["valley_units"] += values[~peak].sum()
            row["peak_fen"] += values[peak].sum() * 90
            row["valley_fen"] += values[~peak].sum() * 30
            row["fen"] += values[peak].sum() * 90 + values[~peak].sum() * 30
        else:
            surcharge = max(units - 2.0, 0.0) * 150
            row["flat_units"] += units
            row["flat_fen"] += units * 380
            row["surcharge_fen"] += surcharge
            row["fen"] += units * 380 + surcharge
    return out


def check_figures(row: dict, want: dict, prefix: str = "") -> None:
    assert row[f"{prefix}units"] == pytest.approx(want["units"], abs=1e-3)
    assert row[f"{prefix}fen"] == round_half_up(want["fen"])
    bands = ("peak", "valley") if row["utility"] == "electric" else ("flat",)
    for band in bands:
        assert row[f"{prefix}{band}_units"] == pytest.approx(want[f"{band}_units"], abs=1e-3)
        assert row[f"{prefix}{band}_fen"] == round_half_up(want[f"{band}_fen"])
    assert row[f"{prefix}surcharge_fen"] == round_half_up(want["surcharge_fen"])


def test_account_figures_match_the_readings_and_last_year(history):
    """Each account's units and fen per band, total and tier surcharge are its meters'
    readings priced by hand, fen rounded half-up once per figure; last year's January sits
    beside them, and the change is the percentage of the two totals."""
    scenario, directory = history
    rows = energy_report(str(scenario), str(directory), "2026-01", "account")
    now, before = expected(directory, "2026-01", "account"), expected(directory, "2025-01", "account")
    assert {(r["account"], r["utility"]) for r in rows} == set(now)
    assert [(r["utility"], r["account"]) for r in rows] == sorted((u, a) for a, u in now)
    for row in rows:
        key = (row["account"], row["utility"])
        assert row["month"] == "2026-01" and row["last_year_month"] == "2025-01"
        assert row["from"] == "2026-01-01T00:00+08:00" and row["until"] == "2026-02-01T00:00+08:00"
        assert row["unit"] == {"electric": "kWh", "water": "m3"}[row["utility"]]
        assert row["meters"] == now[key]["meters"]
        check_figures(row, now[key])
        check_figures(row, before[key], "last_year_")
        units_change = 100 * (now[key]["units"] - before[key]["units"]) / before[key]["units"]
        assert row["units_change_pct"] == pytest.approx(units_change, abs=0.051)
        assert row["fen_change_pct"] == round(100 * (row["fen"] - row["last_year_fen"]) / row["last_year_fen"], 1)
    two_flats = next(r for r in rows if r["account"] == "A-B01-01-01" and r["utility"] == "electric")
    assert two_flats["meters"] == 2
    assert any(r["surcharge_fen"] > 0 for r in rows if r["utility"] == "water")


def test_a_building_is_the_sum_of_its_accounts(history):
    """A building's units (total and per band) and meters are the sums of its accounts';
    its fen, rounded once, is within half a fen per account of the sum of theirs; this year
    and last year alike."""
    scenario, directory = history
    accounts = energy_report(str(scenario), str(directory), "2026-01", "account")
    buildings = energy_report(str(scenario), str(directory), "2026-01", "building")
    assert {(r["building"], r["utility"]) for r in buildings} == {(b, u) for b in ("B01", "B02")
                                                                  for u in ("electric", "water")}
    want = expected(directory, "2026-01", "building")
    for row in buildings:
        check_figures(row, want[(row["building"], row["utility"])])
        members = [r for r in accounts if r["utility"] == row["utility"]
                   and r["account"].startswith(f"A-{row['building']}-")]
        assert row["meters"] == sum(r["meters"] for r in members)
        for column in [c for c in row if c.endswith("units")]:  # this year's and last year's
            assert row[column] == pytest.approx(sum(r[column] for r in members), abs=1e-3 * len(members))
        for column in ("fen", "last_year_fen"):
            assert abs(row[column] - sum(r[column] for r in members)) <= len(members) / 2


def test_a_month_in_progress_is_compared_with_the_same_part_of_last_year(history):
    """The history ends on 5 February 2026: February's figures run to then, and last year's
    cover 1 to 5 February 2025, not the whole month."""
    scenario, directory = history
    rows = energy_report(str(scenario), str(directory), "2026-02", "building")
    assert energy_report(str(scenario), str(directory), None, "building") == rows  # default: the last month
    now = expected(directory, "2026-02", "building", datetime(2026, 2, 5, tzinfo=TZ))
    before = expected(directory, "2025-02", "building", datetime(2025, 2, 5, tzinfo=TZ))
    for row in rows:
        assert row["from"] == "2026-02-01T00:00+08:00" and row["until"] == "2026-02-05T00:00+08:00"
        check_figures(row, now[(row["building"], row["utility"])])
        check_figures(row, before[(row["building"], row["utility"])], "last_year_")


def test_no_last_year_before_the_history_and_the_csv_leaves_it_empty(history):
    """In the history's first year the last-year figures and the changes are None, and
    empty cells in the CSV, which parses back to the rows' figures."""
    scenario, directory = history
    rows = energy_report(str(scenario), str(directory), "2025-03", "account")
    assert rows and all(r["last_year_units"] is None and r["last_year_fen"] is None
                        and r["units_change_pct"] is None for r in rows)
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert len(parsed) == len(rows)
    for row, cells in zip(rows, parsed, strict=True):
        assert cells["account"] == row["account"] and int(cells["fen"]) == row["fen"]
        assert float(cells["units"]) == pytest.approx(row["units"])
        assert cells["last_year_fen"] == "" and cells["fen_change_pct"] == ""
        if row["utility"] == "water":  # electricity's bands are not water's: empty, not 0
            assert cells["peak_units"] == "" and float(cells["flat_units"]) == pytest.approx(row["flat_units"])
        else:
            assert cells["flat_units"] == "" and int(cells["peak_fen"]) == row["peak_fen"]


def test_errors_name_the_month_and_the_span_of_the_history(history):
    """A month the history does not hold names the month and the span it does hold; a
    malformed month or grouping says what to write instead."""
    scenario, directory = history
    with pytest.raises(NoReadings, match=r"month 2024-11 is not in the history, which covers "
                                         r"2025-01-01T00:00\+08:00 to 2026-02-05T00:00\+08:00: "
                                         r"pick a month from 2025-01 to 2026-02"):
        energy_report(str(scenario), str(directory), "2024-11")
    with pytest.raises(NoReadings, match="month 2026-03 is not in the history"):
        energy_report(str(scenario), str(directory), "2026-03")
    with pytest.raises(ValueError, match=r"month 'January': use YYYY-MM, for example 2026-01"):
        energy_report(str(scenario), str(directory), "January")
    with pytest.raises(ValueError, match=r"by is account or building, not 'floor'"):
        energy_report(str(scenario), str(directory), "2026-01", "floor")


def test_the_report_over_http_from_a_running_platform(history, tmp_path):
    """GET /api/reports/energy on a platform whose history holds last year: JSON rows equal
    to the report's, CSV that parses, 401 without a key, and 4xx JSON errors that say what
    was wrong."""
    scenario, directory = history
    data = tmp_path / "data"
    shutil.copytree(directory, data / "history")
    platform = Platform(str(scenario), data, start=datetime(2026, 2, 5))
    try:
        key = platform.auth.create_key("reports", Role.VIEWER)
        asyncio.run(_ask_over_http(platform, key, energy_report(str(scenario), str(directory), "2026-01", "building")))
    finally:
        platform.close()


async def _ask_over_http(platform: Platform, key: str, want: list[dict]) -> None:
    transport = httpx.ASGITransport(app=create_app(platform))
    async with httpx.AsyncClient(transport=transport, base_url="http://metertwin",
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        got = await client.get("/api/reports/energy", params={"month": "2026-01", "by": "building"})
        assert got.status_code == 200 and got.json() == want
        text = await client.get("/api/reports/energy", params={"month": "2026-01", "format": "csv"})
        assert text.status_code == 200 and text.headers["content-type"].startswith("text/csv")
        parsed = list(csv.DictReader(io.StringIO(text.text)))
        assert {r["account"] for r in parsed} == {f"A-B0{b}-0{f}-0{r}" for b in (1, 2) for f in (1, 2)
                                                  for r in (1, 2)} - {"A-B01-02-01"}
        missing = await client.get("/api/reports/energy", params={"month": "2020-01"})
        assert missing.status_code == 404 and "pick a month from 2025-01" in missing.json()["detail"]
        malformed = await client.get("/api/reports/energy", params={"month": "2026-1"})
        assert malformed.status_code == 400 and "use YYYY-MM" in malformed.json()["detail"]
        grouping = await client.get("/api/reports/energy", params={"by": "floor"})
        assert grouping.status_code == 422
        anonymous = await client.get("/api/reports/energy", headers={"Authorization": ""})
        assert anonymous.status_code == 401


def test_the_report_over_a_real_socket_while_the_platform_writes(history, tmp_path):
    """`metertwin run` on a data directory whose history holds last year: a viewer's key
    gets January 2026 beside January 2025 over real HTTP while the world appends rows."""
    scenario, directory = history
    data = tmp_path / "data"
    shutil.copytree(directory, data / "history")
    run = Running(scenario, data)
    try:
        key = make_key(data, "viewer")
        got = run.get("/api/reports/energy?month=2026-01&by=building", key)
        assert got.status_code == 200
        assert got.json() == energy_report(str(scenario), str(directory), "2026-01", "building")
        assert run.get("/api/reports/energy?month=2026-01").status_code == 401
    finally:
        assert run.stop() == 0
