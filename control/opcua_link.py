"""The platform as the OPC UA server sees it: the adapter the composition root hands to
`devices.opcua.server.TwinTreeServer`, so devices/ never imports control/.

- Commands: a method call becomes a command of the command book (source "operator",
  requested by `opcua:<user>`), and the method returns its outcome: confirmed, failed or
  expired, or still `sent` when the device has not answered within `METHOD_WAIT_S`.
- Users: the platform's users and roles (`control.auth`), password checked by scrypt.
- Balances: each meter's BalanceFen, its account's available balance from the ledger in
  platform billing (as /api/accounts and the dashboard show it), the meter's credit register
  in meter billing (a water meter shows its account's credit); no account, no value.
- Alarms: transitions of the alarm book (raised, acknowledged, cleared) since the last look.
- Thresholds: per-twin alarm limits an operator sets over OPC UA (PowerLimitW on electric
  meters, FlowLimitM3h on water meters). A periodic task raises `power_over_limit` or
  `flow_over_limit` while a twin is above its limit and clears it when it falls back; the
  limits are kept in the control store (meta `opcua_thresholds`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import numpy as np

from control.auth import AuthError
from control.commands import OPERATOR_ACTIONS, CommandError
from devices.opcua.server import AlarmNote, Balances, CommandOutcome, TwinTreeServer
from twin.alarms import Alarm, Severity
from twin.model import Kind

if TYPE_CHECKING:
    from control.runtime import Platform

log = logging.getLogger("metertwin.opcua")

#: How long a method call waits for the device to confirm (wall seconds): under the usual
#: 10 s client timeout; a command still `sent` then is followed at /api/commands/{id}.
METHOD_WAIT_S = 5.0
#: Threshold name -> (twin kind, reported field compared, alarm kind).
THRESHOLDS = {
    "power_limit_w": (Kind.ELECTRIC_METER, "power_w", "power_over_limit"),
    "flow_limit_m3h": (Kind.WATER_METER, "flow_m3h", "flow_over_limit"),
}
META_KEY = "opcua_thresholds"


class PlatformLink:
    """`TwinBackend` and `UserDirectory` over a running `Platform`."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.fleet = getattr(platform, "state", platform.world.state)  # the collector's state in Modbus mode
        self.site = platform.scenario.site
        self.interval_s = int(platform.world.interval_s)
        saved = platform.store.get_meta(META_KEY)
        self._limits: dict[str, dict[str, float]] = json.loads(saved) if saved else {}
        self._limits_lock = threading.Lock()
        self._dirty = False
        self._announced: dict[int, str] = {a.id: a.state.value for a in platform.alarms.open_alarms()}
        platform.every("alarm thresholds", float(self.interval_s), self._check_thresholds)
        #: the accounts of the metered twins, and per kind the index into them of each table row (-1: none)
        rows_accounts: dict[Kind, list[str | None]] = {}
        for kind in (Kind.ELECTRIC_METER, Kind.WATER_METER):
            accounts: list[str | None] = [None] * len(self.fleet.tables[kind])
            for twin, row in self.fleet.tables[kind].row_of.items():
                spec = platform.twin_specs.get(twin)
                accounts[row] = spec.account if spec is not None and spec.account else None
            rows_accounts[kind] = accounts
        self._names: list[str | None] = [*sorted({a for accounts in rows_accounts.values() for a in accounts if a})]
        number = {a: i for i, a in enumerate(self._names)}
        self._index = {kind: np.array([number[a] if a else -1 for a in accounts], dtype=np.int64)
                       for kind, accounts in rows_accounts.items()}

    # -- TwinBackend ----------------------------------------------------------------------

    def lock(self) -> AbstractAsyncContextManager[Any]:
        """The platform lock: the world does not move while it is held."""
        return self.platform.lock

    def now(self) -> float:
        """Platform time."""
        return self.platform.now()

    async def command(self, twin: str, action: str, user: str) -> CommandOutcome:
        """Create the command and wait (bounded) until the device confirms it or it fails."""
        if action not in OPERATOR_ACTIONS:
            return CommandOutcome("", "refused", f"unknown action {action!r}")
        platform = self.platform
        async with platform.lock:
            try:
                command = platform.commands.create(twin, action, by=f"opcua:{user}", source="operator",
                                                   now=platform.now())
            except CommandError as err:
                return CommandOutcome("", "refused", str(err))
        end = time.monotonic() + METHOD_WAIT_S
        while command.open and time.monotonic() < end:
            await asyncio.sleep(0.1)
        return CommandOutcome(command.id, command.state.value, command.reason or "")

    def set_threshold(self, twin: str, name: str, value: float, user: str) -> None:
        """Set a limit (0 turns it off); ValueError for a wrong twin, name or value."""
        spec = THRESHOLDS.get(name)
        if spec is None:
            raise ValueError(f"no threshold {name!r}; use one of {', '.join(THRESHOLDS)}")
        kind, _ = self.fleet.locate(twin)
        if kind is not spec[0]:
            raise ValueError(f"{name} applies to {spec[0].value} twins; {twin} is a {kind.value}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, not {value}")
        with self._limits_lock:
            self._limits.setdefault(twin, {})[name] = float(value)
            self._dirty = True
        log.info("OPC UA: %s set %s of %s to %g", user, name, twin, value)

    def thresholds(self) -> dict[str, dict[str, float]]:
        """Every limit set: twin -> name -> value."""
        with self._limits_lock:
            return {twin: dict(limits) for twin, limits in self._limits.items()}

    def alarm_changes(self) -> list[AlarmNote]:
        """Transitions since the last call: new or changed open alarms, and the ones cleared."""
        book = self.platform.alarms
        notes = []
        open_now = {a.id: a for a in book.open_alarms()}
        for alarm_id, alarm in sorted(open_now.items()):
            if self._announced.get(alarm_id) != alarm.state.value:
                self._announced[alarm_id] = alarm.state.value
                notes.append(_note(alarm))
        for alarm_id in [i for i in self._announced if i not in open_now]:
            del self._announced[alarm_id]
            notes.append(_note(book.get(alarm_id)))
        return notes

    def balances(self) -> dict[Kind, Balances]:
        """BalanceFen per meter row: one pass over the accounts per call (under the lock)."""
        if self.platform.meter_billing is None:  # platform billing: the ledger holds the balance
            available = np.asarray(self.platform.billing.available_many(self._names), dtype=np.int64)
            return {kind: Balances(_take(available, index), index >= 0, from_ledger=True)
                    for kind, index in self._index.items()}
        # meter billing: the meter's own credit register; a water meter shows its account's
        electric = self._index[Kind.ELECTRIC_METER]
        credit = self.fleet.tables[Kind.ELECTRIC_METER].faces["reported"]["credit_fen"].astype(np.int64)
        mine = electric >= 0
        by_account = np.bincount(electric[mine], weights=credit[mine], minlength=len(self._names))
        has_meter = np.bincount(electric[mine], minlength=len(self._names)) > 0
        water = self._index[Kind.WATER_METER]
        return {Kind.ELECTRIC_METER: Balances(credit, mine, from_ledger=False),
                Kind.WATER_METER: Balances(_take(np.rint(by_account).astype(np.int64), water),
                                           (water >= 0) & _take(has_meter, water).astype(bool), from_ledger=False)}

    # -- UserDirectory ----------------------------------------------------------------------

    def login(self, name: str, password: str) -> str | None:
        """The user's role if the password is right, else None."""
        try:
            return self.platform.auth.check_password(name, password).role.name.lower()
        except AuthError:
            return None

    # -- the threshold task (tick thread, under the platform lock) ---------------------------

    def _check_thresholds(self, now: float) -> None:
        limits = self.thresholds()
        with self._limits_lock:
            dirty, self._dirty = self._dirty, False
        if dirty:
            self.platform.store.set_meta(META_KEY, json.dumps(limits))
        for twin, named in limits.items():
            for name, limit in named.items():
                _, field, alarm_kind = THRESHOLDS[name]
                value = float(self.fleet.twin(twin).reported[field])
                if limit > 0 and value > limit:
                    alarm, new = self.platform.alarms.raise_(alarm_kind, twin=twin, at=now, severity=Severity.WARNING,
                                                             evidence={field: value, name: limit})
                    self.platform.alarm_changed(alarm, "raised" if new else "repeated")
                else:
                    cleared = self.platform.alarms.clear_subject(alarm_kind, twin=twin, at=now)
                    if cleared is not None:
                        self.platform.alarm_changed(cleared, "cleared")


