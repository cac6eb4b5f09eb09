"""Emulated Modbus gateways: pymodbus servers standing in for a site's hardware.

One server per `Gateway` of the layout answers for all of its units. Nothing is stored
ahead: each request reads the twin's reported fields from a `Source` (the simulated
world, through `WorldSource`) at that moment and encodes them through the unit's register
map, so a collector sees the world move. Writes to control points act on the source: the
relay coil writes `relay_closed`, a water meter's valve coil writes its valve twin's
`open`, the `purchased_total` registers (function 16) write `purchased_fen` (a credit
push). Writing a read-only point, a gap, part of a point, or a register outside the map
answers exception 2 (illegal data address); a value outside the point's range, exception
3; a read longer than the model's `max_read`, exception 3; a unit id the gateway does not
have, exception 0x0B (gateway target failed to respond; on an RTU bus, silence). The units of an offline twin
(reported `online` = 0) do not answer at all.

Points without a twin field hold emulator-side values (`DERIVED`, `HELD_DEFAULTS`):
the four time-of-use band energies are fixed shares of the total (尖 10 %, 峰 30 %,
平 35 %, 谷 25 %, each rounded to the register, so they add up to the total within two
counts and rise with it); the second and third phase's voltage and current equal the
first's (a balanced load); alarm thresholds are held per unit, writable and kept; any
other such point holds its smallest valid value from 0 up (SDM630 export energy: 0).

Faults are injected per unit at run time with `set_fault(twin, Fault(...))`: `no_answer`,
`slow` (an extra delay before each answer), `exception` (answer that code), `garbage`
(every register outside the map's valid range, NaN in float points), `flap` (silent for
`down_s`, then answering for `up_s`, repeating). A gateway can serve Modbus/TCP (the
default), Modbus/TCP Security (`Tls`) or Modbus RTU on a serial device with the wire
time of 8-bit characters at its baud rate plus a turnaround delay (`Rtu`, on one end of a
`PtyPair` made with socat).

Example::

    source = WorldSource(world)                    # advance the world with source.advance_to(t)
    emulator = Emulator(layout(scenario.site), source, base_port=5020)
    await emulator.start()                         # or: with emulator.in_thread(): ...
    emulator.ports                                 # {"gw-B01-1": 5020, "gw-B02-1": 5021, ...}
    emulator.set_fault("B01-01-01.em", Fault("slow", delay_s=2.0))
    await emulator.stop()

pymodbus 3.16 asks its server context for every request's values
(`async_getValues` / `async_setValues`, returning an exception code or raising
`NoSuchIdException` to stay silent); `_GatewayContext` is such a context. Per request the
work is a few dictionary look-ups, one read of the twin's fields per point, and one
`struct.pack` of the whole block (its plan is cached per model, table, address and count).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import ssl
import struct
import subprocess  # noqa: S404 - socat, with fixed arguments
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.pdu.device import ModbusDeviceIdentification
from pymodbus.server import ModbusSerialServer, ModbusTcpServer, ModbusTlsServer

from devices.modbus.layout import Gateway, Unit
from devices.modbus.maps import BIT_TABLES, Point, RegisterMap, decode, load_map

log = logging.getLogger("metertwin.emulator")

#: Function code -> table. Mask write (22) and others answer exception 1.
FC_TABLE = {1: "coil", 2: "discrete", 3: "holding", 4: "input", 5: "coil", 15: "coil", 6: "holding",
            16: "holding", 23: "holding"}
#: Function codes whose value read is the read-back of a write already admitted.
READBACK = frozenset((5, 6, 23))
#: Points without a twin field computed from one: name -> (field, factor).
DERIVED: dict[str, tuple[str, float]] = {
    "energy_sharp": ("energy_kwh", 0.10), "energy_peak": ("energy_kwh", 0.30),
    "energy_flat": ("energy_kwh", 0.35), "energy_valley": ("energy_kwh", 0.25),
    **{name: ("voltage_v", 1.0) for name in ("voltage_b", "voltage_c", "phase2_voltage", "phase3_voltage")},
    **{name: ("current_a", 1.0) for name in ("current_b", "current_c", "phase2_current", "phase3_current")},
}
#: Initial values of held points (fen): low-credit alarm thresholds.
HELD_DEFAULTS: dict[str, float] = {"alarm1_credit": 2000.0, "alarm2_credit": 500.0}
FAULT_KINDS = ("no_answer", "slow", "exception", "garbage", "flap")
#: What a water meter without a valve twin reports for its valve points: open, nothing fitted.
NO_VALVE: Mapping[str, Any] = {"open": 1, "online": 1}
#: Bounds every wait of the emulator's own (start, stop, the pty links appearing).
START_TIMEOUT_S = 10.0
_INT_RANGE = {"u16": (0, 0xFFFF), "i16": (-0x8000, 0x7FFF), "u32": (0, 0xFFFF_FFFF),
              "i32": (-0x8000_0000, 0x7FFF_FFFF), "u64": (0, 0xFFFF_FFFF_FFFF_FFFF)}
_CODE = {"u16": "H", "i16": "h", "u32": "I", "i32": "i", "u64": "Q", "f32": "f", "f64": "d"}
_F32_MAX = 3.4028234663852886e38


class Source(Protocol):
    """Where the emulated hardware gets its values and sends its control writes."""

    def reported(self, twin_id: str) -> Mapping[str, Any]:
        """The twin's reported fields now (`online` 0 or missing-as-1)."""
        ...

    def write(self, twin_id: str, field: str, value: int, source: str) -> None:
        """Apply a control write; KeyError or ValueError when the twin cannot take it."""
        ...


