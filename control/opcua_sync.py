"""Twins from OPC UA devices in `metertwin run`: the scenario's `[[opcua]]` sources, kept in
sync by `devices.opcua.client.OpcUaSync` and taken down the same path as polled Modbus
readings.

- Readings: every good value is checked (a number, finite, whole for integer fields, 0 or 1
  for flags, a counter never negative nor going backwards) and handed to the Modbus link's
  `reading`: the twin's reported face, stamped with platform time like a polled reading,
  and its counter into the one `IntervalBuilder`, so history and billing see OPC UA twins
  exactly as Modbus ones. A value with a Bad status, an empty one, or one that fails a
  check raises `bad_reading` naming the twin and the field, and never reaches the twin or
  the history.
- Liveness: a subscription sends changes only, so while a server's link is up its twins'
  values still stand; each tick re-stamps them (`hold`), so the offline check and the
  northbound server's staleness see them alive and an interval without change gets 0, not
  missing. When the link drops they go offline with an `offline` alarm at once; the first
  value after the client resubscribes brings them back (`online`, the alarm cleared).
- Commands: `PlatformSync` is the command book's device for its twins (the router in
  control/commands.py sends it only theirs). A write waits (bounded) for the link to be up,
  then the client calls the mapped method or writes the node and reads it back; the
  read-back reports into the twin and confirms the command. When the device does not show
  the value, the command fails at the next tick with the client's reason, without waiting
  for its deadline.

Threads: the client and these callbacks run on the platform's event loop; `tick()` runs in
the tick thread under the platform lock; they share only the link's locked queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from asyncua import ua

from control.modbus_link import COUNTER, ModbusLink
from devices.opcua.client import OpcUaSync
from scenarios.schema import OpcUaSource
from twin.state import FIELDS

if TYPE_CHECKING:
    from devices.opcua.client import _Link, _Target

log = logging.getLogger("metertwin.opcua.sync")

#: How long a command waits for its server's link to come up before it is tried anyway
#: (and fails, saying the server is not connected), in wall seconds.
LINK_WAIT_S = 30.0


class PlatformSync(OpcUaSync):
    """The OPC UA client sync of a running platform, feeding `link` (the Modbus link's
    reading path and event queue). Example::

        sync = PlatformSync(modbus_link, scenario.opcua, cert_dir=data / "opcua" / "client")
        await sync.start()                  # on the platform's loop
        not_confirmed = sync.tick(now)      # each tick, in the tick thread
    """

    def __init__(self, link: ModbusLink, sources: list[OpcUaSource], cert_dir: str | Path | None = None) -> None:
        super().__init__(link.state, sources, on_reading=self._checked, cert_dir=cert_dir)
        self.link = link
        self.offline: set[str] = set()  #: twins whose link is down (their offline alarm raised)
        self.received: Counter[str] = Counter()  #: good values taken, per server URL
        self.refused: Counter[str] = Counter()  #: values refused, per server URL
        self._counters: dict[str, float] = {}  #: each twin's last good counter value
        self._fails: deque[tuple[str, str, int, str]] = deque(maxlen=10_000)  #: writes the device refused
        self._fails_lock = threading.Lock()
        self._waiting: list[tuple[str, str, int]] = []  #: writes asked for before `start`
        self._pending: set[asyncio.Task[Any]] = set()

    # -- readings in (event loop) -----------------------------------------------------------

    def _receive(self, target: _Target, datavalue: ua.DataValue) -> None:
        status = datavalue.StatusCode
        if status is not None and not status.is_good():
            self._refuse(target.twin, target.field, None, f"status {status.name}")
        elif datavalue.Value is None or datavalue.Value.Value is None:  # good, yet empty: the client skips it
            self._refuse(target.twin, target.field, None, "no value (status good)")
        super()._receive(target, datavalue)

    def _checked(self, twin: str, fields: dict[str, Any], source_time: float) -> None:
        for name, value in fields.items():
            problem = self._problem(twin, name, value)
            if problem is not None:
                self._refuse(twin, name, value, problem)
                return
        counter = COUNTER.get(self.fleet.locate(twin)[0])
        if counter is not None and counter in fields:
            self._counters[twin] = float(fields[counter])
        self.received[self.sources[twin].url] += len(fields)
        if twin in self.offline:
            self.offline.discard(twin)
            self.link.event("online", twin, {})
        self.link.reading(twin, {name: float(value) for name, value in fields.items()}, self.link.clock())

    def _problem(self, twin: str, name: str, value: Any) -> str | None:
        """Why a value cannot be a reading of `name`, or None when it can."""
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            return f"not a number: {type(value).__name__} {value!r:.40}"
        number = float(value)
        if not math.isfinite(number):
            return f"not a finite number: {number}"
        kind = self.fleet.locate(twin)[0]
        dtype = next((d for n, d, _ in FIELDS[kind]["reported"] if n == name), None)
        if dtype is None:
            return f"{name} is not a reported field of a {kind.value}"
        if dtype == "i1" and number not in (0.0, 1.0):
            return f"must be 0 or 1 (false or true), not {number:g}"
        if dtype.startswith("i") and not number.is_integer():
            return f"must be a whole number, not {number:g}"
        if name == COUNTER.get(kind):
            last = self._counters.get(twin)
            if number < 0:
                return f"counter below zero: {number:g}"
            if last is not None and number < last:
                return f"counter went backwards from {last:g} to {number:g}"
        return None

    def _refuse(self, twin: str, name: str, value: Any, reason: str) -> None:
        self.refused[self.sources[twin].url] += 1
        shown = value if isinstance(value, int | float) and not isinstance(value, bool) else (
            None if value is None else repr(value)[:40])
        self.link.event("bad_reading", twin, {"point": name, "value": shown, "reason": reason, "source": "opcua"})

    def _mark_offline(self, link: _Link) -> None:
        super()._mark_offline(link)
        for source in link.sources:
            if source.twin not in self.offline:
                self.offline.add(source.twin)
                self.link.event("offline", source.twin, {"reason": f"{link.url}: {link.last_error or 'not connected'}"})

    # -- the tick (tick thread, under the platform lock) -----------------------------------------

    def tick(self, now: float) -> list[tuple[str, str, int, str]]:
        """Re-stamp the twins of links that are up (no change sent: their values stand);
        return the writes the devices did not confirm since the last tick
        (twin, field, value, reason)."""
        for link in self.links.values():
            if link.connected:
                for source in link.sources:
                    if source.twin not in self.offline:
                        self.link.hold(source.twin, now)
        with self._fails_lock:
            fails, self._fails = list(self._fails), deque(maxlen=10_000)
        return fails

    def summary(self) -> dict[str, Any]:
        """For /api/health: per server, its link and the values taken and refused."""
        return {"links": [{**link, "values": self.received[link["url"]], "refused": self.refused[link["url"]]}
                          for link in self.status()],
                "values": sum(self.received.values()), "refused": sum(self.refused.values())}

    # -- commands out ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (in the background) and send the writes asked for before the loop ran
        (commands resumed after a restart)."""
        await super().start()
        waiting, self._waiting = self._waiting, []
        for twin, field_name, value in waiting:
            self._spawn(self._carry_out(twin, field_name, value))

    async def stop(self) -> None:
        """Cancel the writes under way, then disconnect."""
        for task in list(self._pending):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await super().stop()

    def write(self, twin_id: str, field_name: str, value: int, source: str) -> None:
        """The command book's `Device.write` (from any thread): carried out on the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._waiting.append((twin_id, field_name, int(value)))
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._spawn(self._carry_out(twin_id, field_name, int(value)))
        else:
            loop.call_soon_threadsafe(self._spawn, self._carry_out(twin_id, field_name, int(value)))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _carry_out(self, twin: str, field_name: str, value: int) -> None:
        link = self.links[self.sources[twin].url]
        end = time.monotonic() + LINK_WAIT_S
        while not link.connected and time.monotonic() < end:
            await asyncio.sleep(0.1)
        try:
            confirmed = await self.command(twin, field_name, value)
        except Exception as err:  # whatever the client raised: the command fails visibly, the loop goes on
            log.exception("OPC UA write %s.%s=%s", twin, field_name, value)
            confirmed, detail = False, f"{type(err).__name__}: {err}"
        else:
            detail = self.outcomes[-1][4] if self.outcomes else ""  # appended just before command() returned
        if not confirmed:
            with self._fails_lock:
                self._fails.append((twin, field_name, value, f"OPC UA device: {detail}"))
