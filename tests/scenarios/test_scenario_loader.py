"""The scenario loader: shipped files, ids and order, overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scenarios.loader import ScenarioError, expand_ids, load_scenario, load_scenario_text, parse_schedule
from twin.model import Kind

SHIPPED = Path(__file__).resolve().parents[2] / "scenarios"

BASE = """\
[site]
id = "S1"

[profiles.household]
monthly_kwh = 200

[tariffs.p]
kind = "flat"
price_yuan = 0.55

[[buildings]]
ids = "B01..B02"
floors = 3
rooms_per_floor = 2
electric = { phases = 1, tariff = "p" }
water = { valve = true }
master = { electric = true, water = true }
elevators = { count = 2 }

[[buildings.shared]]
name = "corridor"
circuit = "lighting"
power_kw = 1.0
schedule = "18:00-06:00"
"""


def test_every_shipped_scenario_loads():
    """The four shipped scenarios load, at the sizes they promise."""
    demo = load_scenario(SHIPPED / "demo-community.toml")
    assert len(demo.site.buildings) >= 4
    assert demo.site.twins_of(Kind.ELEVATOR) and demo.site.twins_of(Kind.SHARED_CIRCUIT)
    assert {t.id for t in demo.site.twins if t.role == "master"} >= {"B01.mm", "B01.mw"}
    mall = load_scenario(SHIPPED / "mall.toml")
    shops = mall.site.twins_of(Kind.ELECTRIC_METER)
    assert all(t.phases == 3 for t in shops)
    assert mall.fee_items and "commercial-tou" in mall.tariffs
    district = load_scenario(SHIPPED / "district-10k.toml")
    assert 9_000 <= len(district.site.rooms) <= 11_000
    load = load_scenario(SHIPPED / "loadtest-100k.toml")
    subs = [t for t in load.site.twins if t.kind is Kind.ELECTRIC_METER and t.role == "sub"]
    assert len(subs) == 100_000
    assert len([t for t in load.site.twins if t.kind is Kind.WATER_METER and t.role == "sub"]) == 100_000
    assert len((SHIPPED / "loadtest-100k.toml").read_text().splitlines()) < 20


def test_ids_and_order_follow_the_contract():
    """Building twins first (masters, elevators, shared), then rooms floor by floor, each
    room's electric meter, water meter and valve; sub-meters name their masters."""
    s = load_scenario_text(BASE)
    ids = [t.id for t in s.site.twins]
    assert ids[:5] == ["B01.mm", "B01.mw", "B01.el1", "B01.el2", "B01.sc-corridor"]
    assert ids[5:8] == ["B01-01-01.em", "B01-01-01.wm", "B01-01-01.vl"]
    em = s.site.twin("B02-03-02.em")
    assert (em.building, em.floor, em.room, em.master, em.tariff) == ("B02", 3, "B02-03-02", "B02.mm", "p")
    assert s.site.twin("B02-03-02.wm").master == "B02.mw"
    assert s.site.twin("B02-03-02.vl").valve_of == "B02-03-02.wm"
    assert s.site.twin("B01.el1").master == "B01.mm"
    assert len(s.site.rooms) == 12
    assert s.site.buildings[0].twins == ["B01.mm", "B01.mw", "B01.el1", "B01.el2", "B01.sc-corridor"]


def test_room_overrides_and_one_account_many_meters():
    """Overrides change one room; rooms sharing an account id make one account holding
    all their meters; a vacant room has no account."""
    text = BASE + """
[[rooms]]
id = "B01-02-01"
electric = { phases = 3 }
area_m2 = 140
[[rooms]]
id = "B01-02-02"
account = "A-FAMILY"
[[rooms]]
id = "B01-03-01"
account = "A-FAMILY"
water = false
[[rooms]]
id = "B02-01-01"
vacant = true
"""
    s = load_scenario_text(text)
    assert s.site.twin("B01-02-01.em").phases == 3
    assert s.site.twin("B01-02-01.em").tariff == "p"  # merged over the block
    family = next(a for a in s.site.accounts if a.id == "A-FAMILY")
    assert family.rooms == ["B01-02-02", "B01-03-01"]
    assert family.meters == ["B01-02-02.em", "B01-02-02.wm", "B01-03-01.em"]
    assert s.site.twin("B02-01-01.em").account is None
    assert s.site.twin("B02-01-01.em").profile == "vacant"
    room = next(r for r in s.site.rooms if r.id == "B01-02-01")
    assert room.area_m2 == 140


