"""The Modbus collector against real pymodbus 3.16 servers on loopback sockets (TCP, TLS,
and RTU over a socat pty pair): values arrive as the servers hold them, dead units go
offline without holding up the others, bad values are flagged, lost gateways come back,
writes are confirmed by read-back, and late replies never reach the wrong unit."""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import subprocess
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer, ModbusTlsServer
from pymodbus.simulator import DataType, SimData, SimDevice

from devices.modbus.collector import Collector, CycleStats, Stream, Target, open_stream
from devices.modbus.layout import Gateway, Unit
from devices.modbus.maps import decode, encode, load_map
from tests.support import free_tcp_port, require_program

FC_TABLE = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 3: "holding", 6: "holding", 16: "holding",
            4: "input"}
REGISTERS, BITS = 128, 64


class FakeUnit:
    """A unit's registers as a device holds them, served through a pymodbus SimDevice
    whose action copies them in on every request; faults by flags."""

    def __init__(self, unit_id: int, model: str, twin: str, valve: str | None = None) -> None:
        self.unit_id, self.model, self.twin, self.valve = unit_id, model, twin, valve
        self.regmap = load_map(model)
        self.tables = {"coil": [0] * BITS, "discrete": [0] * BITS, "holding": [0] * REGISTERS,
                       "input": [0] * REGISTERS}
        self.requests = 0  #: requests that reached it
        self.dead = False  #: never answer
        self.late_every = 0  #: answer every n-th request `late_s` late (0: never)
        self.late_s = 0.0
        self.delay_s = 0.0  #: answer every request this late
        self.exception: ExcCodes | None = None  #: answer with this exception
        self.obey = True  #: a written control point moves the point that reports it
        for point in self.regmap.polled():  # a plausible value, different for each unit
            low = point.low if math.isfinite(point.low) else 0.0
            high = point.high if math.isfinite(point.high) else low + 1000.0
            self.set(point.name, low + (high - low) * (0.05 + 0.01 * (unit_id % 50)))

    def unit(self) -> Unit:
        return Unit(self.unit_id, self.twin, self.model, self.valve)

    def set(self, name: str, value: float) -> None:
        point = self.regmap.by_name[name]
        self.tables[point.table][point.address:point.address + point.size] = encode(point, value)

    def set_raw(self, name: str, registers: list[int]) -> None:
        point = self.regmap.by_name[name]
        self.tables[point.table][point.address:point.address + point.size] = registers

    def value(self, name: str) -> float:
        point = self.regmap.by_name[name]
        return decode(point, self.tables[point.table][point.address:point.address + point.size])

    def fields(self, side: str = "self") -> dict[str, float]:
        """What the collector should report for the unit's twin (or its valve)."""
        return {p.field: self.value(p.name) for p in self.regmap.polled() if p.twin == side and p.field}

    async def action(self, code: int, start: int, address: int, count: int, registers: list[int],
                     values: list[int] | list[bool] | None) -> ExcCodes | None:
        self.requests += 1
        if self.dead:
            await asyncio.sleep(3600)
        if self.late_every and self.requests % self.late_every == 0:
            await asyncio.sleep(self.late_s)
        elif self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.exception is not None:
            return self.exception
        table = FC_TABLE[code]
        if values is not None:
            self.tables[table][address:address + len(values)] = [int(v) for v in values]
            if self.obey:
                self._actuate(table, address, len(values))
        mine = self.tables[table]
        if table in ("coil", "discrete"):
            registers[:BITS // 16] = [sum(bit << i for i, bit in enumerate(mine[r * 16:(r + 1) * 16]))
                                      for r in range(BITS // 16)]
        else:
            registers[:REGISTERS] = mine
        return None

    def _actuate(self, table: str, address: int, count: int) -> None:
        for point in self.regmap.points:
            if point.writable and point.table == table and address <= point.address < address + count:
                feeding = self.regmap.feeding(point.field or "", point.twin)
                if feeding is not None and feeding is not point:
                    self.set(feeding.name, self.value(point.name))

    def device(self) -> SimDevice:
        bits = [SimData(0, count=BITS, values=False, datatype=DataType.BITS)]
        regs = [SimData(0, count=REGISTERS, values=0, datatype=DataType.REGISTERS)]
        return SimDevice(self.unit_id, simdata=(list(bits), list(bits), list(regs), list(regs)),
                         action=self.action)


def gateway(name: str, units: list[FakeUnit]) -> Gateway:
    return Gateway(name, "B01", tuple(u.unit() for u in units))


@asynccontextmanager
async def tcp_server(units: list[FakeUnit], port: int, tls: ssl.SSLContext | None = None,
                     trace_packet=None) -> AsyncIterator[ModbusTcpServer]:
    devices = [u.device() for u in units]
    if tls is None:
        server = ModbusTcpServer(devices, address=("127.0.0.1", port), trace_packet=trace_packet)
    else:
        server = ModbusTlsServer(devices, address=("127.0.0.1", port), sslctx=tls)
    await server.serve_forever(background=True)
    try:
        yield server
    finally:
        await server.shutdown()


class Record:
    """Everything the collector reported."""

    def __init__(self) -> None:
        self.readings: dict[str, list[dict[str, float]]] = defaultdict(list)
        self.times: dict[str, list[float]] = defaultdict(list)
        self.statuses: list[tuple[str, bool, str]] = []
        self.flags: list[tuple[str, str, float, str]] = []

    def on_reading(self, twin: str, fields: dict[str, float], ts: float) -> None:
        self.readings[twin].append(fields)
        self.times[twin].append(ts)

    def on_status(self, twin: str, online: bool, reason: str) -> None:
        self.statuses.append((twin, online, reason))

    def on_flag(self, twin: str, point: str, value: float, reason: str) -> None:
        self.flags.append((twin, point, value, reason))

    def collector(self, targets: list[Target], **options) -> Collector:
        return Collector(targets, self.on_reading, self.on_status, self.on_flag, **options)


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_a_cycle_reads_every_unit_of_two_gateways():
    """One cycle reads every unit of two gateways, each map in its planned blocks, and
    reports every field as the server holds it (a water meter's valve to its valve twin)."""
    a = [FakeUnit(1, "metertwin-pm1", "A.em1"), FakeUnit(2, "metertwin-pm1", "A.em2"),
         FakeUnit(3, "metertwin-wm1", "A.wm", valve="A.vl"), FakeUnit(4, "metertwin-pm3", "A.shop")]
    b = [FakeUnit(1, "sdm630", "B.mm"), FakeUnit(2, "metertwin-el1", "B.el"), FakeUnit(7, "metertwin-sc1", "B.sc")]
    record = Record()

    async def scenario() -> CycleStats:
        port_a, port_b = free_tcp_port(), free_tcp_port()
        async with tcp_server(a, port_a), tcp_server(b, port_b):
            collector = record.collector([Target(gateway("gw-A", a), host="127.0.0.1", port=port_a),
                                          Target(gateway("gw-B", b), host="127.0.0.1", port=port_b)])
            stats = await collector.poll_cycle()
            collector.close()
            return stats

    stats = asyncio.run(scenario())
    blocks = sum(len(collector_reads(u)) for u in a + b)
    assert (stats.units_ok, stats.units_failed, stats.requests, stats.flags) == (7, 0, blocks, 0)
    assert all(u.requests == len(collector_reads(u)) for u in a + b)
    for unit in a + b:
        assert record.readings[unit.twin] == [unit.fields()], unit.twin
    assert record.readings["A.vl"] == [a[2].fields("valve")] and "open" in record.readings["A.vl"][0]
    assert sorted(t for t, online, _ in record.statuses if online) == sorted(
        [u.twin for u in a + b] + ["A.vl"])


def collector_reads(unit: FakeUnit) -> list:
    from devices.modbus.maps import plan_reads

    return plan_reads(unit.regmap, unit.regmap.polled())


def test_a_dead_unit_goes_offline_and_costs_only_its_own_requests():
    """A unit that never answers is marked offline once, after `offline_after` cycles; the
    others are read in every cycle with one request per block and no retries; after its
    first failed poll the dead unit gets one try a cycle, and once offline it leaves the
    cycle: it is tried on the gateway's probe connection, so the cycles of the living cost
    no timeout at all."""
    units = [FakeUnit(i, "metertwin-pm1", f"em{i}") for i in range(1, 7)]
    units[2].dead = True
    record = Record()
    cycles: list[CycleStats] = []

    async def scenario() -> None:
        port = free_tcp_port()
        async with tcp_server(units, port):
            collector = record.collector([Target(gateway("gw", units), host="127.0.0.1", port=port)],
                                         connections_per_gateway=2, timeout_s=0.3, retries=1, offline_after=3,
                                         backoff_s=0.01)
            for _ in range(5):
                cycles.append(await collector.poll_cycle())
            await asyncio.sleep(0.5)  # the probe round started by cycle 4 times out
            assert collector.online("em3") is False and collector.online("em1") is True
            collector.close()

    asyncio.run(scenario())
    assert [c.units_ok for c in cycles] == [5] * 5 and [c.units_failed for c in cycles] == [1, 1, 1, 0, 0]
    assert [c.units_skipped for c in cycles] == [0, 0, 0, 1, 1]
    assert [c.timeouts for c in cycles] == [2, 1, 1, 0, 0]  # retried once; after a failed poll, one try
    assert [c.requests for c in cycles] == [7, 6, 6, 5, 5]
    assert units[2].requests in (5, 6)  # 4 in the cycles, then one probe round (two if cycle 5 outlasted it)
    assert all(u.requests == 5 for u in units if not u.dead)
    offline = [s for s in record.statuses if not s[1]]
    assert len(offline) == 1 and offline[0][0] == "em3" and "no answer" in offline[0][2]
    assert all(len(record.readings[u.twin]) == 5 for u in units if not u.dead) and "em3" not in record.readings


def test_nan_out_of_range_and_garbage_frames_are_flagged_not_passed_on():
    """NaN and out-of-range values go to on_flag and never to on_reading (the unit's other
    fields still do); a garbled answer frame is dropped, the connection reopened and the
    request retried."""
    sdm = FakeUnit(1, "sdm630", "mm")
    pm1 = FakeUnit(2, "metertwin-pm1", "em")
    sdm.set("phase1_voltage", math.nan)
    pm1.set_raw("voltage", [0xFFFF])  # 6553.5 V
    garble = {"left": 1}

    def trace_packet(sending: bool, data: bytes) -> bytes:
        if sending and garble["left"]:
            garble["left"] -= 1
            return bytes([data[0] ^ 0x55]) + data[1:]  # another transaction id
        return data

    record, opened = Record(), []

    async def counting_opener(target: Target) -> Stream:
        opened.append(target)
        return await open_stream(target)

    async def scenario() -> CycleStats:
        port = free_tcp_port()
        async with tcp_server([sdm, pm1], port, trace_packet=trace_packet):
            collector = record.collector([Target(gateway("gw", [sdm, pm1]), host="127.0.0.1", port=port,
                                                 connections=1)], opener=counting_opener, backoff_s=0.0)
            stats = await collector.poll_cycle()
            collector.close()
            return stats

    stats = asyncio.run(scenario())
    assert stats.units_ok == 2 and stats.flags == 2
    assert stats.requests == len(collector_reads(sdm)) + len(collector_reads(pm1)) + 1 and len(opened) == 2
    flagged = {(t, p): reason for t, p, _, reason in record.flags}
    assert "NaN" in flagged["mm", "phase1_voltage"] and "out of range" in flagged["em", "voltage"]
    assert "voltage_v" not in record.readings["mm"][0] and "voltage_v" not in record.readings["em"][0]
    assert record.readings["em"][0]["energy_kwh"] == pm1.value("energy_total")
    assert record.readings["mm"][0]["current_a"] == sdm.value("phase1_current")


def test_counters_going_backwards_or_jumping_are_flagged_against_the_last_good_value():
    """A counter below its last good value, or above it by more than its rating allows in
    the time since, is flagged and not passed on; the last good value stays the reference,
    so the same total is accepted once enough time has passed."""
    pm1 = FakeUnit(1, "metertwin-pm1", "em")  # 13.2 kWh per hour at most
    el1 = FakeUnit(2, "metertwin-el1", "el")  # 400 trips per hour at most
    now = {"t": 1_800_000_000.0}
    record = Record()
    steps = [  # (seconds later, energy kWh, trips)
        (0, 100.0, 1000), (60, 99.0, 1001), (60, 100.05, 1002), (60, 150.0, 1500), (4 * 3600, 150.0, 1500)]

    async def scenario() -> None:
        port = free_tcp_port()
        async with tcp_server([pm1, el1], port):
            collector = record.collector([Target(gateway("gw", [pm1, el1]), host="127.0.0.1", port=port)],
                                         clock=lambda: now["t"])
            for later, energy, trips in steps:
                now["t"] += later
                pm1.set("energy_total", energy)
                el1.set("trips", trips)
                await collector.poll_cycle()
            collector.close()

    asyncio.run(scenario())
    energy = [r.get("energy_kwh") for r in record.readings["em"]]
    assert energy == [100.0, None, 100.05, None, 150.0]
    assert [r.get("trips") for r in record.readings["el"]] == [1000, 1001, 1002, None, 1500]
    reasons = [(t, p, reason.split(" ")[1]) for t, p, _, reason in record.flags]
    assert reasons == [("em", "energy_total", "went"), ("em", "energy_total", "jumped"), ("el", "trips", "jumped")]
    assert all("voltage_v" in r for r in record.readings["em"])


def test_a_gateway_stopped_and_restarted_is_reconnected_by_itself(caplog):
    """A gateway that goes away fails its units (offline after `offline_after` cycles),
    is logged once at ERROR however many cycles it stays away, and is read again as soon
    as it is back, without anyone reconnecting by hand."""
    units = [FakeUnit(i, "metertwin-pm1", f"em{i}") for i in (1, 2, 3)]
    record = Record()
    cycles: list[CycleStats] = []

    async def scenario() -> None:
        port = free_tcp_port()
        collector = record.collector([Target(gateway("gw-R", units), host="127.0.0.1", port=port)],
                                     offline_after=2, connect_timeout_s=1.0, backoff_s=0.01)
        async with tcp_server(units, port):
            cycles.append(await collector.poll_cycle())
        for _ in range(4):
            cycles.append(await collector.poll_cycle())
        units[0].set("energy_total", units[0].value("energy_total") + 0.1)
        async with tcp_server(units, port):
            cycles.append(await collector.poll_cycle())
            cycles.append(await collector.poll_cycle())
        collector.close()

    with caplog.at_level(logging.DEBUG, logger="metertwin.modbus"):
        asyncio.run(scenario())
    assert [c.units_ok for c in cycles] == [3, 0, 0, 0, 0, 3, 3]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "gw-R" in errors[0].getMessage() and "unreachable" in errors[0].getMessage()
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    assert [(t, online) for t, online, _ in record.statuses if t == "em1"] == [("em1", True), ("em1", False),
                                                                              ("em1", True)]
    assert all("gateway unreachable" in reason for _, online, reason in record.statuses if not online)
    assert record.readings["em1"][-1]["energy_kwh"] == units[0].value("energy_total")
    assert cycles[2].requests <= 1  # while it is away: one connection attempt per cycle, no requests


def test_writes_are_confirmed_by_reading_back_the_feeding_point():
    """A write to the relay coil (or a valve) is confirmed when the state register reads
    back the value; a device that ignores it is not confirmed (with the value it reads);
    a unit that does not answer is unreachable."""
    pm1 = FakeUnit(1, "metertwin-pm1", "em")
    wm1 = FakeUnit(2, "metertwin-wm1", "wm", valve="vl")
    stubborn = FakeUnit(3, "metertwin-pm1", "em3")
    dead = FakeUnit(4, "metertwin-pm1", "em4")
    for unit in (pm1, stubborn, dead):
        unit.set("relay_state", 1)
    wm1.set("valve_state", 1)
    stubborn.obey, dead.dead = False, True
    units = [pm1, wm1, stubborn, dead]
    outcomes = {}

    async def scenario() -> None:
        port = free_tcp_port()
        async with tcp_server(units, port):
            collector = Record().collector([Target(gateway("gw", units), host="127.0.0.1", port=port)],
                                           timeout_s=0.5, retries=0)
            outcomes["trip"] = await collector.write("em", "relay_closed", 0)
            outcomes["close"] = await collector.write("vl", "open", 0)
            outcomes["stubborn"] = await collector.write("em3", "relay_closed", 0, settle_s=0.2, recheck_s=0.05)
            outcomes["dead"] = await collector.write("em4", "relay_closed", 0)
            with pytest.raises(ValueError, match="no control point"):
                await collector.write("em", "energy_kwh", 5)
            with pytest.raises(KeyError):
                await collector.write("nowhere", "relay_closed", 1)
            collector.close()

    asyncio.run(scenario())
    assert outcomes["trip"].confirmed and outcomes["trip"].read == 0.0
    assert pm1.tables["coil"][0] == 0 and pm1.value("relay_state") == 0
    assert outcomes["close"].confirmed and wm1.value("valve_state") == 0
    assert (outcomes["stubborn"].status, outcomes["stubborn"].read) == ("not_confirmed", 1.0)
    assert "reads 1" in outcomes["stubborn"].reason
    assert (outcomes["dead"].status, outcomes["dead"].read) == ("unreachable", None)


def test_late_replies_never_hand_one_units_values_to_another():
    """A unit answering later than the timeout on one connection: the connection is
    reopened after each timeout, so every reading of every unit carries that unit's own
    values (pymodbus stamps a late reply with the next request's transaction id)."""
    units = [FakeUnit(i, "metertwin-pm1", f"em{i}") for i in (1, 2, 3, 4)]
    for unit in units:  # slow enough that some request is always in flight when the late reply lands
        unit.delay_s = 0.03
    units[1].late_every, units[1].late_s = 3, 0.25
    record, opened = Record(), []

    async def counting_opener(target: Target) -> Stream:
        opened.append(target)
        return await open_stream(target)

    cycles: list[CycleStats] = []

    async def scenario() -> None:
        port = free_tcp_port()
        async with tcp_server(units, port):
            collector = record.collector([Target(gateway("gw", units), host="127.0.0.1", port=port, connections=1)],
                                         timeout_s=0.1, retries=1, backoff_s=0.0, opener=counting_opener)
            for _ in range(9):
                cycles.append(await collector.poll_cycle())
            await asyncio.sleep(0.3)  # let the last late reply go out to a closed connection
            collector.close()

    asyncio.run(scenario())
    timeouts = sum(c.timeouts for c in cycles)
    assert timeouts >= 3 and len(opened) == 1 + timeouts
    for unit in units:
        assert len(record.readings[unit.twin]) == 9
        assert all(same(r, unit.fields()) for r in record.readings[unit.twin]), unit.twin
    assert len({r["energy_kwh"] for u in units for r in record.readings[u.twin][:1]}) == 4


class MemoryBus:
    """An in-memory RTU bus (the NullModem-style seam): `open` is the collector's opener;
    it answers reads from FakeUnits' tables a byte at a time and garbles the CRC of the
    answers whose numbers are in `garble`."""

    def __init__(self, units: list[FakeUnit], garble: set[int]) -> None:
        self.units = {u.unit_id: u for u in units}
        self.garble, self.answers, self.opened, self.closed = garble, 0, 0, 0

    async def open(self, target: Target) -> Stream:
        self.opened += 1
        return MemoryStream(self)

    def answer(self, frame: bytes) -> bytes:
        from devices.modbus.collector import crc16

        assert crc16(frame) == 0
        unit, code, address, count = frame[0], frame[1], int.from_bytes(frame[2:4]), int.from_bytes(frame[4:6])
        table = self.units[unit].tables[FC_TABLE[code]]
        body = bytes([unit, code, 2 * count]) + b"".join(r.to_bytes(2) for r in table[address:address + count])
        self.answers += 1
        crc = crc16(body) ^ (0xFFFF if self.answers in self.garble else 0)
        return body + crc.to_bytes(2, "little")


class MemoryStream:
    def __init__(self, bus: MemoryBus) -> None:
        self.bus, self.incoming = bus, bytearray()

    def write(self, data: bytes) -> None:
        self.incoming += self.bus.answer(data)

    async def drain(self) -> None:
        pass

    async def readexactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:  # a byte at a time, as a slow UART delivers it
            await asyncio.sleep(0)
            if not self.incoming:
                raise EOFError("nothing more on the bus")
            out.append(self.incoming.pop(0))
        return bytes(out)

    def discard_input(self) -> None:
        self.incoming.clear()

    def close(self) -> None:
        self.bus.closed += 1


def test_the_stream_seam_runs_rtu_in_memory_and_a_bad_crc_is_retried():
    """Through the `opener` seam, an in-memory bus dribbling answers byte by byte: every
    unit is read; an answer with a bad CRC is refused, the link reopened and the request
    retried; no value of the garbled answer reaches a twin."""
    units = [FakeUnit(1, "metertwin-pm1", "em1"), FakeUnit(2, "metertwin-el1", "el2")]
    bus, record = MemoryBus(units, garble={2}), Record()

    async def scenario() -> list[CycleStats]:
        collector = record.collector([Target(gateway("mem", units), serial="memory", baud=115200)],
                                     opener=bus.open, backoff_s=0.0)
        cycles = [await collector.poll_cycle(), await collector.poll_cycle()]
        collector.close()
        return cycles

    cycles = asyncio.run(scenario())
    assert [c.units_ok for c in cycles] == [2, 2] and [c.requests for c in cycles] == [3, 2]
    assert (bus.opened, bus.closed) == (2, 2)
    for unit in units:
        assert all(same(r, unit.fields()) for r in record.readings[unit.twin]) and len(record.readings[unit.twin]) == 2


def test_run_polls_every_period_until_stopped_and_closes_its_connections():
    """`run` polls a cycle per period until `stop()`, finishes the cycle under way, and
    closes its connections when it returns."""
    units = [FakeUnit(1, "metertwin-pm1", "em1")]
    bus = MemoryBus(units, garble=set())
    readings: list[float] = []

    async def scenario() -> None:
        def on_reading(twin: str, fields: dict[str, float], ts: float) -> None:
            readings.append(ts)
            if len(readings) == 3:
                collector.stop()

        collector = Collector([Target(gateway("mem", units), serial="memory", baud=115200)], on_reading,
                              lambda *a: None, lambda *a: None, opener=bus.open)
        await asyncio.wait_for(collector.run(every_s=0.02), 10)

    asyncio.run(scenario())
    assert len(readings) == 3 and readings == sorted(readings)
    assert bus.opened == bus.closed == 1


# -- RTU over a pty pair, and TLS --------------------------------------------------------


@pytest.fixture
def pty_pair(tmp_path: Path):
    """Two linked pseudo-terminals made by socat: (server end, collector end)."""
    socat = require_program("socat", "socat")
    server_end, collector_end = tmp_path / "bus-server", tmp_path / "bus-collector"
    process = subprocess.Popen([socat, "-d", "-d", f"pty,raw,echo=0,link={server_end}",
                                f"pty,raw,echo=0,link={collector_end}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(500):
            if server_end.exists() and collector_end.exists():
                break
            try:
                process.wait(0.01)
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError("socat exited")
        yield str(server_end), str(collector_end)
    finally:
        process.terminate()
        process.wait(5)


def test_rtu_bus_reads_units_and_rests_a_dead_one(pty_pair):
    """Over RTU (a pymodbus serial server on a pty pair) every unit is read with its own
    values; a dead unit goes offline and then rests 1, 2, 4 ... cycles, costing one short
    timeout each time it is tried, and comes back when it answers again; a write during a
    cycle waits its turn on the bus (one request at a time) and is confirmed."""
    server_end, collector_end = pty_pair
    units = [FakeUnit(1, "metertwin-pm1", "em1"), FakeUnit(2, "metertwin-wm1", "wm2", valve="vl2"),
             FakeUnit(3, "sdm630", "mm3"), FakeUnit(4, "metertwin-pm1", "em4")]
    units[3].dead = True
    record = Record()
    cycles: list[CycleStats] = []

    async def scenario() -> None:
        server = ModbusSerialServer([u.device() for u in units], port=server_end, baudrate=19200)
        await server.serve_forever(background=True)
        try:
            collector = record.collector([Target(gateway("bus", units), serial=collector_end, baud=19200)],
                                         retries=0, offline_after=2, serial_turnaround_s=0.3)
            for _ in range(8):
                cycles.append(await collector.poll_cycle())
            units[3].dead = False
            for _ in range(8):
                cycles.append(await collector.poll_cycle())
            stats, outcome = await asyncio.gather(collector.poll_cycle(), collector.write("em1", "relay_closed", 0))
            assert outcome.confirmed and stats.units_ok == 4 and stats.timeouts == 0, (outcome, stats)
            collector.close()
        finally:
            await server.shutdown()

    asyncio.run(scenario())
    assert [c.units_skipped for c in cycles[:8]] == [0, 0, 1, 0, 1, 1, 0, 1]
    assert [c.units_failed for c in cycles[:8]] == [1, 1, 0, 1, 0, 0, 1, 0]
    assert [c.timeouts for c in cycles[:8]] == [1, 1, 0, 1, 0, 0, 1, 0]
    assert all(c.units_ok == 3 for c in cycles[:8])
    assert cycles[-1].units_ok == 4 and record.readings["em4"]
    for unit in units[:3]:
        assert len(record.readings[unit.twin]) == 17
        assert all(same(r, unit.fields()) for r in record.readings[unit.twin][:16]), unit.twin
    assert record.readings["vl2"][0] == units[1].fields("valve")
    assert [online for twin, online, _ in record.statuses if twin == "em4"] == [False, True]


def test_tls_gateway_is_read_and_strangers_are_refused(tmp_path: Path):
    """Over Modbus/TCP Security (mutual TLS, certificates from devices.modbus.certs) the
    collector reads a gateway whose CA it trusts, presenting its client certificate; a
    collector trusting another CA reports the gateway unreachable, and one without a
    client certificate gets no values either."""
    require_program("openssl", "openssl")
    from devices.modbus.certs import client_context, ensure_certs, server_context

    units = [FakeUnit(1, "metertwin-pm1", "em1"), FakeUnit(2, "sdm630", "mm2")]
    site_ca = ensure_certs(tmp_path / "site").ca
    contexts = {"trusted": client_context(tmp_path / "site"), "other CA": client_context(tmp_path / "other"),
                "no client certificate": ssl.create_default_context(cafile=str(site_ca))}
    record = Record()
    stats = {}

    async def scenario() -> None:
        port = free_tcp_port()
        async with tcp_server(units, port, tls=server_context(tmp_path / "site")):
            for name, context in contexts.items():
                collector = (record if name == "trusted" else Record()).collector(
                    [Target(gateway("gw-tls", units), host="127.0.0.1", port=port, tls=context)],
                    offline_after=1, timeout_s=0.5, backoff_s=0.01)
                stats[name] = await collector.poll_cycle()
                collector.close()

    asyncio.run(scenario())
    assert stats["trusted"].units_ok == 2
    assert all(same(record.readings[u.twin][0], u.fields()) for u in units)
    assert stats["other CA"].units_failed == 2 and stats["other CA"].requests == 0
    assert stats["no client certificate"].units_ok == 0


def test_scenario_sources_become_one_target_per_gateway():
    """A scenario's [[modbus]] sources group into one target per gateway (host and port,
    or serial device), units in id order; TLS sources need a context; a unit is one twin's."""
    from devices.modbus.collector import targets_for
    from scenarios.loader import parse_modbus_url

    sources = [parse_modbus_url("B01.mm", "modbus://10.0.3.17:502/2", "sdm630"),
               parse_modbus_url("B01.el", "modbus://10.0.3.17:502/1", "metertwin-el1"),
               parse_modbus_url("B01-01-01.wm", "rtu:///dev/ttyUSB0/5?baud=2400", "metertwin-wm1"),
               parse_modbus_url("B02.mm", "modbus+tls://10.0.4.1:802/1", "sdm630")]
    context = ssl.create_default_context()
    tcp, rtu, tls = targets_for(sources, tls=context, valves={"B01-01-01.wm": "B01-01-01.vl"})
    assert (tcp.host, tcp.port, [u.twin for u in tcp.gateway.units]) == ("10.0.3.17", 502, ["B01.el", "B01.mm"])
    assert (rtu.serial, rtu.baud, rtu.gateway.units[0].valve) == ("/dev/ttyUSB0", 2400, "B01-01-01.vl")
    assert tls.tls is context and tls.port == 802
    with pytest.raises(ValueError, match="needs a TLS client context"):
        targets_for(sources)
    with pytest.raises(ValueError, match="both unit 1"):
        targets_for([sources[1], parse_modbus_url("B01.sc", "modbus://10.0.3.17:502/1", "metertwin-sc1")])


def test_targets_are_checked():
    """A target is TCP or serial, never both; TLS only over TCP; a twin on one unit only."""
    gw = gateway("gw", [FakeUnit(1, "metertwin-pm1", "em1")])
    with pytest.raises(ValueError, match="either host"):
        Target(gw, host="h", serial="/dev/ttyUSB0")
    with pytest.raises(ValueError, match="tls is for TCP"):
        Target(gw, serial="/dev/ttyUSB0", tls=ssl.create_default_context())
    with pytest.raises(ValueError, match="served twice"):
        Record().collector([Target(gw, host="a"), Target(gw, host="b")])


# -- against the emulator ----------------------------------------------------------------


def test_the_collector_reads_the_emulated_site_and_survives_its_faults(scenario_factory):
    """Against the emulator serving a live world (a building's gateway): a cycle reports
    every twin's fields as the world holds them, to each register's resolution; a unit
    told not to answer goes offline after `offline_after` cycles while the rest are read;
    a garbage unit's values are all flagged and none passed on; both come back when the
    faults clear; a relay trip is confirmed by read-back and reaches the world."""
    from datetime import datetime

    from devices.modbus.emulator import Emulator, Fault, WorldSource
    from devices.modbus.layout import layout
    from devices.sim.world import World
    from scenarios.schema import Residents

    scenario = scenario_factory(residents=Residents(opening_yuan=(80.0, 120.0), topup_below_yuan=(0.0, 0.0),
                                                    billing="meter"), buildings=1, floors=2, rooms=2)
    world = World(scenario, seed=3, start=datetime(2026, 1, 5, 18, 0), days=2, live=True)
    world.begin(lambda day: None)
    source = WorldSource(world)
    source.advance_to(3600.0)
    gateways = layout(scenario.site)
    emulator = Emulator(gateways, source, base_port=0)
    units = {u.twin: u for g in gateways for u in g.units}
    dead, noisy, relay = [t for t, u in units.items() if u.model == "metertwin-pm1"][:3]
    record = Record()
    cycles: list[CycleStats] = []
    outcome = {}

    async def scenario_run() -> None:
        targets = [Target(g, host="127.0.0.1", port=emulator.ports[g.name]) for g in gateways]
        collector = record.collector(targets, timeout_s=0.5, retries=1, offline_after=2, backoff_s=0.01)
        cycles.append(await collector.poll_cycle())
        emulator.set_fault(dead, Fault("no_answer"))
        emulator.set_fault(noisy, Fault("garbage"))
        for _ in range(3):
            cycles.append(await collector.poll_cycle())
        emulator.set_fault(dead, None)
        emulator.set_fault(noisy, None)
        for _ in range(50):  # the offline unit is tried on the probe connection until it answers
            if collector.online(dead):
                break
            cycles.append(await collector.poll_cycle())
            await asyncio.sleep(0.1)
        cycles.append(await collector.poll_cycle())
        outcome["trip"] = await collector.write(relay, "relay_closed", 0)
        collector.close()

    with emulator.in_thread():
        asyncio.run(scenario_run())
    everyone = len(units)
    assert cycles[0].units_ok == everyone and cycles[0].flags == 0 and cycles[-1].units_ok == everyone
    assert [c.units_failed for c in cycles[1:4]] == [1, 1, 0] and cycles[3].units_skipped == 1  # then probed apart
    for twin, unit in units.items():
        regmap = load_map(unit.model)
        for side, name in (("self", twin), ("valve", unit.valve)):
            if name is None:
                continue
            reported = world.state.twin(name).reported
            first = record.readings[name][0]
            for point in regmap.polled():
                if point.twin == side:
                    assert first[point.field] == pytest.approx(reported[point.field], abs=abs(point.scale),
                                                               rel=1e-6), (name, point.name)
    assert [online for t, online, _ in record.statuses if t == dead] == [True, False, True]
    assert len(record.readings[dead]) >= 3  # the first cycle, the probe that found it back, the last
    noisy_fields = {p.name for p in load_map("metertwin-pm1").polled()}
    assert {p for t, p, _, _ in record.flags if t == noisy} == noisy_fields
    assert len(record.readings[noisy]) == len(cycles) - 3  # every field flagged in the three faulty cycles
    assert outcome["trip"].confirmed and world.state.twin(relay).reported["relay_closed"] == 0
