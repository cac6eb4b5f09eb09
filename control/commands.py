"""Commands: one record and one lifecycle for every remote action, whoever asked.

    created --send--> sent --reported state matches--> confirmed
       |                 |--deadline passes----------> failed (reason; alarm)
       |--deadline passed before sending------------> expired (reason; alarm)
       '--a newer command on the same point---------> expired (superseded; no alarm)

A command writes the twin's desired state and the absolute value to the device (relay
open, valve closed), so sending it again can do no harm; after a restart every open
command is sent again or expires. It is confirmed only when the device reports the
asked state after the command was sent, and, for a trip or a valve close, when the
measured power or flow has dropped too. A deadline is judged on the devices read after
it (see `CommandBook.read_since`). Every transition is stored with when and who.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from enum import StrEnum
from typing import Protocol

from control.store import Store, as_dict
from twin.model import Kind
from twin.state import FleetState


class CommandState(StrEnum):
    """Where a command is in its life."""

    CREATED = "created"
    SENT = "sent"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    EXPIRED = "expired"


OPEN_STATES = (CommandState.CREATED, CommandState.SENT)


@dataclass(frozen=True, slots=True)
class Action:
    """What an action does: write `value` to `field` of a twin of `kind` (None: the caller
    gives the value); `drops` names what must fall to (near) zero before it counts as done:
    "power" or "flow"; `at_least`: confirmed once the field reports the value or more."""

    kind: Kind  #: twin kind it applies to
    field: str  #: desired/reported field written
    value: int | None  #: absolute value written, or None when the command carries it
    drops: str | None = None  #: "power", "flow" or None
    at_least: bool = False  #: a counter: a later, larger report also confirms


ACTIONS: dict[str, Action] = {
    "relay_open": Action(Kind.ELECTRIC_METER, "relay_closed", 0, drops="power"),
    "relay_close": Action(Kind.ELECTRIC_METER, "relay_closed", 1),
    "valve_close": Action(Kind.VALVE, "open", 0, drops="flow"),
    "valve_open": Action(Kind.VALVE, "open", 1),
    # meter billing: write the meter's new purchase total (fen); it credits the difference once
    "credit_push": Action(Kind.ELECTRIC_METER, "purchased_fen", None, at_least=True),
}
#: What operators, batch tasks and the API may ask for; credit pushes come from top-ups only.
OPERATOR_ACTIONS: dict[str, Action] = {name: a for name, a in ACTIONS.items() if a.value is not None}
#: Power (W) under which a tripped meter counts as off, flow (m3/h) for a closed valve.
POWER_OFF_W = 5.0
FLOW_OFF_M3H = 0.001
#: Default time a device has to confirm, in platform seconds.
DEFAULT_DEADLINE_S = 1200.0


class CommandError(ValueError):
    """A command that cannot be created; the message says why."""


class Device(Protocol):
    """Where commands go: the simulated world, a Modbus collector, an OPC UA client."""

    def write(self, twin_id: str, field: str, value: int, source: str) -> None:
        """Write an absolute value to a twin's control point."""


class DeviceRouter:
    """A `Device` that sends each twin's writes to the device that serves it (OPC UA
    sources to their client sync), and every other twin's to `default`."""

    def __init__(self, default: Device, routes: dict[str, Device]) -> None:
        self.default = default
        self.routes = routes  #: twin id -> its device

    def write(self, twin_id: str, field: str, value: int, source: str) -> None:
        """Hand the write to the twin's device."""
        self.routes.get(twin_id, self.default).write(twin_id, field, value, source)


@dataclass
class Command:
    """One command. Example: ``Command("c-1a2b", "B01-02-03.em", "relay_open", "relay_closed", 0,
    "alice", "operator", 1767225600.0, 1767226800.0)``."""

    id: str  #: unique id
    twin: str  #: target twin
    action: str  #: a key of ACTIONS
    field: str  #: the point written
    value: int  #: the value written
    requested_by: str  #: user, key or policy that asked
    source: str  #: operator, policy, batch or protocol
    created: float  #: UTC epoch seconds (platform clock)
    deadline: float  #: after this, an unconfirmed command fails
    state: CommandState = CommandState.CREATED  #: where it is
    reason: str | None = None  #: why it failed or expired
    sent: float | None = None  #: when it was (last) sent
    done: float | None = None  #: when it reached a final state
    batch: str | None = None  #: the batch task it belongs to, if any
    events: list[dict[str, object]] = dataclass_field(default_factory=list)  #: transitions, oldest first

    @property
    def open(self) -> bool:
        """True while created or sent."""
        return self.state in OPEN_STATES

    def as_dict(self) -> dict[str, object]:
        """Plain data for the API."""
        return {"id": self.id, "twin": self.twin, "action": self.action, "field": self.field, "value": self.value,
                "requested_by": self.requested_by, "source": self.source, "created": self.created,
                "deadline": self.deadline, "state": self.state.value, "reason": self.reason, "sent": self.sent,
                "done": self.done, "batch": self.batch, "events": self.events}