def test_injections_parse_relative_and_absolute_times():
    """[[inject]] takes relative ('2d 3h') and absolute times and the kind's parameters."""
    text = BASE + """
[[inject]]
twin = "B01-01-01.wm"
kind = "leak"
start = "2d 3h"
end = "2026-01-09T06:00"
flow_lph = 12
"""
    inj = load_scenario_text(text).injections[0]
    assert inj.start.offset.total_seconds() == (2 * 24 + 3) * 3600
    assert inj.end.at.isoformat() == "2026-01-09T06:00:00"
    assert inj.params == {"flow_lph": 12.0}


ERRORS = [
    # (replace this, with this, line, field fragment, message fragment)
    ('floors = 3', 'floors = "three"', 13, "buildings[0].floors", "must be a int"),
    ('phases = 1', 'phases = 2', 15, "buildings[0].electric.phases", "phases must be 1 or 3"),
    ('floors = 3', 'floors = 3\ncolour = "red"', 14, "buildings[0].colour", "unknown key 'colour'"),
    ('tariff = "p"', 'tariff = "q"', 15, "buildings[0].electric.tariff", "tariff 'q' is not defined"),
    ('schedule = "18:00-06:00"', 'schedule = "18:00-25:00"', 24, "buildings[0].shared[0].schedule",
     "not a time of day"),
    ('id = "S1"', 'id = "S1"\ninterval = "7min"', 3, "site.interval", "interval must be one of"),
    ('id = "S1"', 'id = "S1"\ntimezone = "Mars/Olympus"', 3, "site.timezone", "unknown time zone"),
    ('monthly_kwh = 200', 'monthly_kwh = -5', 5, "profiles.household.monthly_kwh", ">= 0"),
    ('[[buildings]]\nids = "B01..B02"', '[[buildings]]\nprofile = "nobody"\nids = "B01..B02"', 12,
     "buildings[0].profile", "profile 'nobody' is not defined"),
    ('price_yuan = 0.55\n', 'price_yuan = 0.55\n[[buildings]]\nid = "B02"\nfloors = 1\nrooms_per_floor = 1\n', 10,
     "buildings[1].ids", "building B02 is defined twice"),
    ('monthly_kwh = 200', 'monthly_kwh = 200 200', 5, "profiles.household.monthly_kwh", "TOML syntax"),
    ('price_yuan = 0.55', 'price_yuan = -1', 9, "tariffs.p.price_yuan", "give the price in yuan"),
]


@pytest.mark.parametrize(("old", "new", "line", "field", "message"), ERRORS)
def test_malformed_files_name_file_line_and_field(old, new, line, field, message):
    """Each kind of fault raises ScenarioError naming the file, the line and the field."""
    text = BASE.replace(old, new, 1)
    assert text != BASE
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(text, "site.toml")
    err = caught.value
    assert message in err.message, err
    assert err.field.startswith(field) or field in err.field, err
    assert str(err).startswith(f"site.toml:{err.line}")
    if field != "buildings[1].ids":
        assert err.line == line, err


def test_unknown_injection_twin_and_kind_are_refused():
    """An injection into a twin that does not exist, or of an unknown kind, is refused."""
    with pytest.raises(ScenarioError, match=r"site.toml:\d+: inject\[0\].twin: no twin 'B09-01-01.em'"):
        load_scenario_text(BASE + '[[inject]]\ntwin = "B09-01-01.em"\nkind = "h1"\nstart = "1d"\n', "site.toml")
    with pytest.raises(ScenarioError, match=r"inject\[0\].kind: unknown kind 'h9'"):
        load_scenario_text(BASE + '[[inject]]\ntwin = "B01-01-01.em"\nkind = "h9"\nstart = "1d"\n')
    with pytest.raises(ScenarioError, match=r"inject\[0\].flow: unknown key"):
        load_scenario_text(BASE + '[[inject]]\ntwin = "B01-01-01.wm"\nkind = "leak"\nstart = "1d"\nflow = 3\n')


