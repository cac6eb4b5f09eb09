"""The collector: one asyncio poller reading every unit of every Modbus gateway.

Gateways are polled concurrently. A TCP (or TLS) gateway gets a few connections, a serial
RTU bus exactly one; each connection carries one request at a time (a pymodbus server
answers only the first of several requests arriving in one TCP segment, so nothing is ever
pipelined). A unit's points are read in as few contiguous requests as its register map
allows. Every request has a timeout, and is retried with a growing pause; after a timeout
or a frame that is not the answer, the connection is closed and opened afresh before its
next request, because a late reply would otherwise be taken for the next request's answer
(pymodbus 3.16 stamps it with the next transaction id and unit). A unit that fails
`offline_after` polls in a row is reported offline, and online again when it answers; a
unit whose last poll failed (all its retries spent) gets a single try, and an offline
unit one attempt per cycle. On TCP that attempt is made outside the cycle, on
one extra connection per gateway that tries the offline units one after the other (a
dead unit's timeout never holds up the living: a cycle with 10% dead units takes as long
as a clean one); on a serial bus, where every request shares the wire, it also rests for
1, 2, 4 ... cycles (at most `max_skip`) so a dead meter costs its neighbours little. A gateway that
cannot be reached is logged once at ERROR, then quietly until it answers again.

Decoded values go through `checks.Checks`: NaN, out of range, and counters going
backwards or jumping are reported with `on_flag` and never passed to `on_reading`.

Example::

    collector = Collector([Target(gateway, host="10.0.3.17", port=502)],
                          on_reading=lambda twin, fields, ts: ...,
                          on_status=lambda twin, online, reason: ...,
                          on_flag=lambda twin, point, value, reason: ...)
    stats = await collector.poll_cycle()            # CycleStats(units_ok=200, ...)
    outcome = await collector.write("B01-01-01.em", "relay_closed", 0)   # read back to confirm
    await collector.run(every_s=15)                  # until collector.stop()

Errors, as raised inside (none escapes `poll_cycle`; `write` turns them into outcomes)::

    Exception
     ├── ModbusFault           a request got no usable answer: that unit's poll fails
     │    ├── NoAnswer         nothing within the timeout: the connection is reset
     │    ├── Garbage          a frame that is not the answer: the connection is reset
     │    ├── LinkLost         the connection broke during the request
     │    └── DeviceException  the device answered with a Modbus exception code
     └── GatewayDown           no connection to the gateway could be opened

The seam for fault tests is `opener`: a coroutine function giving a `Stream` for a target
(default `open_stream`: TCP, TLS or a serial port); wrap it to split or corrupt frames.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import ssl
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from devices.modbus.checks import Checks
from devices.modbus.layout import Gateway, Unit
from devices.modbus.maps import BIT_TABLES, Point, Read, RegisterMap, decode, encode, load_map, plan_reads

log = logging.getLogger("metertwin.modbus")

READ_CODES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}  #: function code reading each table
WRITE_COIL, WRITE_REGISTERS = 5, 16
EXCEPTIONS = {1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "device failure",
              5: "acknowledge", 6: "device busy", 8: "memory parity error", 10: "gateway path unavailable",
              11: "gateway target failed to respond"}
FINAL_EXCEPTIONS = (1, 2, 3)  #: exception codes a retry cannot cure
MAX_FRAME = 260  #: bytes of the largest Modbus frame


# -- errors ------------------------------------------------------------------------------


class ModbusFault(Exception):
    """A request that got no usable answer."""

    retryable = True  #: may the same request be tried again?


class NoAnswer(ModbusFault):
    """Nothing came back within the timeout (the connection has been closed)."""


class Garbage(ModbusFault):
    """A frame that is not the answer to the request (the connection has been closed)."""


class LinkLost(ModbusFault):
    """The connection broke during the request."""


class DeviceException(ModbusFault):
    """The device answered with a Modbus exception code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"exception {code} ({EXCEPTIONS.get(code, 'unknown')})")
        self.code = code  #: Modbus exception code
        self.retryable = code not in FINAL_EXCEPTIONS


class GatewayDown(Exception):
    """No connection to the gateway could be opened."""


