"""The platform's field side over Modbus: the collector keeps the platform's twins in sync.

`metertwin run` polls its twins through real sockets, as it would a site's hardware:
- its own simulated world behind emulated gateways on free loopback ports (the default;
  the emulator runs on an event loop of its own, in a thread, so serving registers never
  delays an API request), or
- a separate `metertwin emulate` (or real gateways laid out like it) named with
  `--gateways`: gateway i of the scenario's layout is the i-th address given, or
- real hardware named in the scenario: `[[modbus]]` sources (`modbus://HOST:PORT/UNIT`,
  `modbus+tls://...`, `rtu:///dev/ttyUSB0/UNIT?baud=9600`), polled by the same collector.

What the collector reads lands in the platform's `FleetState` (reported face, stamped with
platform time). Counter readings (kWh, m3) go to an `IntervalBuilder`; each interval
closes at its boundary and is queued for the tick thread, which stores it in the history
and bills it. A unit that stops answering is marked offline (`online = 0`) and raises an
`offline` alarm at once; a refused value (NaN, out of range, a counter going backwards or
jumping) raises `bad_reading` with the value and the reason, and never becomes consumption.

Commands reach the devices through `ModbusDevice.write`: the collector writes the control
point and reads it back; the command is confirmed by the twin's reported state as polled
(relay open and power gone), exactly as with any other device.

Threads: the collector's callbacks run on the platform's event loop; the tick thread takes
closed intervals and events with `drain()`. Both sides hold `self.lock` briefly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from control.intervals import IntervalBuilder
from devices.modbus.collector import Collector, CycleStats, Target, WriteOutcome, targets_for
from devices.modbus.emulator import Emulator, Source
from devices.modbus.layout import Gateway, layout
from scenarios.schema import ModbusSource
from twin.model import Kind, Site
from twin.state import FleetState

log = logging.getLogger("metertwin.modbus")

#: The counter each metered kind's interval values come from.
COUNTER = {Kind.ELECTRIC_METER: "energy_kwh", Kind.WATER_METER: "volume_m3", Kind.ELEVATOR: "energy_kwh",
           Kind.SHARED_CIRCUIT: "energy_kwh"}
#: Tries of a command's write when the gateway cannot be reached, and the pause between them.
WRITE_TRIES, WRITE_PAUSE_S = 3, 1.0


@dataclass(frozen=True)
class GatewayAddress:
    """Where a gateway of the layout answers: TCP (optionally TLS) or a serial device."""

    host: str = ""  #: TCP host, "" for serial
    port: int = 0  #: TCP port
    tls: bool = False  #: Modbus/TCP Security
    serial: str = ""  #: serial device for RTU
    baud: int = 9600  #: serial baud rate

    def __str__(self) -> str:
        if self.serial:
            return f"rtu://{self.serial}?baud={self.baud}"
        return f"{'modbus+tls' if self.tls else 'modbus'}://{self.host}:{self.port}"


def parse_gateways(text: str) -> list[GatewayAddress]:
    """`--gateways`: comma-separated `HOST:PORT`, `modbus+tls://HOST:PORT` or
    `rtu:///dev/pts/3?baud=9600`, in the order of the scenario's gateway layout (the order
    `metertwin emulate` prints). ValueError names the entry that is wrong."""
    addresses = []
    for n, raw in enumerate(filter(None, (part.strip() for part in text.split(","))), start=1):
        entry = raw if "://" in raw else f"modbus://{raw}"
        parts = urlsplit(entry)
        try:
            if parts.scheme == "rtu":
                query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
                if not parts.path:
                    raise ValueError("no serial device")
                addresses.append(GatewayAddress(serial=parts.path, baud=int(query.get("baud", 9600))))
            elif parts.scheme in ("modbus", "modbus+tls"):
                if not parts.hostname or parts.port is None:
                    raise ValueError("no host or port")
                addresses.append(GatewayAddress(parts.hostname, parts.port, tls=parts.scheme == "modbus+tls"))
            else:
                raise ValueError(f"unknown scheme {parts.scheme!r}")
        except ValueError as err:
            raise ValueError(f"--gateways entry {n} ({raw!r}): {err}; use HOST:PORT, modbus+tls://HOST:PORT "
                             "or rtu:///dev/pts/N?baud=9600") from None
    if not addresses:
        raise ValueError("--gateways names no gateway; use HOST:PORT[,HOST:PORT...]")
    return addresses


@dataclass
class LinkEvent:
    """Something the tick thread turns into an alarm: offline/online, or a refused value."""

    kind: str  #: "offline", "online" or "bad_reading"
    twin: str
    at: float  #: platform time
    evidence: dict[str, Any]


class ModbusLink:
    """Collector, interval builder and (optionally) the emulated gateways of an own world.

    `own_world`: a `Source` of the simulated world to serve behind emulated gateways on
    free loopback ports; `addresses`: the gateways of a separate emulator or real site,
    in layout order (exactly one of the two, or neither when only `sources` are polled).
    `sources`: the scenario's `[[modbus]]` twins; those twins are left out of the layout,
    and so are `elsewhere` (twins another link feeds through `reading`: OPC UA sources).
    `clock()` is platform time (UTC seconds); `poll_s` wall seconds between cycles.
    """

    def __init__(self, site: Site, state: FleetState, columns: Sequence[str], interval_s: int,
                 clock: Callable[[], float], *, own_world: Source | None = None,
                 addresses: Sequence[GatewayAddress] | None = None, sources: Sequence[ModbusSource] = (),
                 tls_dir: str | Path | None = None, per_gateway: int = 200, poll_s: float = 2.0,
                 timeout_s: float = 1.0, offline_after: int = 2, elsewhere: Collection[str] = ()) -> None:
        if own_world is not None and addresses:
            raise ValueError("serve an own world or poll given gateways, not both")
        self.state, self.clock, self.interval_s, self.poll_s = state, clock, interval_s, poll_s
        self.own_world = own_world
        self.tls_dir = Path(tls_dir) if tls_dir else None
        hardware = {s.twin for s in sources} | set(elsewhere)
        # the whole site's layout, as a separate emulate of this scenario serves it; twins polled
        # elsewhere are taken off their units, so every other unit keeps its gateway and unit id
        full = layout(site, per_gateway)
        self.addresses = list(addresses or [])
        if self.addresses and len(self.addresses) != len(full):
            listed = ", ".join(f"{g.name} ({len(g.units)} units)" for g in full)
            raise ValueError(f"--gateways gives {len(self.addresses)} addresses but the layout has "
                             f"{len(full)} gateways: {listed}")
        served = [_without(g, hardware) for g in full]
        if self.addresses:
            self.addresses = [a for g, a in zip(served, self.addresses, strict=True) if g.units]
        self.gateways = [g for g in served if g.units]
        self.sources = list(sources)
        self.valves = {t.valve_of: t.id for t in site.twins if t.kind is Kind.VALVE and t.valve_of}
        self.builder = IntervalBuilder(list(columns), interval_s)
        self.lock = threading.Lock()
        self.closed: deque[tuple[int, np.ndarray]] = deque()
        self.events: deque[LinkEvent] = deque()
        self.next_boundary = 0
        self._where: dict[str, tuple[Kind, np.ndarray]] = {}
        self._serve: contextlib.ExitStack | None = None
        self._targets: list[Target] = []
        self.emulator: Emulator | None = None
        self.collector: Collector | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.timeout_s, self.offline_after = timeout_s, offline_after
        self.cycles = 0
        self.last_cycle: CycleStats | None = None
        #: platform time at which the last completed cycle began (None before the first):
        #: a twin unread since then was asked and did not answer, one unread since earlier
        #: may only be waiting on a collector that fell behind
        self.last_cycle_began: float | None = None
        self.writes = {"confirmed": 0, "not_confirmed": 0, "unreachable": 0}
        self.waiting: list[tuple[str, str, int]] = []  #: writes asked for before `start`
        self.pending: set[asyncio.Task[Any]] = set()  #: writes under way

    # -- starting and stopping -------------------------------------------------------------------

    def targets(self) -> list[Target]:
        """Every target the collector polls (after `start` for an own world)."""
        tls = None
        if self.tls_dir is not None:
            from devices.modbus.certs import client_context

            tls = client_context(self.tls_dir)
        targets: list[Target] = []
        if self.emulator is not None:
            targets += [Target(g, host=self.emulator.host, port=self.emulator.ports[g.name]) for g in self.gateways]
        for gateway, address in zip(self.gateways, self.addresses, strict=False):
            if address.serial:
                targets.append(Target(gateway, serial=address.serial, baud=address.baud))
            else:
                if address.tls and tls is None:
                    raise ValueError(f"{address}: TLS needs --modbus-tls DIR with the CA and client certificate")
                targets.append(Target(gateway, host=address.host, port=address.port,
                                      tls=tls if address.tls else None))
        if self.sources:
            targets += targets_for(self.sources, tls, self.valves)
        return targets

    async def start(self, autorun: bool = True) -> None:
        """Serve the own world (if any) and start polling every `poll_s` (`autorun=False`:
        the caller runs `collector.poll_cycle()` itself); call on the platform's loop."""
        self.loop = asyncio.get_running_loop()
        if self.own_world is not None and self.gateways:
            self.emulator = Emulator(self.gateways, self.own_world, host="127.0.0.1", base_port=0)
            self._serve = contextlib.ExitStack()
            self._serve.enter_context(self.emulator.in_thread())  # its own loop: serving never delays the API
        self._targets = self.targets()
        self.collector = Collector(self._targets, self._reading, self._status, self._flag, clock=self.clock,
                                   timeout_s=self.timeout_s, offline_after=self.offline_after)
        self.next_boundary = self._boundary_after(self.clock())
        if autorun:
            self._task = asyncio.create_task(self._run(), name="modbus collector")
        waiting, self.waiting = self.waiting, []
        for twin, field, value in waiting:  # commands resumed before the loop ran
            self._spawn(self.write(twin, field, value))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    def status(self) -> dict[str, Any]:
        """For /api/health: gateways, cycles, the last cycle's figures, write outcomes."""
        cycle = self.last_cycle
        return {"gateways": len(self._targets), "cycles": self.cycles,
                "poll_s": self.poll_s, "writes": dict(self.writes),
                "last_cycle": None if cycle is None else {
                    "units_ok": cycle.units_ok, "units_failed": cycle.units_failed, "requests": cycle.requests,
                    "timeouts": cycle.timeouts, "flags": cycle.flags, "seconds": round(cycle.seconds, 3)}}

    async def _run(self) -> None:
        assert self.collector is not None
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.poll_cycle()
            except Exception:  # the collector catches per-unit faults; anything else is a bug: log, keep going
                log.exception("poll cycle failed")
            await asyncio.sleep(max(0.05, self.poll_s - (loop.time() - started)))

    async def poll_cycle(self) -> CycleStats:
        """Poll every unit once (what the polling task does every `poll_s`), and note when."""
        assert self.collector is not None, "start() the link first"
        began = self.clock()
        self.last_cycle = await self.collector.poll_cycle()
        self.cycles += 1
        self.last_cycle_began = began
        return self.last_cycle

    def polled_since(self, t: float) -> bool:
        """Whether a whole poll cycle began at or after platform time `t` and completed."""
        return self.last_cycle_began is not None and self.last_cycle_began >= t

    async def stop(self) -> None:
        """Stop polling and close the connections and the emulated gateways."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.collector is not None:
            self.collector.close()
        if self._serve is not None:
            self._serve.close()
            self._serve = None

    def describe(self) -> list[str]:
        """One line per polled gateway: name, address, units (for the start-up banner)."""
        if self.collector is None:
            return []
        return [f"{t} ({len(t.gateway.units)} units)" for t in self._targets]

    # -- readings in ----------------------------------------------------------------------------

    def _boundary_after(self, t: float) -> int:
        return (int(t) // self.interval_s + 1) * self.interval_s

    def _locate(self, twin: str) -> tuple[Kind, np.ndarray]:
        where = self._where.get(twin)
        if where is None:
            kind, row = self.state.locate(twin)
            where = self._where[twin] = (kind, np.array([row]))
        return where

    def _close_until(self, t: float) -> None:
        """Close every interval whose end is before `t` (under the lock)."""
        while self.next_boundary and self.next_boundary < t:
            self.closed.append(self.builder.close(self.next_boundary))
            self.next_boundary += self.interval_s

    def _reading(self, twin: str, fields: dict[str, float], ts: float) -> None:
        kind, rows = self._locate(twin)
        table = self.state.tables[kind]
        values = {name: value for name, value in fields.items() if name in table.faces["reported"]}
        values["online"] = 1
        self.state.report(kind, rows, int(ts), **values)
        counter = COUNTER.get(kind)
        if counter is not None and counter in fields:
            with self.lock:
                self._close_until(ts)
                self.builder.reading(twin, float(fields[counter]), int(ts))

    def _status(self, twin: str, online: bool, reason: str) -> None:
        kind, rows = self._locate(twin)
        table = self.state.tables[kind]
        table.faces["reported"]["online"][rows] = 1 if online else 0
        with self.lock:
            self.events.append(LinkEvent("online" if online else "offline", twin, self.clock(),
                                         {"reason": reason} if reason else {}))

    def _flag(self, twin: str, point: str, value: float, reason: str) -> None:
        with self.lock:
            self.events.append(LinkEvent("bad_reading", twin, self.clock(),
                                         {"point": point, "value": None if value != value else value,
                                          "reason": reason}))

    def reading(self, twin: str, fields: dict[str, float], ts: float) -> None:
        """A checked reading from another field link (OPC UA), taken like a polled one:
        into the twin's reported face, its counter into the interval builder."""
        self._reading(twin, fields, ts)

    def event(self, kind: str, twin: str, evidence: dict[str, Any]) -> None:
        """Queue an "offline", "online" or "bad_reading" event of another field link for
        the tick thread, which turns it into an alarm as it does the collector's."""
        with self.lock:
            self.events.append(LinkEvent(kind, twin, self.clock(), evidence))

    def hold(self, twin: str, ts: float) -> None:
        """A twin on a subscription whose link is up and that sent no change: its values
        still stand at `ts` (its counter's interval gets 0, not missing). A twin that never
        reported is left alone."""
        kind, rows = self._locate(twin)
        stamps = self.state.tables[kind].stamps["reported"]
        if not stamps[rows[0]]:
            return
        stamps[rows] = int(ts)
        counter = COUNTER.get(kind)
        if counter is None:
            return
        col = self.builder.col_of.get(twin)
        with self.lock:
            if col is not None and self.builder.latest_ts[col]:
                self._close_until(ts)
                self.builder.reading(twin, float(self.builder.latest[col]), int(ts))

    def drain(self, now: float) -> tuple[list[tuple[int, np.ndarray]], list[LinkEvent]]:
        """For the tick thread: intervals closed by `now` (in order) and the events since the
        last call."""
        with self.lock:
            self._close_until(now)
            closed, self.closed = list(self.closed), deque()
            events, self.events = list(self.events), deque()
        return closed, events

    # -- commands out ---------------------------------------------------------------------------

    async def write(self, twin: str, field: str, value: int) -> WriteOutcome | None:
        """Write a control point and read it back, trying again while the gateway is
        unreachable. None when no gateway serves the twin."""
        assert self.collector is not None
        outcome = None
        for attempt in range(WRITE_TRIES):
            try:
                outcome = await self.collector.write(twin, field, value)
            except (KeyError, ValueError) as err:
                log.error("command write %s.%s=%s: %s", twin, field, value, err)
                return None
            if outcome.status != "unreachable":
                break
            if attempt + 1 < WRITE_TRIES:
                await asyncio.sleep(WRITE_PAUSE_S)
        assert outcome is not None
        self.writes[outcome.status] += 1
        if not outcome.confirmed:
            log.warning("write %s.%s=%s %s: %s", twin, field, value, outcome.status, outcome.reason)
        return outcome


class ModbusDevice:
    """The command path's device in Modbus mode: `write` (called in the tick thread or on
    the loop) hands the write to the collector on the platform's loop and returns at once;
    the command is confirmed later by the polled state. Writes asked for before the
    collector starts (commands resumed after a restart) wait for it."""

    def __init__(self, link: ModbusLink) -> None:
        self.link = link

    def write(self, twin_id: str, field: str, value: int, source: str) -> None:
        link, loop = self.link, self.link.loop
        if loop is None or loop.is_closed() or link.collector is None:
            link.waiting.append((twin_id, field, value))
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            link._spawn(link.write(twin_id, field, value))
        else:
            loop.call_soon_threadsafe(link._spawn, link.write(twin_id, field, value))


def _without(gateway: Gateway, twins: set[str]) -> Gateway:
    """A gateway without the units of twins polled elsewhere (a valve polled elsewhere leaves
    its meter's unit; a meter polled elsewhere takes its valve along)."""
    if not twins:
        return gateway
    units = tuple(replace(u, valve=None) if u.valve in twins else u for u in gateway.units if u.twin not in twins)
    return replace(gateway, units=units)