def test_residents_table():
    """[residents] sets the prepaid behaviour; a malformed range is refused by field."""
    s = load_scenario_text(BASE + "[residents]\nopening_yuan = [20, 200]\ntopup_yuan = [50, 100]\n")
    assert s.residents.opening_yuan == (20.0, 200.0) and s.residents.topup_yuan == (50.0, 100.0)
    with pytest.raises(ScenarioError, match=r"residents.opening_yuan: give \[low, high\]"):
        load_scenario_text(BASE + "[residents]\nopening_yuan = 20\n")


def test_a_missing_file_is_a_scenario_error(tmp_path):
    """A path that does not exist is reported as such, not as a traceback."""
    with pytest.raises(ScenarioError, match="no such file"):
        load_scenario(tmp_path / "nope.toml")


def test_schedules_and_id_ranges():
    """Schedules split windows that wrap midnight; id ranges keep their zero padding."""
    assert parse_schedule("18:00-06:00") == [(1080, 1440), (0, 360)]
    assert parse_schedule("always") == [(0, 1440)]
    assert parse_schedule("08:00-12:00, 13:00-24:00") == [(480, 720), (780, 1440)]
    assert expand_ids("B08..B11") == ["B08", "B09", "B10", "B11"]
    with pytest.raises(ValueError):
        expand_ids("B11..B08")


@settings(max_examples=40, deadline=None)
@given(blocks=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 30), st.integers(1, 12)),
                       min_size=1, max_size=4))
def test_blocks_make_exactly_their_rooms(blocks):
    """Any set of building blocks gives floors x rooms per floor rooms in each building,
    with unique ids, and one electric meter per room."""
    text = '[site]\nid = "P"\n'
    start = 1
    for count, floors, per_floor in blocks:
        text += (f'[[buildings]]\nids = "B{start:03d}..B{start + count - 1:03d}"\nfloors = {floors}\n'
                 f"rooms_per_floor = {per_floor}\nelectric = {{}}\n")
        start += count
    s = load_scenario_text(text)
    expected = [floors * per_floor for count, floors, per_floor in blocks for _ in range(count)]
    assert [len(b.rooms) for b in s.site.buildings] == expected
    ids = [t.id for t in s.site.twins]
    assert len(ids) == len(set(ids)) == sum(expected)


@settings(max_examples=150, deadline=None)
@given(position=st.integers(0, len(BASE)), junk=st.text(max_size=8))
def test_any_mutation_fails_only_with_a_scenario_error(position, junk):
    """Whatever is inserted anywhere in a valid file, loading either works or raises a
    ScenarioError: never another exception."""
    text = BASE[:position] + junk + BASE[position:]
    try:
        load_scenario_text(text)
    except ScenarioError as err:
        assert str(err)


MODBUS_SITE = """\
[site]
id = "MB"

[[buildings]]
id = "B01"
floors = 1
rooms_per_floor = 2
electric = {}
master = { electric = true }

[[modbus]]
twin = "B01.mm"
url = "modbus://10.0.3.17:502/3"
model = "sdm630"

[[modbus]]
twin = "B01-01-02.em"
url = "rtu:///dev/ttyUSB0/7?baud=2400"
model = "metertwin-pm1"
"""


def test_modbus_sources_name_twin_gateway_unit_and_map():
    sources = load_scenario_text(MODBUS_SITE).modbus
    assert [(s.twin, s.host, s.port, s.unit, s.model, s.baud) for s in sources] == [
        ("B01.mm", "10.0.3.17", 502, 3, "sdm630", 0), ("B01-01-02.em", "/dev/ttyUSB0", 0, 7, "metertwin-pm1", 2400)]


@pytest.mark.parametrize(("old", "new", "field", "message"), [
    ('url = "modbus://10.0.3.17:502/3"', 'url = "modbus://10.0.3.17:502/300"', "modbus[0].url", "unit id 1..247"),
    ('url = "modbus://10.0.3.17:502/3"', 'url = "http://x/3"', "modbus[0].url", "scheme"),
    ('model = "sdm630"', 'model = "sdm999"', "modbus[0].model", "no register map 'sdm999'"),
    ('twin = "B01.mm"', 'twin = "B09.mm"', "modbus[0].twin", "no metered twin 'B09.mm'"),
])
def test_a_bad_modbus_source_names_line_and_field(old, new, field, message):
    text = MODBUS_SITE.replace(old, new)
    with pytest.raises(ScenarioError) as err:
        load_scenario_text(text)
    assert field in str(err.value) and message in str(err.value)
    assert err.value.line == text.splitlines().index(new) + 1