class ReportedRow(Mapping[str, Any]):
    """One twin's reported fields, read from the fleet's arrays when asked (no copy)."""

    __slots__ = ("faces", "row")

    def __init__(self, faces: Mapping[str, Any], row: int) -> None:
        self.faces = faces
        self.row = row

    def __getitem__(self, name: str) -> Any:
        return self.faces[name][self.row].item()

    def __iter__(self) -> Iterator[str]:
        return iter(self.faces)

    def __len__(self) -> int:
        return len(self.faces)


class WorldSource:
    """The simulated world as a `Source`. Writes take `lock`; whoever moves the world holds
    it meanwhile (`advance_to` does), so a write never lands inside a step. Reads take no
    lock: a reading may mix fields of two neighbouring steps, as a real meter's may."""

    def __init__(self, world: Any, lock: threading.Lock | None = None) -> None:
        self.world = world
        self.lock = lock or threading.Lock()
        self._rows: dict[str, ReportedRow] = {}

    def reported(self, twin_id: str) -> Mapping[str, Any]:
        """The twin's reported fields, live."""
        row = self._rows.get(twin_id)
        if row is None:
            kind, index = self.world.state.locate(twin_id)
            row = self._rows[twin_id] = ReportedRow(self.world.state.tables[kind].faces["reported"], index)
        return row

    def write(self, twin_id: str, field: str, value: int, source: str) -> None:
        """A control write on the world, under the lock."""
        with self.lock:
            self.world.write(twin_id, field, value, source)

    def advance_to(self, sim_s: float) -> None:
        """Move the world to `sim_s` seconds after its start, under the lock."""
        with self.lock:
            self.world.advance_to(sim_s)