class CommandBook:
    """Creates, sends, confirms and fails commands, and keeps them in the store.

    `on_problem(command)` is called once for every command that fails or expires for a
    reason other than being superseded: the runtime turns it into an alarm."""

    def __init__(self, store: Store, fleet: FleetState, device: Device, valve_meter: dict[str, str],
                 settle_s: float, on_problem: Callable[[Command], None]) -> None:
        self.store = store
        self.fleet = fleet
        self.device = device
        self.valve_meter = valve_meter
        self.settle_s = settle_s  #: time for a flow reading to cover only time after a close
        self.on_problem = on_problem
        #: read_since(t): whether the devices were read after platform time t (the runtime
        #: gives the Modbus link's `polled_since`: a whole poll cycle began at or after t and
        #: completed). A command past its deadline fails only once they were, so a platform
        #: or collector that fell behind (a loaded machine, a fast simulated clock) does not
        #: blame the device for a reading not taken yet; it fails regardless once as much
        #: time again has passed. Without a link, readings arrive as they happen.
        self.read_since: Callable[[float], bool] = lambda t: True
        self.open: dict[str, Command] = {}
        for row in store.db.execute("SELECT * FROM commands WHERE state IN ('created', 'sent') ORDER BY created"):
            command = self._from_row(as_dict(row))
            self.open[command.id] = command

    # -- creating -----------------------------------------------------------------------

    def create(self, twin: str, action: str, *, by: str, source: str, now: float,
               deadline_s: float = DEFAULT_DEADLINE_S, batch: str | None = None, value: int | None = None) -> Command:
        """Record and send a command; CommandError says what is wrong with the request.
        `value` is given only for actions that carry one (credit_push: the new purchase total)."""
        spec = ACTIONS.get(action)
        if spec is None:
            raise CommandError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
        if (spec.value is None) != (value is not None):
            raise CommandError(f"{action} takes a value" if spec.value is None else f"{action} takes no value")
        if value is not None and value < 0:
            raise CommandError(f"{action}: value must be at least 0, not {value}")
        written = spec.value if spec.value is not None else int(value)  # type: ignore[arg-type]
        try:
            kind, _ = self.fleet.locate(twin)
        except KeyError:
            raise CommandError(f"no twin {twin!r}") from None
        if kind is not spec.kind:
            raise CommandError(f"{action} applies to {spec.kind.value} twins; {twin} is a {kind.value}")
        if not 0 < deadline_s <= 86400:
            raise CommandError("deadline_s must be in (0, 86400]")
        command = Command(f"c-{uuid.uuid4().hex[:12]}", twin, action, spec.field, written, by, source, now,
                          now + deadline_s, batch=batch)
        for other in list(self.open.values()):
            if other.twin == twin and other.field == spec.field:
                self._finish(other, CommandState.EXPIRED, now, by, f"superseded by {command.id}", alarm=False)
        with self.store.write() as db:
            db.execute("INSERT INTO commands(id, twin, action, field, value, requested_by, source, created,"
                       " deadline, state, batch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (command.id, twin, action, spec.field, written, by, source, now, command.deadline,
                        command.state.value, batch))
            self._event(db, command, CommandState.CREATED, now, by, None)
        self.open[command.id] = command
        self._send(command, now)
        return command

    def _send(self, command: Command, now: float) -> None:
        self.fleet.desire(command.twin, command.field, command.value, int(now))
        self.device.write(command.twin, command.field, command.value, f"{command.source}:{command.requested_by}")
        command.sent = now
        command.state = CommandState.SENT
        with self.store.write() as db:
            db.execute("UPDATE commands SET state = ?, sent = ? WHERE id = ?", (command.state.value, now, command.id))
            self._event(db, command, CommandState.SENT, now, "platform", None)

    # -- following up -------------------------------------------------------------------

    def resume(self, now: float) -> None:
        """After a restart: send open commands again (writes are absolute), or expire the
        ones whose deadline passed while the platform was down."""
        for command in list(self.open.values()):
            if now > command.deadline:
                self._finish(command, CommandState.EXPIRED, now, "platform",
                             f"deadline passed while the platform was down ({command.state.value})")
            else:
                self._send(command, now)

    def check(self, now: float) -> list[Command]:
        """Confirm what the devices confirm, fail what is past its deadline; returns the
        commands that changed."""
        changed = []
        for command in list(self.open.values()):
            if command.state is CommandState.SENT and self._confirmed(command):
                self._finish(command, CommandState.CONFIRMED, now, "device", None)
                self.fleet.desire(command.twin, command.field, -1, int(now))  # applied: no gap left
                changed.append(command)
            elif now > command.deadline and (self.read_since(command.deadline)
                                             or now > 2 * command.deadline - command.created):
                reason = self._why_not(command)
                if not self.read_since(command.deadline):
                    reason += " (no poll of the devices completed since the deadline)"
                self._finish(command, CommandState.FAILED, now, "platform", reason)
                changed.append(command)
        return changed

    def not_confirmed(self, twin: str, field: str, value: int, reason: str, now: float) -> Command | None:
        """The device could not carry out a write (it did not read back): fail the sent
        command that asked for it at once, with the device's reason, instead of at its
        deadline. None when no such command is open (confirmed meanwhile, or superseded)."""
        for command in list(self.open.values()):
            if (command.twin, command.field, command.value) == (twin, field, value) and \
                    command.state is CommandState.SENT and not self._confirmed(command):
                self._finish(command, CommandState.FAILED, now, "device", reason)
                return command
        return None

    def _confirmed(self, command: Command) -> bool:
        view = self.fleet.twin(command.twin)
        sent = command.sent or command.created
        reported = view.reported[command.field]
        if ACTIONS[command.action].at_least:
            return bool(reported >= command.value)
        if reported != command.value or view.stamp("reported") < sent:
            return False
        drops = ACTIONS[command.action].drops
        if drops == "power":
            return bool(view.reported["power_w"] <= POWER_OFF_W)
        if drops == "flow":
            meter = self.fleet.twin(self.valve_meter[command.twin])
            return meter.stamp("reported") >= sent + self.settle_s and meter.reported["flow_m3h"] <= FLOW_OFF_M3H
        return True

    def _why_not(self, command: Command) -> str:
        view = self.fleet.twin(command.twin)
        reported = view.reported[command.field]
        if reported != command.value:
            return f"device did not confirm by the deadline: reports {command.field}={reported}"
        drops = ACTIONS[command.action].drops
        if drops == "power":
            return f"relay reports open but power is still {view.reported['power_w']:.0f} W"
        if drops == "flow":
            meter = self.fleet.twin(self.valve_meter[command.twin])
            return f"valve reports closed but flow continues ({meter.reported['flow_m3h']:.3f} m3/h)"
        return "device did not confirm by the deadline"

    def _finish(self, command: Command, state: CommandState, now: float, by: str, reason: str | None,
                alarm: bool = True) -> None:
        command.state, command.reason, command.done = state, reason, now
        with self.store.write() as db:
            db.execute("UPDATE commands SET state = ?, reason = ?, done = ? WHERE id = ?",
                       (state.value, reason, now, command.id))
            self._event(db, command, state, now, by, reason)
        self.open.pop(command.id, None)
        if alarm and state in (CommandState.FAILED, CommandState.EXPIRED):
            self.on_problem(command)

    @staticmethod
    def _event(db: sqlite3.Connection, command: Command, state: CommandState, at: float, by: str,
               reason: str | None) -> None:
        seq = len(command.events)
        command.events.append({"state": state.value, "at": at, "by": by, "reason": reason})
        db.execute("INSERT INTO command_events(command, seq, state, at, by, reason) VALUES (?, ?, ?, ?, ?, ?)",
                              (command.id, seq, state.value, at, by, reason))

    # -- reading ------------------------------------------------------------------------

    def get(self, command_id: str) -> Command:
        """A command by id, open or not; KeyError names it."""
        if command_id in self.open:
            return self.open[command_id]
        row = self.store.db.execute("SELECT * FROM commands WHERE id = ?", (command_id,)).fetchone()
        if row is None:
            raise KeyError(f"no command {command_id!r}")
        return self._from_row(as_dict(row))

    def recent(self, limit: int = 100, twin: str | None = None) -> list[Command]:
        """The latest commands, newest first."""
        if twin is None:
            rows = self.store.db.execute("SELECT * FROM commands ORDER BY created DESC LIMIT ?", (limit,))
        else:
            rows = self.store.db.execute("SELECT * FROM commands WHERE twin = ? ORDER BY created DESC LIMIT ?",
                                         (twin, limit))
        return [self.open.get(row["id"]) or self._from_row(as_dict(row)) for row in rows]

    def _from_row(self, row: dict[str, object]) -> Command:
        command = Command(str(row["id"]), str(row["twin"]), str(row["action"]), str(row["field"]),
                          int(row["value"]), str(row["requested_by"]), str(row["source"]),  # type: ignore[call-overload]
                          float(row["created"]), float(row["deadline"]), CommandState(row["state"]),  # type: ignore[arg-type]
                          row["reason"], row["sent"], row["done"], row["batch"])  # type: ignore[arg-type]
        command.events = [as_dict(e) for e in self.store.db.execute(
            "SELECT state, at, by, reason FROM command_events WHERE command = ? ORDER BY seq", (command.id,))]
        return command