def _take(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """values[index], 0 where the index is -1 (no account)."""
    if not len(values):
        return np.zeros(len(index), dtype=values.dtype)
    return np.where(index >= 0, values[np.maximum(index, 0)], 0).astype(values.dtype)


def _note(alarm: Alarm) -> AlarmNote:
    subject = alarm.twin or f"account {alarm.account}"
    evidence = ", ".join(f"{k}={v}" for k, v in sorted(alarm.evidence.items()))
    message = f"{alarm.kind} {alarm.state.value} on {subject}" + (f" ({evidence})" if evidence else "")
    return AlarmNote(alarm.id, alarm.kind, alarm.twin, alarm.account, int(alarm.severity), alarm.state.value,
                     alarm.start, message)


async def start_opcua(platform: Platform, port: int, anonymous: bool = False,
                      host: str = "127.0.0.1") -> TwinTreeServer:
    """Build and start the OPC UA server of the platform's site (certificates in
    DATA/opcua/, made on first start)."""
    link = PlatformLink(platform)
    server = TwinTreeServer(link, link, platform.data / "opcua", host=host, port=port, anonymous=anonymous)
    try:
        await server.start()
    except OSError as err:
        raise ValueError(f"OPC UA: cannot listen on {host}:{port} ({err.strerror or err}); "
                         "choose another --opcua-port, or --no-opcua") from None
    return server