@dataclass(frozen=True, slots=True)
class Fault:
    """What an emulated unit does wrong, until cleared.

    Example: ``Fault("slow", delay_s=2.0)``, ``Fault("exception", code=6)``,
    ``Fault("flap", down_s=5.0, up_s=20.0)``, ``Fault("garbage")``, ``Fault("no_answer")``.
    """

    kind: str  #: no_answer, slow, exception, garbage or flap
    delay_s: float = 0.0  #: slow: extra wait before each answer
    code: int = 4  #: exception: the exception code answered (1..11)
    down_s: float = 10.0  #: flap: silent this long from when the fault is set...
    up_s: float = math.inf  #: ...then answering this long, and again (inf: back for good)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind is one of {', '.join(FAULT_KINDS)}, not {self.kind!r}")
        if not 0 <= self.delay_s < math.inf:
            raise ValueError(f"0 <= delay_s < inf, not {self.delay_s}")
        if self.code not in {c.value for c in ExcCodes}:
            raise ValueError(f"code is a Modbus exception code ({', '.join(str(int(c)) for c in ExcCodes)}), "
                             f"not {self.code}")
        if not (self.down_s > 0 and self.up_s > 0):
            raise ValueError("flap: down_s > 0 and up_s > 0")

    def silent(self, since: float, now: float) -> bool:
        """True while the unit must not answer (no_answer, or a flap's down phase)."""
        if self.kind == "no_answer":
            return True
        if self.kind != "flap":
            return False
        elapsed = now - since
        if math.isinf(self.up_s):
            return elapsed < self.down_s
        return elapsed % (self.down_s + self.up_s) < self.down_s


@dataclass(frozen=True, slots=True)
class Tls:
    """Serve a gateway as Modbus/TCP Security. Example: ``Tls(certs.server_context("certs"))``."""

    context: ssl.SSLContext  #: the server side, demanding client certificates


@dataclass(frozen=True, slots=True)
class Rtu:
    """Serve a gateway as Modbus RTU on a serial device, with field timing: each answer
    waits the wire time of request and response plus the device's turnaround.

    Example: ``Rtu(pty.device, pty.collector, baudrate=9600)``.
    """

    device: str  #: the serial device served (the emulator's end of a PtyPair)
    peer: str = ""  #: the collector's end, for `Emulator.url` (default: `device`)
    baudrate: int = 9600  #: bits per second on the wire
    turnaround_s: float = 0.03  #: the device's think time before answering
    parity: str = "N"  #: N, E or O
    stopbits: int = 1  #: 1 or 2

    def __post_init__(self) -> None:
        if self.baudrate <= 0 or self.turnaround_s < 0:
            raise ValueError("baudrate > 0 and turnaround_s >= 0")
        if self.parity not in ("N", "E", "O") or self.stopbits not in (1, 2):
            raise ValueError("parity is N, E or O and stopbits 1 or 2")

    @property
    def char_s(self) -> float:
        """Wire time of one character: start bit, 8 data bits, parity, stop bits."""
        return (9 + (self.parity != "N") + self.stopbits) / self.baudrate

    def wire_s(self, fc: int, count: int) -> float:
        """Request plus response time on the wire for a request of `count` values, plus
        the turnaround."""
        if fc in (1, 2):
            chars = 8 + 5 + (count + 7) // 8
        elif fc in (3, 4):
            chars = 8 + 5 + 2 * count
        elif fc == 15:
            chars = 9 + (count + 7) // 8 + 8
        elif fc in (16, 23):
            chars = 9 + 2 * count + 8
        else:
            chars = 16
        return chars * self.char_s + self.turnaround_s


Link = Tls | Rtu


# -- per-model plans ----------------------------------------------------------------------


Getter = Callable[[Mapping[str, Any], Mapping[str, Any], dict[str, float]], Any]


def _getter(point: Point) -> Getter:
    """How a point's engineering value is found: (reported, valve reported, held) -> value."""
    if point.field is not None:
        name = point.field
        if point.twin == "valve":
            return lambda rep, valve, held: valve[name]
        return lambda rep, valve, held: rep[name]
    if point.name in DERIVED:
        name, factor = DERIVED[point.name]
        return lambda rep, valve, held: rep[name] * factor
    key = point.name
    return lambda rep, valve, held: held[key]


def held_default(point: Point) -> float:
    """The value a held point starts at: `HELD_DEFAULTS`, else its smallest valid value
    from 0 up."""
    value = HELD_DEFAULTS.get(point.name, max(point.low, 0.0))
    return min(value, point.high)


