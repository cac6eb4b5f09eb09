"""Register maps: the shipped maps load, values round-trip through registers exactly as
pymodbus's own converters lay them out, and a bad map names its file and point."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client import ModbusTcpClient

from devices.modbus.maps import MAPS_DIR, MapError, Point, decode, encode, load_map, load_map_file, plan_reads

SHIPPED = sorted(p.stem for p in MAPS_DIR.glob("*.toml"))
DT = ModbusTcpClient.DATATYPE
PYMODBUS_TYPE = {"u16": DT.UINT16, "i16": DT.INT16, "u32": DT.UINT32, "i32": DT.INT32, "u64": DT.UINT64,
                 "f32": DT.FLOAT32, "f64": DT.FLOAT64}
RANGES = {"u16": (0, 2**16 - 1), "i16": (-2**15, 2**15 - 1), "u32": (0, 2**32 - 1), "i32": (-2**31, 2**31 - 1),
          "u64": (0, 2**64 - 1)}


def test_every_shipped_map_loads_and_its_reads_cover_every_point():
    """Each map loads; the planned reads cover every point once, within max_read."""
    assert {"metertwin-pm1", "metertwin-pm3", "metertwin-wm1", "metertwin-el1", "metertwin-sc1",
            "sdm630"} <= set(SHIPPED)
    for name in SHIPPED:
        regmap = load_map(name)
        reads = plan_reads(regmap)
        covered = [p.name for r in reads for p in r.points]
        assert sorted(covered) == sorted(p.name for p in regmap.points), name
        for r in reads:
            assert r.count <= regmap.max_read * (16 if r.table in ("coil", "discrete") else 1)
            assert all(r.address <= p.address and p.address + p.size <= r.address + r.count for p in r.points)


def test_sdm630_points_sit_where_eastron_publishes_them():
    """Eastron's 30073 (total import kWh) is protocol address 72, float32, high word first."""
    sdm = load_map("sdm630")
    assert (sdm.by_name["import_energy"].address, sdm.by_name["import_energy"].type) == (72, "f32")
    assert sdm.by_name["frequency"].address == 70 and sdm.feeding("energy_kwh").name == "import_energy"
    assert plan_reads(sdm)[0].address == 0


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(PYMODBUS_TYPE)), word=st.sampled_from(["big", "little"]), data=st.data())
def test_registers_match_pymodbus_converters(kind, word, data):
    """Our encoding of every type and word order equals pymodbus's, and decodes back."""
    if kind in RANGES:
        low, high = RANGES[kind]
        raw = data.draw(st.integers(low, high))
    else:
        raw = data.draw(st.floats(allow_nan=False, allow_infinity=False, width=32 if kind == "f32" else 64))
    point = Point("p", "holding", 0, kind, word_order=word)
    registers = encode(point, raw)
    assert registers == ModbusTcpClient.convert_to_registers(raw, PYMODBUS_TYPE[kind], word_order=word)
    assert decode(point, registers) == float(raw) or (kind in RANGES and abs(raw) > 2**53)


def test_byte_order_swaps_within_each_register():
    """Little byte order swaps the two bytes of each register, then words are ordered."""
    big = Point("p", "holding", 0, "u32")
    swapped = Point("p", "holding", 0, "u32", byte_order="little", word_order="little")
    assert encode(big, 0x11223344) == [0x1122, 0x3344]
    assert encode(swapped, 0x11223344) == [0x4433, 0x2211]
    assert decode(swapped, [0x4433, 0x2211]) == 0x11223344


def test_scale_range_and_nan():
    """Scaled values round-trip; out-of-range and NaN are not valid; a value too big for
    its type is refused."""
    point = Point("v", "holding", 0, "u16", scale=0.1, low=0, high=300)
    assert decode(point, encode(point, 231.4)) == pytest.approx(231.4)
    assert not point.valid(300.1) and not point.valid(math.nan) and point.valid(0)
    with pytest.raises(ValueError, match="does not fit u16"):
        encode(point, 7000.0)


BASE = """\
[model]
name = "m"
kind = "electric_meter"

[[points]]
name = "energy"
table = "holding"
address = 0
type = "u32"
field = "energy_kwh"
"""


@pytest.mark.parametrize(("extra", "message"), [
    ('[[points]]\nname = "power"\ntable = "holding"\naddress = 1\ntype = "u16"\n',
     "point 'power' overlaps 'energy'"),
    ('[[points]]\nname = "power"\ntable = "holding"\naddress = 4\ntype = "u24"\n',
     "point 'power': type must be one of"),
    ('[[points]]\nname = "power"\ntable = "holding"\naddress = -1\ntype = "u16"\n',
     "point 'power': 0 <= address"),
    ('[[points]]\nname = "power"\ntable = "holding"\naddress = 65535\ntype = "u32"\n',
     "point 'power': 0 <= address"),
    ('[[points]]\nname = "relay"\ntable = "coil"\naddress = 0\ntype = "u16"\n',
     "point 'relay': a coil point is bool"),
    ('[[points]]\nname = "power"\ntable = "input"\naddress = 0\ntype = "u16"\naccess = "read-write"\n',
     "point 'power': a input point cannot be written"),
    ('[[points]]\nname = "power"\ntable = "input"\naddress = 0\ntype = "u16"\nfield = "volume_m3"\n',
     "point 'power': field 'volume_m3' is not a field of a electric_meter"),
    ('[[points]]\nname = "energy"\ntable = "input"\naddress = 0\ntype = "u16"\n',
     "point 'energy': a second point with this name"),
])
def test_a_bad_map_names_its_file_and_point(tmp_path, extra, message):
    path = tmp_path / "bad.toml"
    path.write_text(BASE + "\n" + extra)
    with pytest.raises(MapError, match="bad.toml: " + message.replace("(", r"\(")):
        load_map_file(path)


def test_a_missing_model_or_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[model\nname=1")
    with pytest.raises(MapError, match="broken.toml"):
        load_map_file(path)
    with pytest.raises(MapError, match="no register map 'nope'; shipped: .*sdm630"):
        load_map("nope")


def test_a_poll_reads_a_prepaid_meter_in_one_request_and_skips_unused_registers():
    """The prepaid meter's polled points sit in one holding block; a device that refuses
    reads of unused registers gets separate requests."""
    pm1 = load_map("metertwin-pm1")
    reads = plan_reads(pm1, pm1.polled())
    assert [(r.table, r.address, r.count) for r in reads] == [("holding", 0, 25)]
    assert pm1.control("relay_closed").table == "coil" and pm1.feeding("relay_closed").table == "holding"
    sdm = load_map("sdm630")
    assert len(plan_reads(sdm, sdm.polled())) == 2  # 44 unused registers between the blocks: two requests
    strict = type(sdm)(sdm.name, sdm.kind, sdm.points, read_gaps=False)
    spans = [(r.address, r.count) for r in plan_reads(strict)]
    assert (0, 12) in spans and all(c <= 24 for _, c in spans)