# -- targets and results -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where a gateway answers: Modbus/TCP at host:port (TLS when `tls` is given), or a
    serial RTU bus (`serial` device path and baud rate).

    Examples: ``Target(gw, host="10.0.3.17")``, ``Target(gw, host="10.0.3.17", port=802,
    tls=context)``, ``Target(gw, serial="/dev/ttyUSB0", baud=9600)``.
    """

    gateway: Gateway  #: the units it serves
    host: str = ""  #: TCP host, or "" for a serial bus
    port: int = 502  #: TCP port
    tls: ssl.SSLContext | None = None  #: client context for Modbus/TCP Security, else plain TCP
    serial: str = ""  #: serial device (RTU), or "" for TCP
    baud: int = 9600  #: serial baud rate
    connections: int | None = None  #: TCP connections to open, None: the collector's default

    def __post_init__(self) -> None:
        if bool(self.host) == bool(self.serial):
            raise ValueError("a target has either host (TCP) or serial (RTU), not both or neither")
        if self.serial and self.tls is not None:
            raise ValueError("tls is for TCP targets; a serial bus has no TLS")
        if not 0 < self.port < 65536:
            raise ValueError(f"0 < port < 65536, not {self.port}")
        if self.baud <= 0:
            raise ValueError(f"baud must be > 0, not {self.baud}")
        if self.connections is not None and self.connections < 1:
            raise ValueError(f"connections must be >= 1, not {self.connections}")

    @property
    def rtu(self) -> bool:
        """True for a serial RTU bus (one connection, one request at a time)."""
        return bool(self.serial)

    def __str__(self) -> str:
        if self.rtu:
            return f"{self.gateway.name} (rtu {self.serial} at {self.baud} baud)"
        return f"{self.gateway.name} ({'tls ' if self.tls else ''}{self.host}:{self.port})"


@dataclass(frozen=True, slots=True)
class CycleStats:
    """What one poll cycle did."""

    units_ok: int  #: units read completely
    units_failed: int  #: units that did not answer (or whose gateway was unreachable)
    units_skipped: int  #: offline units resting this cycle (serial buses)
    requests: int  #: requests sent, retries included
    timeouts: int  #: requests that got no answer in time
    flags: int  #: values refused by the checks
    seconds: float  #: wall-clock length of the cycle

    @property
    def requests_per_s(self) -> float:
        """Requests per second over the cycle."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """What became of a write. Example: ``WriteOutcome("B01-01-01.em", "relay_closed", 0,
    "confirmed", 0.0, "")``."""

    twin: str  #: twin written
    field: str  #: twin field written
    value: float  #: value asked for
    status: str  #: "confirmed", "not_confirmed" (read back differs) or "unreachable"
    read: float | None  #: value read back from the feeding point, None if unreachable
    reason: str  #: why it is not confirmed, "" when it is

    @property
    def confirmed(self) -> bool:
        """True when the device reads back the value asked for."""
        return self.status == "confirmed"


class Source(Protocol):
    """A twin read from Modbus hardware, as a scenario's [[modbus]] table gives it
    (`scenarios.schema.ModbusSource`)."""

    @property
    def twin(self) -> str: ...
    @property
    def host(self) -> str: ...  # the gateway host, or the serial device for RTU
    @property
    def port(self) -> int: ...  # TCP port (0 for serial)
    @property
    def unit(self) -> int: ...
    @property
    def model(self) -> str: ...
    @property
    def tls(self) -> bool: ...
    @property
    def baud(self) -> int: ...  # serial baud rate, 0 for TCP


def targets_for(sources: Sequence[Source], tls: ssl.SSLContext | None = None,
                valves: dict[str, str] | None = None) -> list[Target]:
    """Targets for a scenario's Modbus sources: one per gateway (host and port, or serial
    device), its units in unit-id order. `tls` is the client context for `modbus+tls`
    sources; `valves` maps a water meter's twin to its valve twin. ValueError when two
    sources share a unit, or a TLS source has no context."""
    grouped: dict[tuple[str, int, bool, int], list[Source]] = {}
    for source in sources:
        grouped.setdefault((source.host, source.port, source.tls, source.baud), []).append(source)
    targets = []
    for (host, port, secure, baud), members in grouped.items():
        members.sort(key=lambda m: m.unit)
        for a, b in zip(members, members[1:], strict=False):
            if a.unit == b.unit:
                raise ValueError(f"{a.twin} and {b.twin} are both unit {a.unit} of {host}")
        if secure and tls is None:
            raise ValueError(f"{members[0].twin}: modbus+tls://{host}:{port} needs a TLS client context")
        name = f"{host}@{baud}" if baud else f"{host}:{port}"
        units = tuple(Unit(m.unit, m.twin, m.model, (valves or {}).get(m.twin)) for m in members)
        gateway = Gateway(name, "", units)
        if baud:
            targets.append(Target(gateway, serial=host, baud=baud))
        else:
            targets.append(Target(gateway, host=host, port=port, tls=tls if secure else None))
    return targets


# -- streams: the seam between the collector and the wire --------------------------------


class Stream(Protocol):
    """A byte stream to a gateway (a TCP or TLS socket, a serial port, or a test's fake)."""

    async def readexactly(self, n: int) -> bytes:
        """Exactly `n` bytes; raises EOFError or OSError when the stream ends."""
        ...

    def write(self, data: bytes) -> None:
        """Queue bytes to send."""
        ...

    async def drain(self) -> None:
        """Wait until queued bytes are sent."""
        ...

    def discard_input(self) -> None:
        """Drop bytes received and not yet read (stale replies on a serial bus)."""
        ...

    def close(self) -> None:
        """Close the stream; it is not used again."""
        ...


Opener = Callable[["Target"], Awaitable[Stream]]


class SocketStream:
    """A TCP or TLS connection as a `Stream`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def readexactly(self, n: int) -> bytes:
        """Exactly `n` bytes."""
        return await self.reader.readexactly(n)

    def write(self, data: bytes) -> None:
        """Queue bytes to send."""
        self.writer.write(data)

    async def drain(self) -> None:
        """Wait until queued bytes are sent."""
        await self.writer.drain()

    def discard_input(self) -> None:
        """Nothing to do: on TCP the transaction id tells a stale frame apart."""

    def close(self) -> None:
        """Close the connection."""
        self.writer.close()


class SerialStream:
    """A serial port (pyserial, raw mode) as a non-blocking `Stream` on the running loop."""

    def __init__(self, device: str, baud: int) -> None:
        import serial  # pyserial, from pymodbus[serial]

        self._port = serial.Serial(device, baudrate=baud, timeout=0)
        self._fd = self._port.fileno()
        os.set_blocking(self._fd, False)
        self._loop = asyncio.get_running_loop()
        self._input = bytearray()
        self._output = bytearray()
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as err:
            self._fail(ConnectionError(f"serial read failed: {err}"))
            return
        if not data:
            self._fail(ConnectionError("serial port closed"))
            return
        self._input += data
        del self._input[:-4 * MAX_FRAME]  # bounded: only the newest bytes can matter
        self._wake()

    def _fail(self, error: Exception) -> None:
        self._error = error
        self._loop.remove_reader(self._fd)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def readexactly(self, n: int) -> bytes:
        """Exactly `n` bytes."""
        while len(self._input) < n:
            if self._error is not None:
                raise self._error
            self._waiter = self._loop.create_future()
            await self._waiter
        data = bytes(self._input[:n])
        del self._input[:n]
        return data

    def write(self, data: bytes) -> None:
        """Queue bytes to send."""
        self._output += data

    async def drain(self) -> None:
        """Send the queued bytes."""
        while self._output:
            try:
                sent = os.write(self._fd, self._output)
            except BlockingIOError:
                await self._writable()
                continue
            except OSError as err:
                raise ConnectionError(f"serial write failed: {err}") from None
            del self._output[:sent]

    async def _writable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_writer(self._fd, wake)
        try:
            await ready
        finally:
            self._loop.remove_writer(self._fd)

    def discard_input(self) -> None:
        """Drop bytes received and not yet read."""
        self._input.clear()

    def close(self) -> None:
        """Close the port."""
        if self._error is None:
            self._loop.remove_reader(self._fd)
        self._error = ConnectionError("serial port closed")
        self._wake()
        self._port.close()


async def open_stream(target: Target) -> Stream:
    """A fresh connection to a target: TCP, TLS (with the target's context) or serial."""
    if target.rtu:
        return SerialStream(target.serial, target.baud)
    reader, writer = await asyncio.open_connection(target.host, target.port, ssl=target.tls)
    return SocketStream(reader, writer)


# -- Modbus frames -----------------------------------------------------------------------


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC = _crc_table()


def crc16(data: bytes) -> int:
    """Modbus RTU CRC-16 of `data` (sent low byte first)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC[(crc ^ byte) & 0xFF]
    return crc


def read_pdu(read: Read) -> bytes:
    """The request PDU of a planned read."""
    return struct.pack(">BHH", READ_CODES[read.table], read.address, read.count)


def write_pdu(point: Point, registers: list[int]) -> bytes:
    """The request PDU writing a control point: Write Single Coil for a coil, Write
    Multiple Registers (which every meter takes) for holding registers."""
    if point.table == "coil":
        return struct.pack(">BHH", WRITE_COIL, point.address, 0xFF00 if registers[0] else 0)
    if point.table != "holding":
        raise ValueError(f"{point.name}: a {point.table} point cannot be written")
    return struct.pack(f">BHHB{len(registers)}H", WRITE_REGISTERS, point.address, len(registers),
                       2 * len(registers), *registers)


def answer_size(pdu: bytes) -> int:
    """Bytes of the answer PDU a request expects."""
    code, _, count = struct.unpack_from(">BHH", pdu)
    if code in (1, 2):
        return 2 + (count + 7) // 8
    if code in (3, 4):
        return 2 + 2 * count
    return 5


def check_answer(request: bytes, answer: bytes) -> None:
    """Raise DeviceException for an exception answer, Garbage for one that does not fit
    the request."""
    if not answer:
        raise Garbage("empty answer")
    if answer[0] == request[0] | 0x80 and len(answer) == 2:
        raise DeviceException(answer[1])
    if answer[0] != request[0] or len(answer) != answer_size(request):
        raise Garbage(f"answer with function {answer[0]} and {len(answer)} bytes does not fit "
                      f"function {request[0]}")
    if request[0] in (1, 2, 3, 4) and answer[1] != len(answer) - 2:
        raise Garbage(f"byte count {answer[1]} does not fit the {len(answer) - 2} bytes")
    if request[0] in (WRITE_COIL, WRITE_REGISTERS) and answer[1:5] != request[1:5]:
        raise Garbage("write answer does not echo the request")


def answer_values(read: Read, answer: bytes) -> list[int]:
    """Registers (or bits as 0/1) of a read's answer."""
    data = answer[2:]
    if read.table in BIT_TABLES:
        return [(data[i // 8] >> (i % 8)) & 1 for i in range(read.count)]
    return list(struct.unpack(f">{read.count}H", data))


async def _exchange_mbap(stream: Stream, tid: int, unit: int, pdu: bytes) -> bytes:
    stream.write(struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu)
    await stream.drain()
    got_tid, protocol, length, got_unit = struct.unpack(">HHHB", await stream.readexactly(7))
    if protocol != 0 or not 2 <= length <= 254:
        raise Garbage(f"not a Modbus/TCP header (protocol {protocol}, length {length})")
    answer = await stream.readexactly(length - 1)
    if got_tid != tid or got_unit != unit:
        raise Garbage(f"answer for transaction {got_tid} unit {got_unit}, expected {tid} unit {unit}")
    return answer


async def _exchange_rtu(stream: Stream, unit: int, pdu: bytes, gap_s: float) -> bytes:
    stream.discard_input()
    await asyncio.sleep(gap_s)  # the 3.5-character silence that ends a frame on the bus
    frame = bytes([unit]) + pdu
    stream.write(frame + crc16(frame).to_bytes(2, "little"))
    await stream.drain()
    head = await stream.readexactly(2)
    if head[1] & 0x80:
        rest = await stream.readexactly(3)
    elif head[1] in (1, 2, 3, 4):
        count = await stream.readexactly(1)
        rest = count + await stream.readexactly(count[0] + 2)
    elif head[1] in (5, 6, 15, 16):
        rest = await stream.readexactly(6)
    else:
        raise Garbage(f"unknown function {head[1]} in an RTU answer")
    whole = head + rest
    if crc16(whole) != 0:
        raise Garbage("RTU answer with a bad CRC")
    if whole[0] != unit:
        raise Garbage(f"RTU answer from unit {whole[0]}, expected {unit}")
    return whole[1:-2]


class Link:
    """One connection to a gateway, carrying one request at a time (never pipelined).
    Any failure inside a request closes it: the next request opens a fresh one."""

    def __init__(self, target: Target, opener: Opener) -> None:
        self.target = target  #: where it goes
        self._opener = opener
        self._stream: Stream | None = None
        self._tid = 0
        self._lock = asyncio.Lock()
        self._gap_s = max(0.00175, 38.5 / target.baud) if target.rtu else 0.0

    @property
    def connected(self) -> bool:
        """True while a stream is open."""
        return self._stream is not None

    async def open(self, timeout_s: float) -> None:
        """Open a fresh stream; OSError or TimeoutError when it cannot."""
        self.close()
        async with asyncio.timeout(timeout_s):
            self._stream = await self._opener(self.target)

    def close(self) -> None:
        """Close the stream, if open."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    async def exchange(self, unit: int, pdu: bytes, timeout_s: float) -> bytes:
        """Send one request PDU to a unit and return its answer PDU, checked."""
        async with self._lock:
            stream = self._stream
            if stream is None:
                raise LinkLost("not connected")
            try:
                async with asyncio.timeout(timeout_s):
                    if self.target.rtu:
                        answer = await _exchange_rtu(stream, unit, pdu, self._gap_s)
                    else:
                        self._tid = self._tid % 0xFFFF + 1
                        answer = await _exchange_mbap(stream, self._tid, unit, pdu)
            except TimeoutError:
                self.close()
                raise NoAnswer(f"no answer within {timeout_s:.3g} s") from None
            except (EOFError, OSError) as err:
                self.close()
                raise LinkLost(f"connection lost: {err or type(err).__name__}") from None
            except BaseException:  # Garbage, or cancelled mid-request: the stream is out of step
                self.close()
                raise
        check_answer(pdu, answer)
        return answer


class _Pool:
    """A gateway's idle links. `acquire` prefers a connected one; waiters are served in
    arrival order, so a write waits for at most one unit's poll."""

    def __init__(self, links: list[Link]) -> None:
        self._idle = list(links)
        self._waiters: deque[asyncio.Future[Link]] = deque()

    async def acquire(self) -> Link:
        if self._idle:
            link = next((k for k in self._idle if k.connected), self._idle[0])
            self._idle.remove(link)
            return link
        waiter: asyncio.Future[Link] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())
            raise

    def release(self, link: Link) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(link)
                return
        self._idle.append(link)


# -- the collector -----------------------------------------------------------------------


@dataclass(eq=False)
class _UnitState:
    unit: Unit
    regmap: RegisterMap
    reads: list[Read]
    polled: frozenset[Point]
    failures: int = 0  #: failed polls in a row
    online: bool | None = None  #: None until it first answers or goes offline
    skip_span: int = 0  #: cycles it rested last time (serial)
    skip_left: int = 0  #: cycles it still rests

    def twins(self) -> list[str]:
        return [self.unit.twin] + ([self.unit.valve] if self.unit.valve else [])


@dataclass(eq=False)
class _Bus:
    target: Target
    links: list[Link]
    pool: _Pool
    units: list[_UnitState]
    down_since: float | None = None  #: monotonic time the outage began
    down_reason: str = ""
    refused_in_cycle: int = -1  #: the cycle in which a connection was last refused
    connecting: asyncio.Lock = field(default_factory=asyncio.Lock)  #: one connection attempt at a time
    probe: Link | None = None  #: TCP: the extra connection on which offline units are tried
    probing: asyncio.Task[None] | None = None  #: TCP: the round of tries under way


@dataclass
class _Tally:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    requests: int = 0
    timeouts: int = 0
    flags: int = 0


ReadingSink = Callable[[str, dict[str, float], float], Any]
StatusSink = Callable[[str, bool, str], Any]
FlagSink = Callable[[str, str, float, str], Any]


class Collector:
    """Polls every unit of every target; see the module's docstring for the rules.

    Callbacks (plain functions, called on the event loop; keep them quick)::

        on_reading(twin, {field: value}, ts)   # good values of one unit's poll; a water
                                               #   meter's valve fields go to its valve twin
        on_status(twin, online, reason)        # first answer, offline after `offline_after`
                                               #   failed polls, online again
        on_flag(twin, point, value, reason)    # a refused value (NaN, range, counter)

    Parameters: `connections_per_gateway` TCP connections per gateway (a serial bus has
    one); `timeout_s` per TCP request; `retries` after a failed request (an offline unit
    gets none); `offline_after` failed polls in a row; `connect_timeout_s` to open a
    connection; `backoff_s` pause before the first retry, doubling; `serial_turnaround_s`
    a serial device's answer time, to which the frame's time on the wire at the bus's baud
    rate is added; `max_skip` the longest rest (in cycles) of an offline serial unit;
    `grace_s` slack of the counter checks; `clock` the time stamped on readings (seconds);
    `opener` makes the stream of a connection (the seam for fault tests).
    """

    def __init__(self, targets: Sequence[Target], on_reading: ReadingSink, on_status: StatusSink,
                 on_flag: FlagSink, *, connections_per_gateway: int = 4, timeout_s: float = 1.0,
                 retries: int = 2, offline_after: int = 3, connect_timeout_s: float = 3.0,
                 backoff_s: float = 0.05, serial_turnaround_s: float = 0.1, max_skip: int = 32,
                 grace_s: float = 60.0, clock: Callable[[], float] = time.time,
                 opener: Opener = open_stream) -> None:
        if connections_per_gateway < 1 or retries < 0 or offline_after < 1 or max_skip < 0:
            raise ValueError("connections_per_gateway >= 1, retries >= 0, offline_after >= 1, max_skip >= 0")
        if not (timeout_s > 0 and connect_timeout_s > 0 and backoff_s >= 0 and serial_turnaround_s > 0):
            raise ValueError("timeouts must be > 0 and backoff_s >= 0")
        self.on_reading, self.on_status, self.on_flag = on_reading, on_status, on_flag
        self.timeout_s, self.retries, self.offline_after = timeout_s, retries, offline_after
        self.connect_timeout_s, self.backoff_s = connect_timeout_s, backoff_s
        self.serial_turnaround_s, self.max_skip = serial_turnaround_s, max_skip
        self.clock = clock
        self.checks = Checks(grace_s)  #: range and counter checks, with each counter's reference
        self.last_stats: CycleStats | None = None  #: the latest cycle's stats
        self._buses: list[_Bus] = []
        self._serving: dict[str, tuple[_Bus, _UnitState, str]] = {}
        for target in targets:
            count = 1 if target.rtu else (target.connections or connections_per_gateway)
            links = [Link(target, opener) for _ in range(count)]
            self._opener = opener
            bus = _Bus(target, links, _Pool(links), [])
            for unit in target.gateway.units:
                regmap = load_map(unit.model)
                polled = regmap.polled()
                state = _UnitState(unit, regmap, plan_reads(regmap, polled), frozenset(polled))
                bus.units.append(state)
                for twin, side in ((unit.twin, "self"), (unit.valve, "valve")):
                    if twin is None:
                        continue
                    if twin in self._serving:
                        raise ValueError(f"{twin} is served twice: by {self._serving[twin][0].target} and {target}")
                    self._serving[twin] = (bus, state, side)
            self._buses.append(bus)
        self._cycle = 0
        self._cycle_lock = asyncio.Lock()
        self._stop = asyncio.Event()

    # -- polling -----------------------------------------------------------------------

    async def poll_cycle(self) -> CycleStats:
        """Poll every unit once (all gateways at once) and return what it took."""
        async with self._cycle_lock:
            self._cycle += 1
            tally = _Tally()
            start = time.monotonic()
            await asyncio.gather(*(self._poll_bus(bus, tally) for bus in self._buses))
            stats = CycleStats(tally.ok, tally.failed, tally.skipped, tally.requests, tally.timeouts, tally.flags,
                               time.monotonic() - start)
            self.last_stats = stats
            return stats

    async def run(self, every_s: float) -> None:
        """Poll a cycle every `every_s` seconds until `stop()`; a cycle that overruns is
        followed at once by the next. Closes the connections when it ends."""
        if not every_s > 0:
            raise ValueError(f"every_s must be > 0, not {every_s}")
        self._stop.clear()
        loop = asyncio.get_running_loop()
        next_at, warned = loop.time(), False
        try:
            while not self._stop.is_set():
                await self.poll_cycle()
                next_at += every_s
                if next_at < loop.time():
                    if not warned:
                        log.warning("a poll cycle took longer than %g s; polling back to back", every_s)
                        warned = True
                    next_at = loop.time()
                try:
                    async with asyncio.timeout(next_at - loop.time()):
                        await self._stop.wait()
                except TimeoutError:
                    pass
        finally:
            self.close()

    def stop(self) -> None:
        """Make `run` return after the current cycle."""
        self._stop.set()

    def close(self) -> None:
        """Close every connection (they reopen by themselves when used again)."""
        for bus in self._buses:
            if bus.probing is not None:
                bus.probing.cancel()
                bus.probing = None
            for link in bus.links + ([bus.probe] if bus.probe else []):
                link.close()

    def online(self, twin: str) -> bool | None:
        """Is a twin's unit answering? None until it first answers or goes offline."""
        return self._serving[twin][1].online

    async def _poll_bus(self, bus: _Bus, tally: _Tally) -> None:
        due: deque[_UnitState] = deque()
        for state in bus.units:
            if state.skip_left > 0:
                state.skip_left -= 1
                tally.skipped += 1
            else:
                due.append(state)
        if not bus.target.rtu:  # offline units are tried on their own connection, outside the cycle
            resting = [state for state in due if state.online is False]
            if resting and len(resting) < len(due):  # all offline: the gateway is down, try them here
                due = deque(state for state in due if state.online is not False)
                tally.skipped += len(resting)
                if bus.probing is None or bus.probing.done():
                    bus.probing = asyncio.create_task(self._probe(bus, resting))
        workers = min(len(bus.links), len(due))
        await asyncio.gather(*(self._worker(bus, due, tally) for _ in range(workers)))
        for state in due:  # left when no connection could be opened
            self._failed(bus, state, f"gateway unreachable: {bus.down_reason}", tally)

    async def _probe(self, bus: _Bus, resting: list[_UnitState]) -> None:
        """Try each offline unit of a TCP gateway once, one after the other, on the gateway's
        probe connection: a dead unit's timeout never holds up a cycle of the living ones."""
        if bus.probe is None:
            bus.probe = Link(bus.target, self._opener)
        tally = _Tally()
        for state in resting:
            try:
                await self._poll_unit(bus, bus.probe, state, tally)
            except GatewayDown:
                return
            except Exception:  # a bug here must not end the probing for good
                log.exception("probing %s failed", state.unit.twin)

    async def _worker(self, bus: _Bus, due: deque[_UnitState], tally: _Tally) -> None:
        while due:
            state = due.popleft()
            link = await bus.pool.acquire()
            try:
                await self._poll_unit(bus, link, state, tally)
            except GatewayDown:
                due.appendleft(state)  # another connection may still be up
                return
            finally:
                bus.pool.release(link)

    async def _poll_unit(self, bus: _Bus, link: Link, state: _UnitState, tally: _Tally) -> None:
        # an offline unit, or one that just failed a poll with all its retries, gets one try
        attempts = 1 if state.online is False or state.failures else self.retries + 1
        blocks = []
        try:
            for read in state.reads:
                answer = await self._ask(bus, link, state.unit.unit_id, read_pdu(read), attempts, tally)
                blocks.append(answer_values(read, answer))
        except ModbusFault as fault:
            self._failed(bus, state, f"unit {state.unit.unit_id}: {fault}", tally)
            return
        self._answered(state, blocks, tally)

    async def _ask(self, bus: _Bus, link: Link, unit_id: int, pdu: bytes, attempts: int, tally: _Tally,
                   force_connect: bool = False) -> bytes:
        """One request, tried up to `attempts` times with a doubling pause between."""
        fault: ModbusFault = NoAnswer("not tried")
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            if not link.connected:
                await self._connect(bus, link, force_connect)
            tally.requests += 1
            try:
                return await link.exchange(unit_id, pdu, self._timeout(bus.target, pdu))
            except NoAnswer as err:
                tally.timeouts += 1
                fault = err
            except ModbusFault as err:
                fault = err
                if not err.retryable:
                    break
        raise fault

    def _timeout(self, target: Target, pdu: bytes) -> float:
        """A TCP request's timeout, or a serial device's turnaround plus the time the
        request and its answer take on the wire (11 bits a character)."""
        if not target.rtu:
            return self.timeout_s
        characters = (len(pdu) + 3) + (answer_size(pdu) + 3)
        return self.serial_turnaround_s + characters * 11 / target.baud

    async def _connect(self, bus: _Bus, link: Link, force: bool) -> None:
        async with bus.connecting:  # so a gateway that is down costs one attempt a cycle
            if not force and bus.down_since is not None and bus.refused_in_cycle == self._cycle:
                raise GatewayDown(bus.down_reason)
            await self._open(bus, link)

    async def _open(self, bus: _Bus, link: Link) -> None:
        try:
            await link.open(self.connect_timeout_s)
        except OSError as err:  # refused, unreachable, TLS failure, timeout, no such port
            bus.refused_in_cycle = self._cycle
            reason = str(err) or type(err).__name__
            if bus.down_since is None:
                bus.down_since, bus.down_reason = time.monotonic(), reason
                log.error("%s unreachable: %s; retrying every cycle, quietly until it answers", bus.target, reason)
            else:
                log.debug("%s still unreachable: %s", bus.target, reason)
            raise GatewayDown(reason) from None
        if bus.down_since is not None:
            log.warning("%s reachable again after %.0f s", bus.target, time.monotonic() - bus.down_since)
            bus.down_since, bus.down_reason = None, ""

    def _answered(self, state: _UnitState, blocks: list[list[int]], tally: _Tally) -> None:
        ts = self.clock()
        tally.ok += 1
        state.failures, state.skip_span = 0, 0
        if state.online is not True:
            if state.online is False:
                log.info("%s (unit %d) answers again", state.unit.twin, state.unit.unit_id)
            state.online = True
            for name in state.twins():
                self._emit(self.on_status, name, True, "answering")
        fields: dict[str, dict[str, float]] = {}
        for read, values in zip(state.reads, blocks, strict=True):
            for point in read.points:
                twin = state.unit.valve if point.twin == "valve" else state.unit.twin
                if point not in state.polled or twin is None or point.field is None:
                    continue
                offset = point.address - read.address
                value = decode(point, values[offset:offset + point.size])
                problem = self.checks.problem(twin, point, value, ts)
                if problem is not None:
                    tally.flags += 1
                    log.debug("%s %s = %r refused: %s", twin, point.name, value, problem)
                    self._emit(self.on_flag, twin, point.name, value, problem)
                    continue
                fields.setdefault(twin, {})[point.field] = value
        for twin, values_by_field in fields.items():
            self._emit(self.on_reading, twin, values_by_field, ts)

    def _failed(self, bus: _Bus, state: _UnitState, reason: str, tally: _Tally) -> None:
        tally.failed += 1
        state.failures += 1
        if state.failures >= self.offline_after and state.online is not False:
            state.online = False
            level = logging.DEBUG if bus.down_since is not None else logging.WARNING  # the outage is logged
            log.log(level, "%s offline on %s after %d failed polls: %s", state.unit.twin, bus.target,
                    state.failures, reason)
            for twin in state.twins():
                self._emit(self.on_status, twin, False, reason)
        if state.online is False and bus.target.rtu:
            state.skip_span = min(self.max_skip, max(1, 2 * state.skip_span))
            state.skip_left = state.skip_span

    def _emit(self, sink: Callable[..., Any], *args: Any) -> None:
        try:
            sink(*args)
        except Exception:  # a sink's bug must not stop the polling; it is logged in full
            log.exception("%s failed on %r", getattr(sink, "__name__", "callback"), args[:2])

    # -- writing -----------------------------------------------------------------------

    async def write(self, twin: str, field: str, value: float, *, settle_s: float = 1.0,
                    recheck_s: float = 0.1) -> WriteOutcome:
        """Write a twin field's control point (a coil, or holding registers encoded by the
        map), then read back the point that feeds the field until it shows `value` or
        `settle_s` passes. KeyError for a twin no target serves, ValueError for a field
        the model cannot write or a value that does not fit."""
        if twin not in self._serving:
            raise KeyError(f"no target serves {twin!r}")
        bus, state, side = self._serving[twin]
        control = state.regmap.control(field, side)
        feeding = state.regmap.feeding(field, side)
        if control is None or feeding is None:
            raise ValueError(f"{twin}: model {state.regmap.name} has no control point for {field!r}")
        request = write_pdu(control, encode(control, value))
        unit_id, attempts, tally = state.unit.unit_id, self.retries + 1, _Tally()
        refused = ""
        link = await bus.pool.acquire()
        try:
            await self._ask(bus, link, unit_id, request, attempts, tally, force_connect=True)
        except DeviceException as err:
            refused = f"the device refused the write: {err}"
        except (ModbusFault, GatewayDown) as err:
            return WriteOutcome(twin, field, value, "unreachable", None, f"write failed: {err}")
        finally:
            bus.pool.release(link)
        readback = Read(feeding.table, feeding.address, feeding.size, (feeding,))
        deadline = time.monotonic() + settle_s
        while True:
            link = await bus.pool.acquire()
            try:
                answer = await self._ask(bus, link, unit_id, read_pdu(readback), attempts, tally, force_connect=True)
            except (ModbusFault, GatewayDown) as err:
                return WriteOutcome(twin, field, value, "unreachable", None, f"read-back failed: {err}")
            finally:
                bus.pool.release(link)
            seen = decode(feeding, answer_values(readback, answer))
            if not refused and _same(control, feeding, value, seen):
                return WriteOutcome(twin, field, value, "confirmed", seen, "")
            if refused or time.monotonic() >= deadline:
                reason = refused or f"{feeding.name} reads {seen:g} after {settle_s:g} s, not {value:g}"
                return WriteOutcome(twin, field, value, "not_confirmed", seen, reason)
            await asyncio.sleep(recheck_s)


def _same(control: Point, feeding: Point, asked: float, seen: float) -> bool:
    """Does the read-back value show what was written (a switch by its state, a number
    within half a step of either point's scale)?"""
    if control.type == "bool" or feeding.type == "bool":
        return bool(asked) == (seen != 0)
    return not math.isnan(seen) and abs(seen - asked) <= max(abs(control.scale), abs(feeding.scale)) / 2


__all__ = ["Collector", "CycleStats", "DeviceException", "Garbage", "GatewayDown", "Link", "LinkLost", "ModbusFault",
           "NoAnswer", "Opener", "SerialStream", "SocketStream", "Source", "Stream", "Target", "WriteOutcome",
           "answer_values", "check_answer", "crc16", "open_stream", "read_pdu", "targets_for", "write_pdu"]