class _Coder:
    """A point's raw value from an engineering value, clamped to its type."""

    __slots__ = ("point", "is_float", "lo", "hi", "garbage", "exact")

    def __init__(self, point: Point) -> None:
        self.point = point
        self.is_float = point.type in ("f32", "f64")
        self.lo, self.hi = _INT_RANGE.get(point.type, (0, 1))
        self.exact = point.scale == 1
        self.garbage: float | int | None = None
        if self.is_float:
            self.garbage = math.nan
        elif point.type != "bool":
            for raw in (self.hi, self.lo):
                if not point.low <= raw * point.scale <= point.high:
                    self.garbage = raw
                    break

    def raw(self, value: Any) -> float | int:
        """The number the registers carry for `value` (NaN is 0 in an integer point)."""
        if self.is_float:
            value = float(value)
            if self.point.type == "f32" and abs(value) > _F32_MAX and not math.isinf(value):
                value = math.copysign(math.inf, value)
            return value
        if self.exact and type(value) is int:
            raw = value
        else:
            value = float(value)
            if value != value:
                return 0
            raw = round(value / self.point.scale)
        return self.lo if raw < self.lo else self.hi if raw > self.hi else raw


def _words(point: Point, raw: float | int) -> list[int]:
    """Registers of one point in its own word and byte order."""
    packed = struct.pack(">" + _CODE[point.type], raw)
    words = [int.from_bytes(packed[i:i + 2], "big") for i in range(0, len(packed), 2)]
    if point.byte_order == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    return words[::-1] if point.word_order == "little" else words


@dataclass(frozen=True, slots=True)
class _ReadPlan:
    """How to answer one read: which points, and how their raw values become the answer."""

    coders: tuple[_Coder, ...]  #: the points inside or overlapping the range, by address
    getters: tuple[Getter, ...]  #: their values
    offsets: tuple[int, ...]  #: bits: each point's index in the answer
    packer: struct.Struct | None  #: registers, all big-endian: the whole span in one pack
    words: struct.Struct | None  #: the span as 16-bit words
    skip: int  #: words of the span before the requested address
    count: int  #: values asked
    span_start: int  #: first address of the span
    needs_valve: bool  #: a point reads the valve twin
    fields: tuple[str, ...]  #: the twin's fields the points need, each read once per request


