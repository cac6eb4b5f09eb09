"""Emulated Modbus gateways on real loopback sockets: mbpoll and pymodbus clients read the
twins' values through the register maps and write the world's controls; each fault kind
behaves as documented; a gateway answers Modbus RTU over a socat pty and Modbus/TCP
Security to a client holding the client certificate; `metertwin emulate` serves a
scenario and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import math
import os
import re
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import ModbusSerialClient, ModbusTcpClient, ModbusTlsClient
from pymodbus.exceptions import ModbusException

from devices.modbus.certs import client_context, ensure_certs, server_context
from devices.modbus.emulator import HELD_DEFAULTS, Emulator, Fault, PtyPair, Rtu, Tls, WorldSource
from devices.modbus.layout import Gateway, Unit, layout
from devices.modbus.maps import decode, encode, load_map
from devices.sim.world import World
from scenarios.schema import Residents
from tests.support import require_program

REPO = Path(__file__).resolve().parents[2]
#: Meter billing: the meters hold the credit; residents never top up on their own here.
RESIDENTS = Residents(opening_yuan=(80.0, 120.0), topup_below_yuan=(0.0, 0.0), billing="meter")
START = datetime(2026, 1, 5, 18, 0)  # an evening: every flat draws power
PM1 = load_map("metertwin-pm1")
SDM630 = load_map("sdm630")
#: Bounds every wait on the network; a silent unit is detected by this timeout.
SILENT_S = 0.4


@dataclass
class Plant:
    """A small live world behind its emulated gateway, served from a background thread."""

    world: World
    source: WorldSource
    emulator: Emulator
    gateways: list[Gateway]

    def where(self, twin: str) -> tuple[int, int]:
        """(port, unit id) of a twin."""
        gateway, unit = self.emulator.unit_of(twin)
        return self.emulator.ports[gateway], unit

    def reported(self, twin: str) -> dict[str, Any]:
        """The twin's reported fields now."""
        return self.world.state.twin(twin).reported

    def twins(self, model: str) -> list[str]:
        """Twins served with a register map."""
        return [u.twin for g in self.gateways for u in g.units if u.model == model]

    def advance(self, seconds: float) -> None:
        """Move the world on, as the emulate command's worker thread does."""
        self.source.advance_to(self.world.now_s + seconds)


@pytest.fixture(scope="module")
def plant(scenario_factory: Any) -> Iterator[Plant]:
    """One building: a master meter (SDM630), master water meter, elevator, two shared
    circuits and four flats with prepaid meters, water meters and valves, an hour in."""
    scenario = scenario_factory(residents=RESIDENTS, buildings=1, floors=2, rooms=2)
    world = World(scenario, seed=3, start=START, days=2, live=True)
    world.begin(lambda day: None)
    source = WorldSource(world)
    source.advance_to(3600.0)
    gateways = layout(scenario.site)
    emulator = Emulator(gateways, source, base_port=0)
    with emulator.in_thread():
        yield Plant(world, source, emulator, gateways)


def client(port: int, timeout: float = 3.0) -> ModbusTcpClient:
    """A fresh connection (a late answer must never meet the next request)."""
    c = ModbusTcpClient("127.0.0.1", port=port, timeout=timeout, retries=0)
    assert c.connect()
    return c


def mbpoll(port: int, unit: int, kind: str, address: int, count: int, *extra: str) -> list[str]:
    """Values mbpoll prints for one poll (0-based addresses)."""
    exe = require_program("mbpoll", "mbpoll")
    done = subprocess.run([exe, "-m", "tcp", "-p", str(port), "-a", str(unit), "-t", kind, "-0", "-r", str(address),
                           "-c", str(count), *extra, "-1", "127.0.0.1"], capture_output=True, text=True, timeout=20)
    values = re.findall(r"^\[(\d+)\]:\s+(\S+)", done.stdout, re.M)
    assert values, done.stdout + done.stderr
    return [v for _, v in values]


