"""`metertwin bill`: a stored history billed under the scenario's tariffs or another one."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from control.bill import bill_history, month_bounds, write_csv
from control.cli import main
from twin.history import open_history
from twin.ledger import round_half_up

SCENARIO = """\
[site]
id = "BILL"

[tariffs.power]
kind = "flat"
price_yuan = 0.55

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
thresholds_m3 = [5]
prices_yuan = [3.8, 5.3]

[[buildings]]
id = "B01"
floors = 2
rooms_per_floor = 2
electric = { tariff = "power" }
water = { tariff = "water" }

[[rooms]]
id = "B01-02-01"
account = "A-B01-01-01"
"""


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    root = tmp_path_factory.mktemp("bill")
    scenario = root / "bill.toml"
    scenario.write_text(SCENARIO)
    assert main(["simulate", str(scenario), "--days", "31", "--out", str(root / "h"), "--quiet"]) == 0
    return scenario, root / "h"


def test_flat_bill_is_units_times_price_per_account(history):
    """Under the flat tariff each account pays its meters' month of units x 55 fen,
    rounded half-up once; an account with two flats gets one line for both meters."""
    scenario, directory = history
    month, lines, names = bill_history(str(scenario), str(directory), "2026-01")
    h = open_history(directory)
    start, end = month_bounds("2026-01", "Asia/Shanghai")
    electric = {line.account: line for line in lines if line.utility == "electric"}
    assert electric["A-B01-01-01"].meters == 2
    for account, line in electric.items():
        meters = [t for t in h.topology.columns if t.account == account and t.utility == "electric"]
        units = float(np.nansum(h.read(start, end, [m.id for m in meters]), dtype=np.float64))
        assert line.units == pytest.approx(units, rel=1e-9)
        assert round_half_up(line.fen) == round_half_up(units * 55.0)
    out = io.StringIO()
    totals = write_csv(month, lines, names, out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert rows[-2]["account"] == "TOTAL" and rows[-1]["account"] == "TOTAL"
    assert float(rows[-2]["charge_yuan"]) == pytest.approx(totals["electric"])


def test_water_tiers_and_another_tariff_to_compare(history):
    """Water crosses its 5 m3 tier within the month and pays the surcharge on the rest;
    `--tariff tou` bills the same electricity by band instead, parts adding to the charge."""
    scenario, directory = history
    _, lines, _ = bill_history(str(scenario), str(directory), "2026-01")
    crossed = 0
    for line in (x for x in lines if x.utility == "water" and x.meters == 1):
        assert line.tier_units[0] == pytest.approx(min(line.units, 5.0))
        assert line.tier_fen[1] == pytest.approx(max(line.units - 5.0, 0.0) * 150.0)
        crossed += line.units > 5.0
    assert crossed > 0
    _, compared, names = bill_history(str(scenario), str(directory), "2026-01", "tou")
    for line in (x for x in compared if x.utility == "electric"):
        assert line.tariff == "tou"
        assert line.band_fen.sum() + line.tier_fen.sum() == pytest.approx(line.fen)
        peak = names["tou"].index("peak")
        assert line.band_fen[peak] == pytest.approx(line.band_units[peak] * 90.0)


def test_errors_are_one_line(history, capsys):
    """An unknown tariff or a malformed month is one line on stderr and status 2."""
    scenario, directory = history
    assert main(["bill", str(scenario), str(directory), "--tariff", "cheap"]) == 2
    assert "--tariff 'cheap' is not in the scenario; it has: power, tou, water" in capsys.readouterr().err
    assert main(["bill", str(scenario), str(directory), "--month", "January"]) == 2
    assert "use YYYY-MM" in capsys.readouterr().err
    assert main(["bill", str(scenario), str(directory), "--month", "2024-06"]) == 2  # not a month of zeros
    assert "--month 2024-06 is outside the history, which holds 2026-01" in capsys.readouterr().err
    other = scenario.with_name("other.toml")
    other.write_text(scenario.read_text().replace('"B01', '"C01').replace('"A-B01', '"A-C01'))  # another site
    assert main(["bill", str(other), str(directory)]) == 2
    assert "none of the history's twins is in the scenario" in capsys.readouterr().err