class _Model:
    """A register map with its request plans, built on first use and kept."""

    def __init__(self, regmap: RegisterMap) -> None:
        self.map = regmap
        self.by_table: dict[str, tuple[Point, ...]] = {
            t: tuple(p for p in regmap.points if p.table == t) for t in FC_TABLE.values()}
        self.coders = {p.name: _Coder(p) for p in regmap.points}
        self.getters = {p.name: _getter(p) for p in regmap.points}
        self.held = {p.name: held_default(p) for p in regmap.points if p.field is None and p.name not in DERIVED}
        self.reads: dict[tuple[str, int, int], _ReadPlan | ExcCodes] = {}
        self.writes: dict[tuple[str, int, int], tuple[Point, ...] | ExcCodes] = {}

    def _inside(self, table: str, address: int, count: int) -> tuple[Point, ...] | ExcCodes:
        """Points overlapping [address, address + count), or why the range is refused."""
        points = self.by_table[table]
        limit = min(2000, 16 * self.map.max_read) if table in BIT_TABLES else self.map.max_read
        if count > limit:
            return ExcCodes.ILLEGAL_VALUE
        if not points or address < points[0].address or address + count > points[-1].address + points[-1].size:
            return ExcCodes.ILLEGAL_ADDRESS
        hit = tuple(p for p in points if p.address < address + count and address < p.address + p.size)
        if not self.map.read_gaps and sum(
                min(p.address + p.size, address + count) - max(p.address, address) for p in hit) < count:
            return ExcCodes.ILLEGAL_ADDRESS
        return hit

    def read_plan(self, table: str, address: int, count: int) -> _ReadPlan | ExcCodes:
        """The cached plan of a read, or the exception it answers."""
        key = (table, address, count)
        plan = self.reads.get(key)
        if plan is None:
            plan = self.reads[key] = self._plan(table, address, count)
        return plan

    def _plan(self, table: str, address: int, count: int) -> _ReadPlan | ExcCodes:
        hit = self._inside(table, address, count)
        if isinstance(hit, ExcCodes):
            return hit
        coders = tuple(self.coders[p.name] for p in hit)
        getters = tuple(self.getters[p.name] for p in hit)
        needs_valve = any(p.twin == "valve" for p in hit)
        fields = tuple(dict.fromkeys(
            p.field if p.field is not None else DERIVED[p.name][0] for p in hit
            if p.twin == "self" and (p.field is not None or p.name in DERIVED)))
        if table in BIT_TABLES:
            return _ReadPlan(coders, getters, tuple(p.address - address for p in hit), None, None, 0, count,
                             address, needs_valve, fields)
        start = min(address, hit[0].address) if hit else address
        end = max(address + count, hit[-1].address + hit[-1].size) if hit else address + count
        packer = words = None
        if all(p.word_order == "big" and p.byte_order == "big" for p in hit):
            fmt, at = ">", start
            for p in hit:
                fmt += "xx" * (p.address - at) + _CODE[p.type]
                at = p.address + p.size
            fmt += "xx" * (end - at)
            packer, words = struct.Struct(fmt), struct.Struct(f">{end - start}H")
        return _ReadPlan(coders, getters, (), packer, words, address - start, count, start, needs_valve, fields)

    def write_plan(self, table: str, address: int, count: int) -> tuple[Point, ...] | ExcCodes:
        """The writable points exactly covering [address, address + count), or exception 2."""
        key = (table, address, count)
        plan = self.writes.get(key)
        if plan is None:
            hit = self._inside(table, address, count)
            if isinstance(hit, ExcCodes):
                plan = ExcCodes.ILLEGAL_ADDRESS if hit is ExcCodes.ILLEGAL_ADDRESS else hit
            elif (not hit or not all(p.writable for p in hit) or hit[0].address != address
                  or hit[-1].address + hit[-1].size != address + count
                  or sum(p.size for p in hit) != count):
                plan = ExcCodes.ILLEGAL_ADDRESS
            else:
                plan = hit
            self.writes[key] = plan
        return plan


# -- a gateway's units ------------------------------------------------------------------------


class _UnitState:
    """One emulated unit: its twin, map, held values and fault."""

    __slots__ = ("unit", "model", "held", "fault", "label")

    def __init__(self, unit: Unit, model: _Model, gateway: str) -> None:
        self.unit = unit
        self.model = model
        self.held = dict(model.held)
        self.fault: tuple[Fault, float] | None = None  #: the fault and when it was set (monotonic)
        self.label = f"modbus {gateway}/{unit.unit_id}"


def _encode(plan: _ReadPlan, raws: list[float | int]) -> list[int]:
    """The answer's registers from the points' raw values."""
    if plan.packer is not None and plan.words is not None:
        span = plan.words.unpack(plan.packer.pack(*raws))
        return list(span[plan.skip:plan.skip + plan.count])
    regs = [0] * (plan.skip + plan.count + 8)
    for coder, raw in zip(plan.coders, raws, strict=True):
        at = coder.point.address - plan.span_start
        regs[at:at + coder.point.size] = _words(coder.point, raw)
    return regs[plan.skip:plan.skip + plan.count]