def silent(port: int, unit: int, address: int = 0, count: int = 2) -> bool:
    """True when the unit leaves a read unanswered (the client times out)."""
    with client(port, timeout=SILENT_S) as c:
        try:
            c.read_holding_registers(address, count=count, device_id=unit)
        except ModbusException:
            return True
    return False


# -- reading --------------------------------------------------------------------------------


def test_mbpoll_reads_a_prepaid_meter_as_its_twin_reports(plant: Plant) -> None:
    """Holding registers 0..24 of a PM-1, read by mbpoll and decoded through the map, carry
    the twin's energy, V, I, P, PF, f, credit, purchase total and relay state to the
    register's resolution; the four band energies add up to the total; the alarm
    thresholds hold their defaults."""
    twin = plant.twins("metertwin-pm1")[0]
    port, unit = plant.where(twin)
    regs = [int(v, 16) for v in mbpoll(port, unit, "4:hex", 0, 25)]
    rep = plant.reported(twin)
    assert rep["energy_kwh"] > 0 and rep["credit_fen"] > 0 and rep["voltage_v"] == 220.0
    got = {p.name: decode(p, regs[p.address:p.address + p.size]) for p in PM1.points if p.table == "holding"}
    for p in PM1.points:
        if p.table == "holding" and p.field is not None:
            assert got[p.name] == pytest.approx(rep[p.field], abs=p.scale), p.name
    bands = sum(got[f"energy_{band}"] for band in ("sharp", "peak", "flat", "valley"))
    assert bands == pytest.approx(got["energy_total"], abs=0.02)
    assert got["alarm1_credit"] == HELD_DEFAULTS["alarm1_credit"]
    assert got["alarm2_credit"] == HELD_DEFAULTS["alarm2_credit"]