class _GatewayContext(ModbusServerContext):
    """pymodbus's view of one gateway: it asks here for each request's values. Built
    without the base initialiser, which only wraps pymodbus's own stores and warns that
    they are deprecated; `old_simulator` makes the server call us directly."""

    def __init__(self, emulator: Emulator, gateway: Gateway, link: Link | None) -> None:  # noqa: D107
        self.old_simulator = True
        self.simdevices = []
        self.source = emulator.source
        self.gateway = gateway
        self.wire = link if isinstance(link, Rtu) else None
        self.units = {u.unit_id: _UnitState(u, emulator.model(u.model), gateway.name) for u in gateway.units}

    def device_ids(self) -> list[int]:
        """The unit ids served."""
        return list(self.units)

    async def _admit(self, unit: _UnitState, rep: Mapping[str, Any], fc: int, count: int) -> ExcCodes | None:
        """Silence (NoSuchIdException), an exception code, or None to answer; waits the
        fault's delay and the wire time on the way."""
        if not rep.get("online", 1):
            raise NoSuchIdException(unit.label)
        faulted = unit.fault
        if faulted is not None:
            fault, since = faulted
            if fault.silent(since, time.monotonic()):
                raise NoSuchIdException(unit.label)
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay_s)
            elif fault.kind == "exception":
                return ExcCodes(fault.code)
        if self.wire is not None:
            await asyncio.sleep(self.wire.wire_s(fc, count))
        return None

    def _unknown(self, device_id: int) -> ExcCodes:
        """A unit id not served: a TCP gateway answers 0x0B; on a serial bus nobody answers."""
        if self.wire is not None:
            raise NoSuchIdException(f"{self.gateway.name}/{device_id}")
        return ExcCodes.GATEWAY_NO_RESPONSE

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[int] | list[bool] | ExcCodes:
        """Values of a read, live from the source."""
        unit = self.units.get(device_id)
        if unit is None:
            return self._unknown(device_id)
        table = FC_TABLE.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        rep = self.source.reported(unit.unit.twin)
        if func_code not in READBACK:
            refused = await self._admit(unit, rep, func_code, count)
            if refused is not None:
                return refused
        plan = unit.model.read_plan(table, address, count)
        if isinstance(plan, ExcCodes):
            return plan
        valve = NO_VALVE
        if plan.needs_valve and unit.unit.valve is not None:
            valve = self.source.reported(unit.unit.valve)
        held = unit.held
        now = {name: rep[name] for name in plan.fields}
        raws = [coder.raw(get(now, valve, held)) for coder, get in zip(plan.coders, plan.getters, strict=True)]
        faulted = unit.fault
        if faulted is not None and faulted[0].kind == "garbage":
            raws = [raw if c.garbage is None else c.garbage for c, raw in zip(plan.coders, raws, strict=True)]
        if table in BIT_TABLES:
            bits = [False] * count
            for at, raw in zip(plan.offsets, raws, strict=True):
                if 0 <= at < count:
                    bits[at] = bool(raw)
            return bits
        return _encode(plan, raws)

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: Sequence[int] | Sequence[bool]) -> ExcCodes | None:
        """A write: control points act on the source, held points keep the value."""
        unit = self.units.get(device_id)
        if unit is None:
            return self._unknown(device_id)
        table = FC_TABLE.get(func_code)
        if table is None or func_code in (1, 2, 3, 4):
            return ExcCodes.ILLEGAL_FUNCTION
        refused = await self._admit(unit, self.source.reported(unit.unit.twin), func_code, len(values))
        if refused is not None:
            return refused
        plan = unit.model.write_plan(table, address, len(values))
        if isinstance(plan, ExcCodes):
            return plan
        decoded = []
        for point in plan:
            at = point.address - address
            words = [int(v) for v in values[at:at + point.size]]
            value = decode(point, words)
            if not point.valid(value):
                return ExcCodes.ILLEGAL_VALUE
            if point.twin == "valve" and unit.unit.valve is None:
                return ExcCodes.ILLEGAL_ADDRESS  # a meter without a valve fitted
            decoded.append((point, value))
        for point, value in decoded:
            if point.field is None:
                unit.held[point.name] = value
                continue
            twin = unit.unit.valve if point.twin == "valve" else unit.unit.twin
            assert twin is not None
            try:
                await asyncio.to_thread(self.source.write, twin, point.field, int(value), unit.label)
            except (KeyError, ValueError) as err:
                log.info("%s: write of %s refused: %s", unit.label, point.name, err)
                return ExcCodes.DEVICE_FAILURE
        return None


# -- the emulator -------------------------------------------------------------------------------