def test_mbpoll_reads_the_sdm630_float32_registers(plant: Plant) -> None:
    """The master meter's SDM630 input registers, read by mbpoll as big-endian float32 and
    as raw words decoded through the map, agree with each other and with the twin."""
    twin = plant.twins("sdm630")[0]
    port, unit = plant.where(twin)
    floats = [float(v) for v in mbpoll(port, unit, "3:float", 0, 38, "-B")]
    regs = [int(v, 16) for v in mbpoll(port, unit, "3:hex", 0, 76)]
    rep = plant.reported(twin)
    assert rep["power_w"] > 0 and rep["energy_kwh"] > 0
    for p in SDM630.points:
        value = decode(p, regs[p.address:p.address + p.size])
        assert floats[p.address // 2] == pytest.approx(value, rel=1e-5, abs=1e-6), p.name  # mbpoll prints 6 digits
        if p.field is not None:
            assert value == pytest.approx(rep[p.field], rel=1e-6), p.name
    assert decode(SDM630.by_name["phase3_voltage"], regs[4:6]) == rep["voltage_v"]  # balanced phases
    assert decode(SDM630.by_name["export_energy"], regs[74:76]) == 0.0


def test_water_meter_reads_its_valve_twin(plant: Plant) -> None:
    """A water meter's unit reports its valve twin's state, and its valve coil writes it."""
    wm1 = load_map("metertwin-wm1")
    unit_ = next(u for g in plant.gateways for u in g.units if u.valve)
    port, unit = plant.where(unit_.twin)
    with client(port) as c:
        state = wm1.by_name["valve_state"]
        assert c.read_holding_registers(state.address, count=1, device_id=unit).registers == [1]
        assert not c.write_coil(0, False, device_id=unit).isError()
        assert unit_.valve is not None and plant.reported(unit_.valve)["open"] == 0
        assert c.read_holding_registers(state.address, count=1, device_id=unit).registers == [0]
        assert not c.write_coil(0, True, device_id=unit).isError()
    assert plant.reported(str(unit_.valve))["open"] == 1


# -- writing ---------------------------------------------------------------------------------


def test_a_relay_trip_written_over_modbus_stops_the_load(plant: Plant) -> None:
    """Writing 0 to the relay coil opens the world's relay: the meter reads back open, and
    once the interval of the trip has reported, it draws nothing; writing 1 closes it."""
    twin = max(plant.twins("metertwin-pm1"), key=lambda t: plant.reported(t)["power_w"])
    port, unit = plant.where(twin)
    before = plant.reported(twin)["energy_kwh"]
    plant.advance(1800)
    drawing = plant.reported(twin)["energy_kwh"]
    assert drawing > before  # the load was on
    with client(port) as c:
        assert not c.write_coil(0, False, device_id=unit).isError()
        assert plant.reported(twin)["relay_closed"] == 0
        plant.advance(900)  # the interval before the trip closes and reports
        tripped = plant.reported(twin)["energy_kwh"]
        assert tripped >= drawing
        plant.advance(1800)
        assert plant.reported(twin)["energy_kwh"] == tripped
        assert plant.reported(twin)["power_w"] == 0
        assert c.read_coils(0, count=1, device_id=unit).bits[0] is False
        relay_state = PM1.by_name["relay_state"]
        assert c.read_holding_registers(relay_state.address, count=1, device_id=unit).registers == [0]
        assert not c.write_coil(0, True, device_id=unit).isError()
    assert plant.reported(twin)["relay_closed"] == 1


def test_a_credit_push_over_function_16_credits_the_difference_once(plant: Plant) -> None:
    """Writing a new purchase total to `purchased_total` credits the meter the difference;
    writing the same total again credits nothing."""
    twin = plant.twins("metertwin-pm1")[1]
    port, unit = plant.where(twin)
    point = PM1.by_name["purchased_total"]
    rep = plant.reported(twin)
    total = rep["purchased_fen"] + 500
    with client(port) as c:
        for _ in range(2):
            assert not c.write_registers(point.address, encode(point, total), device_id=unit).isError()
            assert plant.reported(twin)["purchased_fen"] == total
            assert plant.reported(twin)["credit_fen"] == rep["credit_fen"] + 500
        back = c.read_holding_registers(point.address, count=point.size, device_id=unit).registers
    assert decode(point, back) == total


def test_refused_requests_answer_the_right_exception(plant: Plant) -> None:
    """Read-only points, half a point, registers past the map and a unit without a coil
    answer exception 2; a read past max_read or a value out of range, 3; an unknown
    unit, 0x0B. Alarm thresholds are writable and kept."""
    twin = plant.twins("metertwin-pm1")[2]
    port, unit = plant.where(twin)
    lift = plant.twins("metertwin-el1")[0]
    _, lift_unit = plant.where(lift)
    alarm = PM1.by_name["alarm1_credit"]
    with client(port) as c:
        assert c.write_registers(0, [0, 0], device_id=unit).exception_code == 2
        assert c.write_register(PM1.by_name["purchased_total"].address + 1, 1, device_id=unit).exception_code == 2
        assert c.read_holding_registers(30, count=2, device_id=unit).exception_code == 2
        assert c.read_holding_registers(0, count=PM1.max_read + 1, device_id=unit).exception_code == 3
        assert c.write_coil(0, False, device_id=lift_unit).exception_code == 2
        assert c.read_holding_registers(0, count=2, device_id=247).exception_code == 0x0B
        assert c.write_registers(alarm.address, encode(alarm, 2_000_000), device_id=unit).exception_code == 3
        assert not c.write_registers(alarm.address, encode(alarm, 3000), device_id=unit).isError()
        assert decode(alarm, c.read_holding_registers(alarm.address, count=2, device_id=unit).registers) == 3000
    assert plant.emulator.held(twin)["alarm1_credit"] == 3000
    assert plant.reported(twin)["relay_closed"] == 1


# -- faults ----------------------------------------------------------------------------------


@pytest.fixture
def faulty(plant: Plant) -> Iterator[str]:
    """A prepaid meter whose fault is cleared after the test."""
    twin = plant.twins("metertwin-pm1")[3]
    yield twin
    plant.emulator.set_fault(twin, None)


def test_no_answer_silences_a_unit_until_cleared(plant: Plant, faulty: str) -> None:
    """A `no_answer` unit leaves requests unanswered; its neighbours still answer."""
    port, unit = plant.where(faulty)
    plant.emulator.set_fault(faulty, Fault("no_answer"))
    assert silent(port, unit)
    assert not silent(port, plant.where(plant.twins("metertwin-pm1")[0])[1])
    plant.emulator.set_fault(faulty, None)
    assert not silent(port, unit)


def test_slow_answers_right_after_the_delay(plant: Plant, faulty: str) -> None:
    """A `slow` unit answers correctly, no sooner than its delay."""
    port, unit = plant.where(faulty)
    plant.emulator.set_fault(faulty, Fault("slow", delay_s=0.3))
    with client(port) as c:
        started = time.monotonic()
        regs = c.read_holding_registers(0, count=2, device_id=unit).registers
        elapsed = time.monotonic() - started
    assert elapsed >= 0.3
    assert decode(PM1.by_name["energy_total"], regs) == pytest.approx(plant.reported(faulty)["energy_kwh"], abs=0.01)


def test_exception_fault_answers_its_code_to_reads_and_writes(plant: Plant, faulty: str) -> None:
    """An `exception` unit answers every request with its code, and writes do nothing."""
    port, unit = plant.where(faulty)
    plant.emulator.set_fault(faulty, Fault("exception", code=6))
    with client(port) as c:
        assert c.read_holding_registers(0, count=2, device_id=unit).exception_code == 6
        assert c.write_coil(0, False, device_id=unit).exception_code == 6
    assert plant.reported(faulty)["relay_closed"] == 1


def test_garbage_is_outside_every_valid_range(plant: Plant, faulty: str) -> None:
    """A `garbage` unit's every bounded point decodes outside its map range; an SDM630's
    float points read NaN."""
    port, unit = plant.where(faulty)
    master = plant.twins("sdm630")[0]
    plant.emulator.set_fault(faulty, Fault("garbage"))
    plant.emulator.set_fault(master, Fault("garbage"))
    try:
        with client(port) as c:
            regs = c.read_holding_registers(0, count=25, device_id=unit).registers
            floats = c.read_input_registers(0, count=76, device_id=plant.where(master)[1]).registers
    finally:
        plant.emulator.set_fault(master, None)
    for p in PM1.points:
        if p.table == "holding":
            assert not p.valid(decode(p, regs[p.address:p.address + p.size])), p.name
    for p in SDM630.points:
        assert math.isnan(decode(p, list(floats[p.address:p.address + p.size]))), p.name


def test_flap_drops_off_and_comes_back(plant: Plant, faulty: str) -> None:
    """A `flap` unit is silent for its down time, then answers again."""
    port, unit = plant.where(faulty)
    plant.emulator.set_fault(faulty, Fault("flap", down_s=1.0))
    assert silent(port, unit)
    deadline = time.monotonic() + 10.0
    while silent(port, unit):
        assert time.monotonic() < deadline, "the flapping unit never came back"
    assert plant.emulator.fault_of(faulty) == Fault("flap", down_s=1.0)


def test_a_flap_cycles_down_and_up() -> None:
    """Down for down_s, up for up_s, repeating; with up_s infinite, down once."""
    cycle = Fault("flap", down_s=1.0, up_s=2.0)
    assert [cycle.silent(100.0, 100.0 + t) for t in (0.0, 0.9, 1.0, 2.9, 3.0, 3.5, 4.5)] == [
        True, True, False, False, True, True, False]
    once = Fault("flap", down_s=1.0)
    assert once.silent(0.0, 0.5) and not once.silent(0.0, 1.5) and not once.silent(0.0, 1e6)


def test_a_fault_states_the_rule_it_breaks() -> None:
    """Unknown kinds, negative delays and codes Modbus does not define are refused."""
    with pytest.raises(ValueError, match="fault kind"):
        Fault("melt")
    with pytest.raises(ValueError, match="delay_s"):
        Fault("slow", delay_s=-1)
    with pytest.raises(ValueError, match="exception code"):
        Fault("exception", code=9)


def test_an_offline_twin_does_not_answer(plant: Plant, faulty: str) -> None:
    """A unit whose twin reports offline stays silent; back online, it answers."""
    port, unit = plant.where(faulty)
    kind, row = plant.world.state.locate(faulty)
    online = plant.world.state.tables[kind].faces["reported"]["online"]
    with plant.source.lock:
        online[row] = 0
    try:
        assert silent(port, unit)
    finally:
        with plant.source.lock:
            online[row] = 1
    assert not silent(port, unit)


USER_MAP = """\
[model]
name = "little-meter"
kind = "electric_meter"
word_order = "little"
byte_order = "little"

[[points]]
name = "energy"
table = "holding"
address = 0
type = "u32"
scale = 0.01
field = "energy_kwh"

[[points]]
name = "power"
table = "holding"
address = 2
type = "f32"
word_order = "big"
field = "power_w"

[[points]]
name = "credit"
table = "holding"
address = 4
type = "i32"
field = "credit_fen"
"""


class DictSource:
    """A `Source` over plain dictionaries."""

    def __init__(self, twins: dict[str, dict[str, Any]]) -> None:
        self.twins = twins
        self.writes: list[tuple[str, str, int, str]] = []

    def reported(self, twin_id: str) -> dict[str, Any]:
        return self.twins[twin_id]

    def write(self, twin_id: str, field: str, value: int, source: str) -> None:
        self.writes.append((twin_id, field, value, source))


def test_a_user_map_is_served_in_its_own_word_and_byte_order(tmp_path: Path) -> None:
    """Registers are exactly what `maps.encode` makes of the twin's values, in each point's
    word and byte order; a read starting inside a point gets that point's later words."""
    path = tmp_path / "little-meter.toml"
    path.write_text(USER_MAP)
    regmap = load_map(str(path))
    twin = {"energy_kwh": 1234.56, "power_w": 512.5, "credit_fen": -321, "online": 1}
    emulator = Emulator([Gateway("gw-T-1", "T", (Unit(1, "m1", str(path)),))], DictSource({"m1": twin}), base_port=0)
    context = emulator.contexts["gw-T-1"]
    expected = [w for p in regmap.points for w in encode(p, twin[str(p.field)])]
    assert asyncio.run(context.async_getValues(1, 3, 0, 6)) == expected
    assert asyncio.run(context.async_getValues(1, 3, 1, 4)) == expected[1:5]


# -- links -------------------------------------------------------------------------------------


def test_gateways_listen_on_consecutive_ports(plant: Plant) -> None:
    """Gateway i is planned on base_port + i; base_port 0 picks free ports."""
    gateways = layout(plant.world.site, per_gateway=4)
    emulator = Emulator(gateways, plant.source, base_port=5020)
    assert [emulator.port_of(g.name) for g in gateways] == [5020 + i for i in range(len(gateways))]
    assert emulator.url(gateways[1].units[0].twin) == "modbus://127.0.0.1:5021/1"
    assert all(port > 0 for port in plant.emulator.ports.values())


def test_the_rtu_gateway_answers_over_its_pty(plant: Plant) -> None:
    """A gateway served as Modbus RTU on one end of a socat pty pair answers a pymodbus
    serial client on the other end, after at least the wire time at its baud rate."""
    require_program("socat", "socat")
    gateway = plant.gateways[0]
    twin = plant.twins("metertwin-pm1")[0]
    unit = plant.emulator.unit_of(twin)[1]
    with PtyPair() as pty:
        link = Rtu(pty.device, pty.collector, baudrate=19200)
        emulator = Emulator([gateway], plant.source, links={gateway.name: link})
        with emulator.in_thread():
            serial = ModbusSerialClient(pty.collector, baudrate=19200, timeout=3, retries=0)
            assert serial.connect()
            try:
                started = time.monotonic()
                response = serial.read_holding_registers(0, count=25, device_id=unit)
                elapsed = time.monotonic() - started
            finally:
                serial.close()
        assert emulator.url(twin) == f"rtu://{pty.collector}/{unit}?baud=19200"
    assert not response.isError()
    energy = PM1.by_name["energy_total"]
    assert decode(energy, list(response.registers[0:2])) == pytest.approx(plant.reported(twin)["energy_kwh"], abs=0.01)
    assert elapsed >= link.wire_s(3, 25)


def _plain_read(port: int, context: ssl.SSLContext) -> bytes:
    """A Modbus read over TLS with `context`; what comes back (b"" if closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(bytes.fromhex("0001 0000 0006 01 03 0000 0002".replace(" ", "")))
            return tls.recv(256)


def test_the_tls_gateway_answers_a_client_holding_the_client_certificate(plant: Plant, tmp_path: Path) -> None:
    """Modbus/TCP Security: a client trusting the CA and presenting the client certificate
    reads the twin; a client without a certificate gets nothing."""
    certs = tmp_path / "certs"
    gateway = plant.gateways[0]
    twin = plant.twins("metertwin-pm1")[0]
    unit = plant.emulator.unit_of(twin)[1]
    emulator = Emulator([gateway], plant.source, base_port=0, links={gateway.name: Tls(server_context(certs))})

    with emulator.in_thread():
        port = emulator.ports[gateway.name]
        assert emulator.url(twin) == f"modbus+tls://127.0.0.1:{port}/{unit}"
        # the blocking client names no server: the chain is checked, not the host name
        with ModbusTlsClient("127.0.0.1", port=port, sslctx=client_context(certs, check_hostname=False),
                             timeout=3, retries=0) as tls:
            assert tls.connect()
            response = tls.read_holding_registers(0, count=2, device_id=unit)
        anonymous = ssl.create_default_context(cafile=str(ensure_certs(certs).ca))
        try:
            refused = _plain_read(port, anonymous) == b""
        except (ssl.SSLError, ConnectionError):
            refused = True
    assert not response.isError()
    energy = PM1.by_name["energy_total"]
    assert decode(energy, response.registers) == pytest.approx(plant.reported(twin)["energy_kwh"], abs=0.01)
    assert refused


# -- the command --------------------------------------------------------------------------------

MINI = """\
[site]
id = "EM1"
name = "Emulator test site"
interval = "15min"

[profiles.household]
shape = "household"
monthly_kwh = 220
water_m3_month = 10

[[buildings]]
id = "B01"
floors = 2
rooms_per_floor = 2
profile = "household"
electric = { phases = 1 }
water = { valve = true }
master = { electric = true, water = true }
"""


def _lines_until(process: subprocess.Popen[bytes], marker: str, timeout: float) -> list[str]:
    """stdout lines of `process` up to the one containing `marker` (bounded). Reads the
    pipe's descriptor directly: a buffered readline could hold lines select() never sees."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while marker.encode() not in seen:
            left = deadline - time.monotonic()
            assert left > 0 and process.poll() is None, f"no {marker!r} in {seen.decode()!r}"
            if sel.select(left):
                seen += os.read(fd, 65536)
    return [line for line in seen.decode().splitlines() if line]


def test_metertwin_emulate_serves_a_scenario_and_stops_on_sigterm(tmp_path: Path, free_tcp_port: int) -> None:
    """`metertwin emulate` prints each gateway with its port and twins, answers Modbus on
    them, and closes cleanly (exit 0) on SIGTERM."""
    scenario = tmp_path / "mini.toml"
    scenario.write_text(MINI)
    process = subprocess.Popen(
        [sys.executable, "-m", "control.cli", "emulate", str(scenario), "--modbus-port", str(free_tcp_port),
         "--speed", "600", "--start", "2026-01-05T18:00"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = next(line for line in _lines_until(process, "gw-B01-1", timeout=120) if "gw-B01-1" in line)
        assert f"modbus://127.0.0.1:{free_tcp_port}" in line and "B01.mm .. B01-02-02.wm" in line
        with client(free_tcp_port) as c:
            assert not c.read_input_registers(0, count=2, device_id=1).isError()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=60)
    assert process.returncode == 0, err.decode()
    assert b"gateways closed" in err


def test_emulate_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    """`metertwin emulate --help` explains itself with examples."""
    from control.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["emulate", "--help"])
    help_text = capsys.readouterr().out
    assert "metertwin emulate scenarios/demo-community.toml" in help_text and "--modbus-port" in help_text