class Emulator:
    """Emulated gateways for `gateways`, their values live from `source`.

    Gateway i listens on `base_port + i` (`base_port=0`: free ports, see `ports`) at
    `host`, as Modbus/TCP unless `links` names it with `Tls(...)` or `Rtu(...)`.
    """

    def __init__(self, gateways: Sequence[Gateway], source: Source, host: str = "127.0.0.1",
                 base_port: int = 5020, *, links: Mapping[str, Link] | None = None) -> None:
        if not 0 <= base_port <= 65535 - len(gateways):
            raise ValueError(f"0 <= base_port <= {65535 - len(gateways)}, not {base_port}")
        self.gateways = list(gateways)
        self.source = source
        self.host = host
        self.base_port = base_port
        self.links: dict[str, Link] = dict(links or {})
        unknown = set(self.links) - {g.name for g in self.gateways}
        if unknown:
            raise ValueError(f"links name gateways not in the layout: {', '.join(sorted(unknown))}")
        self._models: dict[str, _Model] = {}
        self.contexts = {g.name: _GatewayContext(self, g, self.links.get(g.name)) for g in self.gateways}
        self._where: dict[str, tuple[str, int]] = {}
        for g in self.gateways:
            for u in g.units:
                self._where[u.twin] = (g.name, u.unit_id)
                if u.valve:
                    self._where[u.valve] = (g.name, u.unit_id)
        self.servers: dict[str, ModbusTcpServer | ModbusSerialServer] = {}
        #: gateway name -> TCP port it listens on (TCP and TLS gateways), once started
        self.ports: dict[str, int] = {}

    def model(self, name: str) -> _Model:
        """A register map's plans, shared by every unit of that model."""
        model = self._models.get(name)
        if model is None:
            model = self._models[name] = _Model(load_map(name))
        return model

    # -- where things are -----------------------------------------------------------------

    def unit_of(self, twin_id: str) -> tuple[str, int]:
        """(gateway name, unit id) serving a twin (a valve: its water meter's unit)."""
        try:
            return self._where[twin_id]
        except KeyError:
            raise KeyError(f"no emulated unit serves {twin_id!r}") from None

    def url(self, twin_id: str) -> str:
        """Where a collector finds the twin, as a scenario's [[modbus]] url:
        modbus://HOST:PORT/UNIT, modbus+tls://HOST:PORT/UNIT or rtu://DEVICE/UNIT?baud=B."""
        gateway, unit_id = self.unit_of(twin_id)
        link = self.links.get(gateway)
        if isinstance(link, Rtu):
            return f"rtu://{link.peer or link.device}/{unit_id}?baud={link.baudrate}"
        scheme = "modbus+tls" if isinstance(link, Tls) else "modbus"
        return f"{scheme}://{self.host}:{self.ports.get(gateway, self.port_of(gateway))}/{unit_id}"

    def port_of(self, gateway: str) -> int:
        """The port a gateway listens on: the actual one once started, else the planned one."""
        if gateway in self.ports:
            return self.ports[gateway]
        index = next(i for i, g in enumerate(self.gateways) if g.name == gateway)
        return self.base_port + index if self.base_port else 0

    # -- faults ---------------------------------------------------------------------------------

    def set_fault(self, twin_id: str, fault: Fault | None) -> None:
        """Make the unit serving `twin_id` misbehave from now on (None: behave again).
        Safe from any thread."""
        gateway, unit_id = self.unit_of(twin_id)
        self.contexts[gateway].units[unit_id].fault = None if fault is None else (fault, time.monotonic())

    def fault_of(self, twin_id: str) -> Fault | None:
        """The unit's current fault, if any."""
        gateway, unit_id = self.unit_of(twin_id)
        faulted = self.contexts[gateway].units[unit_id].fault
        return None if faulted is None else faulted[0]

    def held(self, twin_id: str) -> dict[str, float]:
        """The unit's emulator-side values (alarm thresholds and such), by point name."""
        gateway, unit_id = self.unit_of(twin_id)
        return dict(self.contexts[gateway].units[unit_id].held)

    # -- running ------------------------------------------------------------------------------

    def _identity(self, gateway: Gateway) -> ModbusDeviceIdentification:
        return ModbusDeviceIdentification(info_name={
            "VendorName": "MeterTwin", "ProductCode": "MT-GW", "VendorUrl": "https://metertwin.example",
            "ProductName": "MeterTwin emulated gateway", "ModelName": gateway.name, "MajorMinorRevision": "1.0"})

    async def start(self) -> None:
        """Open every gateway (TCP and TLS listen; RTU opens its serial device)."""
        try:
            for i, gateway in enumerate(self.gateways):
                context, link = self.contexts[gateway.name], self.links.get(gateway.name)
                server: ModbusTcpServer | ModbusSerialServer
                if isinstance(link, Rtu):
                    server = ModbusSerialServer(context, framer=FramerType.RTU, port=link.device,
                                                baudrate=link.baudrate, parity=link.parity, stopbits=link.stopbits,
                                                identity=self._identity(gateway), ignore_missing_devices=True)
                else:
                    address = (self.host, self.base_port + i if self.base_port else 0)
                    if isinstance(link, Tls):
                        server = ModbusTlsServer(context, address=address, sslctx=link.context,
                                                 identity=self._identity(gateway), ignore_missing_devices=True)
                    else:
                        server = ModbusTcpServer(context, address=address, identity=self._identity(gateway),
                                                 ignore_missing_devices=True)
                try:
                    await asyncio.wait_for(server.serve_forever(background=True), START_TIMEOUT_S)
                except RuntimeError:
                    where = link.device if isinstance(link, Rtu) else f"{address[0]}:{address[1]}"
                    raise OSError(f"{gateway.name}: cannot listen on {where} (in use, or no such device)") from None
                self.servers[gateway.name] = server
                if not isinstance(link, Rtu):
                    self.ports[gateway.name] = int(server.transport.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close every gateway and its connections."""
        servers, self.servers = self.servers, {}
        for server in servers.values():
            with contextlib.suppress(Exception):
                await server.shutdown()
        for _ in range(3):  # closing transports finish on the loop's next turns
            await asyncio.sleep(0)
        self.ports = {}

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[Emulator]:
        """Run the gateways on their own event loop in a daemon thread while inside the
        block (tests, tools that are not asyncio). Example: ``with emulator.in_thread(): ...``"""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="modbus-emulator", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(START_TIMEOUT_S)
            yield self
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(START_TIMEOUT_S)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(START_TIMEOUT_S)
            if not thread.is_alive():
                loop.close()


# -- serial links ---------------------------------------------------------------------------------


class PtyPair:
    """Two linked pseudo-terminals made by socat: the emulator serves RTU on `device`, a
    collector opens `collector`. Example::

        with PtyPair() as pty:
            Emulator(gateways, source, links={"gw-B01-1": Rtu(pty.device)})
    """

    def __init__(self, directory: str | Path | None = None, name: str = "rtu") -> None:
        exe = shutil.which("socat")
        if exe is None:
            raise RuntimeError("an RTU link needs socat (Debian package socat)")
        self._scratch = None if directory else tempfile.mkdtemp(prefix="metertwin-pty-")
        base = Path(directory or self._scratch or ".")
        base.mkdir(parents=True, exist_ok=True)
        self.device = str(base / f"{name}-gateway")
        self.collector = str(base / f"{name}-collector")
        self._log = tempfile.TemporaryFile()  # socat's notices; a pipe nobody reads could fill and stall it
        self.process = subprocess.Popen(  # noqa: S603
            [exe, "-d", "-d", f"pty,raw,echo=0,link={self.device}", f"pty,raw,echo=0,link={self.collector}"],
            stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (os.path.exists(self.device) and os.path.exists(self.collector)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")
                self.close()
                raise RuntimeError(f"socat did not make the pty pair: {err.strip()[-400:]}")
            time.sleep(0.01)

    def close(self) -> None:
        """Stop socat (its links go with it) and remove the scratch directory."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(START_TIMEOUT_S)
        self._log.close()
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> PtyPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["DERIVED", "FAULT_KINDS", "HELD_DEFAULTS", "Emulator", "Fault", "Link", "PtyPair", "ReportedRow", "Rtu",
           "Source", "Tls", "WorldSource", "held_default"]
