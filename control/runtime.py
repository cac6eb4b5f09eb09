"""The live platform: one process, one asyncio loop, one clock.

`Platform` composes the simulated world (stepped in scaled real time), the twins' state,
the history, the command book, the alarm book, users and keys, and the periodic tasks
that later parts (billing, analytics, history, policies) register. `serve()` runs it with
the HTTP server (API and health page) in the same loop until SIGINT or SIGTERM.

The world moves in a worker thread (its Numba kernels release the GIL), under a lock
that every handler touching the world or the commands takes too, so the loop never stalls
on a kernel and never sees a half-moved world.

Restart: the world is deterministic, so its snapshot is the scenario, the seed, the start,
the simulated time reached and every write made to it from outside (commands). On start
the platform rebuilds the world and replays it to that time, writes included, then goes
on live; history rows of the replayed days are rewritten identically.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from control import analytics_live
from control.auth import Auth
from control.batch import TaskBook
from control.billing import LiveBilling
from control.commands import Command, CommandBook, Device, DeviceRouter
from control.detect_live import attach, warm_up
from control.influx import sink_for
from control.meter_billing import MeterBilling
from control.modbus_link import GatewayAddress, ModbusDevice, ModbusLink
from control.month_close import Closed, MonthClose
from control.notify import Notifier
from control.opcua_sync import PlatformSync
from control.payments import load_secrets
from control.policies import AccountPolicyState, PolicySettings, PrepaidPolicy
from control.store import Store
from control.topups import TopUpBatcher
from devices.modbus.emulator import WorldSource
from devices.sim.world import DayResult, World
from scenarios.loader import load_scenario
from twin.alarms import Alarm, AlarmBook, Severity
from twin.history import HistoryWriter, Topology
from twin.ledger import Ledger
from twin.model import Kind
from twin.state import FleetState

log = logging.getLogger("metertwin")

WRITES_SCHEMA = """
CREATE TABLE IF NOT EXISTS world_writes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, sim_s REAL NOT NULL, twin TEXT NOT NULL, field TEXT NOT NULL,
    value INTEGER NOT NULL, source TEXT NOT NULL
);
"""
#: The world runs for ten years at most; a live demo never gets there.
LIVE_DAYS = 3650
#: Wall seconds between ticks of the loop, and between saves of the simulated time.
TICK_S = 0.2
SAVE_S = 2.0


@dataclass
class PeriodicTask:
    """A job run every `every_s` seconds of platform time. `run(now_utc)` is called in a
    worker thread under the platform lock. Example: ``PeriodicTask("offline", 900, check)``."""

    name: str  #: shown in logs and /api/health
    every_s: float  #: period in platform seconds
    run: Callable[[float], None]  #: the job
    next_due: float = 0.0  #: platform UTC time it runs next
    runs: int = 0  #: how many times it ran
    last_error: str | None = None  #: the last failure, if any


class SimClock:
    """Simulated time moving at `speed` times wall time from `sim_s` now."""

    def __init__(self, sim_s: float, speed: float) -> None:
        self.speed = speed
        self.base_sim = sim_s
        self.base_wall = time.monotonic()

    def sim_s(self) -> float:
        """Seconds since the world's start, now."""
        return self.base_sim + (time.monotonic() - self.base_wall) * self.speed


@dataclass
class ModbusOptions:
    """How `metertwin run` reaches its twins over Modbus (see control/modbus_link.py)."""

    addresses: list[GatewayAddress] = field(default_factory=list)  #: a separate emulator's gateways; [] serves our own
    tls_dir: str | None = None  #: CA and client certificate for Modbus/TCP Security
    poll_s: float = 2.0  #: wall seconds between poll cycles
    per_gateway: int = 200  #: units per emulated gateway (must match a separate emulator's)


class RecordingDevice:
    """The command path's device: writes go to the world and are kept for replay."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def write(self, twin_id: str, field: str, value: int, source: str) -> None:
        """Record the write at the world's time, then apply it."""
        world = self.platform.world
        with self.platform.store.write() as db:
            db.execute("INSERT INTO world_writes(sim_s, twin, field, value, source) VALUES (?, ?, ?, ?, ?)",
                       (world.now_s, twin_id, field, value, source))
        world.write(twin_id, field, value, source)


class RecordingSource(WorldSource):
    """The world as the emulated gateways see it: a control write is recorded for replay
    after a restart, then applied under the world's lock."""

    def __init__(self, platform: Platform) -> None:
        super().__init__(platform.world)
        self.platform = platform

    def write(self, twin_id: str, field: str, value: int, source: str) -> None:
        """Record the write at the world's time, then apply it."""
        with self.lock:
            with self.platform.store.write() as db:
                db.execute("INSERT INTO world_writes(sim_s, twin, field, value, source) VALUES (?, ?, ?, ?, ?)",
                           (self.world.now_s, twin_id, field, value, source))
            self.world.write(twin_id, field, value, source)


def aligned_now(timezone: str, interval_s: int) -> datetime:
    """The current site-local time, rounded down to an interval boundary (naive)."""
    now = int(time.time())
    now -= now % interval_s
    return datetime.fromtimestamp(now, tz=ZoneInfo(timezone)).replace(tzinfo=None)


class Platform:
    """Everything `metertwin run` runs, built and resumed from a data directory."""

    def __init__(self, scenario_path: str, data_dir: str | Path, *, speed: float = 60.0,
                 start: datetime | None = None, seed: int = 0, webhooks: list[str] | None = None,
                 billing_tick_s: float = 86400.0, modbus: ModbusOptions | None = None) -> None:
        self.data = Path(data_dir)
        self.data.mkdir(parents=True, exist_ok=True)
        self.scenario_path = scenario_path
        self.scenario = load_scenario(scenario_path)
        self.twin_specs = {t.id: t for t in self.scenario.site.twins}
        self.accounts = {a.id: a for a in self.scenario.site.accounts}
        self.store = Store(self.data / "control.sqlite")
        self.store.db.executescript(WRITES_SCHEMA)
        # its own connection: request handlers check keys without waiting on the tick thread's writes
        self.auth = Auth(Store(self.data / "control.sqlite"))
        self.notifier = Notifier(webhooks)
        saved = self.store.get_meta("world")
        if saved:
            snap = json.loads(saved)
            if snap["scenario"] != Path(scenario_path).name:
                raise ValueError(f"{self.data} holds a run of {snap['scenario']}, not {Path(scenario_path).name}: "
                                 "use another --data directory")
            seed, start, resume_s = int(snap["seed"]), datetime.fromisoformat(snap["start"]), float(snap["sim_s"])
        else:
            start = start or aligned_now(self.scenario.site.timezone, self.scenario.interval_s)
            resume_s = 0.0
        self.seed, self.speed = seed, speed
        self.world = World(self.scenario, seed=seed, start=start, days=LIVE_DAYS, live=True)
        self.store.set_meta("world", json.dumps({"scenario": Path(scenario_path).name, "seed": seed,
                                                 "start": self.world.start.isoformat(), "sim_s": resume_s}))
        self._replay_writes(resume_s)
        topology = Topology.from_twins(self.scenario.site.id, self.scenario.site.timezone,
                                       self.world.interval_s, self.scenario.site.twins)
        self.history = HistoryWriter(self.data / "history", topology, background=True)  # roll-ups off the tick
        #: the InfluxDB sink (scenario [influx] or METERTWIN_INFLUX_URL), None when off
        self.influx = sink_for(self.scenario.influx, self.data, topology, self.data / "ledger.sqlite")
        self.alarms = AlarmBook(self.store.load_alarms())
        valves = {t.id: t.valve_of for t in self.scenario.site.twins if t.kind is Kind.VALVE and t.valve_of}
        self.modbus: ModbusLink | None = None
        #: the twins as the platform knows them: the world's own state when it feeds them
        #: directly, or what the collector last read over Modbus
        self.state: FleetState = self.world.state
        self.source = RecordingSource(self)  #: the world as hardware: writes recorded for replay, under its lock
        device: Device = RecordingDevice(self)
        #: the [[opcua]] sources' client sync (beside the Modbus collector), None without any
        self.opcua_sync: PlatformSync | None = None
        opcua_twins = {s.twin for s in self.scenario.opcua}
        if opcua_twins and modbus is None:
            raise ValueError(f"{Path(scenario_path).name} has [[opcua]] sources: they are synced beside the Modbus "
                             "collector; run without --no-modbus")
        if modbus is not None:
            self.state = FleetState.from_site(self.scenario.site)
            self.modbus = ModbusLink(
                self.scenario.site, self.state, [c.id for c in topology.columns], self.world.interval_s, self.now,
                own_world=None if modbus.addresses else self.source, addresses=modbus.addresses,
                sources=self.scenario.modbus, tls_dir=modbus.tls_dir, per_gateway=modbus.per_gateway,
                poll_s=modbus.poll_s, elsewhere=opcua_twins)
            device = ModbusDevice(self.modbus)
            if opcua_twins:
                self.opcua_sync = PlatformSync(self.modbus, self.scenario.opcua,
                                               cert_dir=self.data / "opcua" / "client")
                device = DeviceRouter(device, dict.fromkeys(opcua_twins, self.opcua_sync))
        self.commands = CommandBook(self.store, self.state, device, valves, self.world.interval_s,
                                    self._command_problem)
        if self.modbus is not None:  # a deadline is judged on readings taken after it
            self.commands.read_since = self.modbus.polled_since
        self.batch = TaskBook(self.store, self.scenario.site, self.commands)
        self._setup_billing()
        replay_started = time.perf_counter()
        self.world.begin(self._on_day if self.modbus is None else lambda day: None)
        self.world.advance_to(resume_s)
        self.replay_seconds = time.perf_counter() - replay_started
        self.commands.resume(self.now())
        self.tasks: list[PeriodicTask] = []
        self.every("offline check", 2 * self.world.interval_s, self._check_offline)
        self.every("billing tick", billing_tick_s, self._billing_tick)
        if self.platform_billing:
            self.every("prepaid policy", self.world.interval_s, self._run_policies)
        if self.meter_billing is not None:
            self.every("meter reconciliation", 3600.0, self._reconcile_meters)
        self.started_wall = time.time()
        self.lock = asyncio.Lock()  # binds to the running loop on first use
        self.stopping = False
        self.topups: TopUpBatcher | None = None
        self.detectors = attach(self)  # anomaly and theft detectors, alarms with evidence
        self.analytics = analytics_live.attach(self)  # load analytics, energy_loss alarms
        self.warm_up()
        self.clock = SimClock(resume_s, speed)  # the world moves from here, its kernels ready

    # -- composition --------------------------------------------------------------------

    def warm_up(self) -> None:
        """Compile the kernels the live platform calls (or load them from Numba's cache:
        a fraction of a second) before the world moves: compiled on first use instead, they
        would hold the interpreter for tens of seconds while the world's clock runs on and
        the collector waits, and every meter would look silent. One line on stderr when it
        takes more than a second (a first run, a changed kernel)."""
        noted = threading.Event()

        def note() -> None:
            print("compiling the detector and history kernels (cached for the next start) ...", end="",
                  file=sys.stderr, flush=True)
            noted.set()

        timer = threading.Timer(1.0, note)
        timer.daemon = True
        timer.start()
        seconds: float | None = None
        try:
            seconds = warm_up(self, days=self.detectors.window_days) + analytics_live.warm_up(self)
        except Exception:  # not fatal: the kernels then compile on first use, as before
            log.exception("kernel warm-up failed")
        finally:
            timer.cancel()
            timer.join()  # the note is printed whole or not at all
        if noted.is_set():
            print(" failed" if seconds is None else f" {seconds:.0f} s", file=sys.stderr, flush=True)

    def every(self, name: str, every_s: float, run: Callable[[float], None]) -> PeriodicTask:
        """Register a periodic task; it first runs one period from now."""
        task = PeriodicTask(name, every_s, run, self.now() + every_s)
        self.tasks.append(task)
        return task

    def now(self) -> float:
        """Platform time: the world's clock as UTC epoch seconds."""
        return self.world.start_utc + self.world.now_s

    def set_speed(self, speed: float) -> None:
        """Go on from the simulated time reached at `speed` simulated seconds per wall
        second (0 holds the clock)."""
        self.clock = SimClock(self.clock.sim_s(), speed)
        self.speed = speed

    def wall_now(self) -> float:
        """Wall-clock UTC: payment providers sign with real time, whatever the world's speed."""
        return time.time()

    def _replay_writes(self, until_s: float) -> None:
        rows = self.store.db.execute("SELECT sim_s, twin, field, value, source FROM world_writes ORDER BY seq")
        for row in rows:
            if row["sim_s"] > until_s:
                continue  # recorded after the last saved time: the command resumes it
            apply = functools.partial(self.world.write, row["twin"], row["field"], int(row["value"]), row["source"])
            self.world.at(timedelta(seconds=float(row["sim_s"])), apply)

    # -- billing and prepaid policies -------------------------------------------------------

    def _setup_billing(self) -> None:
        """The ledger, live billing, and (in platform billing) the residents' link to it."""
        self.ledger = Ledger(self.data / "ledger.sqlite")
        self.payment_secrets = load_secrets(self.data / "payment_providers.json")
        self.billing = LiveBilling(self.scenario, self.world.column_of, self.ledger, self.world.interval_s)
        self.posted_until = float(self.store.get_meta("billing_posted_until") or 0.0)
        self.world.on_interval = self._on_interval
        self.month_close = MonthClose(self.scenario, self.world.column_of, self.ledger, self.store,
                                      self.world.start_utc)
        self.closed_months: list[Closed] = []
        residents = self.scenario.residents
        self.platform_billing = residents is not None and residents.billing == "platform"
        self.meter_billing: MeterBilling | None = None
        self.policy = PrepaidPolicy(PolicySettings(timezone=self.scenario.site.timezone))
        saved = self.store.get_meta("policy_states")
        if saved:
            for account, state in json.loads(saved).items():
                self.policy.states[account] = AccountPolicyState(state["level"], state["cut"], state["access"])
        self.account_twins: dict[str, list[str]] = defaultdict(list)
        for twin in self.scenario.site.twins:
            if twin.account and twin.kind in (Kind.ELECTRIC_METER, Kind.VALVE):
                self.account_twins[twin.account].append(twin.id)
        if self.platform_billing and self.world.prepaid is not None:
            self.world.balance_of = self.billing.available_many
            self.world.on_payment = self._resident_payment
            meters = self.world.prepaid
            opened: set[str] = set()
            for account, credit in zip(meters.accounts, meters.credit_fen.tolist(), strict=True):
                if account and account not in opened and int(credit) > 0:  # opening balances, once
                    self.ledger.top_up(f"opening:{account}", account, int(credit), at=float(self.world.start_utc))
                    opened.add(account)
        elif residents is not None and self.world.prepaid is not None:  # meter billing: residents pay us, we push
            meters = self.world.prepaid
            meters.remote = True
            self.world.on_payment = self._resident_payment
            rows = [(t, a, int(p)) for t, a, p, on in zip(meters.ids, meters.accounts, meters.purchased_fen.tolist(),
                                                          meters.active.tolist(), strict=True) if on and a]
            self.meter_billing = MeterBilling(self.store, self.billing, rows)
            for meter, account, opening in rows:  # the credit already on the meter, as the ledger's opening
                if opening > 0:
                    self.ledger.top_up(f"opening:{meter}", account, opening, at=float(self.world.start_utc))

    def _on_interval(self, start_utc: int, reported: np.ndarray) -> None:
        if self.modbus is not None:
            return  # the world is the hardware: intervals come from what the collector reads
        self._bill_interval(start_utc, reported)

    def _bill_interval(self, start_utc: int, reported: np.ndarray) -> None:
        if self.influx is not None:  # every closed interval, replays skipped by the sink
            self.influx.add_interval(start_utc, reported)
        if start_utc + self.world.interval_s > self.posted_until:  # replayed intervals were posted already
            self.billing.on_interval(start_utc, reported)
            self.month_close.on_interval(start_utc, reported)

    def _resident_payment(self, account: str, fen: int, payment_id: str) -> None:
        result = self.ledger.top_up(payment_id, account, fen, at=self.now())
        if not result.replay:
            self.push_credit(account, fen, by=f"resident {account}")

    def push_credit(self, account: str, fen: int, by: str) -> Command | None:
        """Meter billing: after a top-up, push the credit to the account's meter (a no-op
        in platform billing). Call under the platform lock, or from the tick thread."""
        if self.meter_billing is None:
            return None
        push = self.meter_billing.paid(account, fen)
        if push is None:
            return None
        twin, total = push
        return self.commands.create(twin, "credit_push", by=by, source="platform", now=self.now(), value=total)

    def _reconcile_meters(self, now: float) -> None:
        """Meter billing: push what did not arrive, and compare each meter's credit with
        the platform's figure; past the tolerance, a `meter_balance_mismatch` alarm."""
        mb = self.meter_billing
        assert mb is not None
        pushing = {c.twin for c in self.commands.open.values() if c.action == "credit_push"}
        for twin, total in mb.unpushed(self.state):
            if twin not in pushing:
                self.commands.create(twin, "credit_push", by="platform: resend", source="platform", now=now,
                                     value=total)
        for m in mb.reconcile(self.state, fresh_after=now - 2 * self.world.interval_s):
            if m.twin in pushing:
                continue  # credit on its way: the figures cannot agree yet
            if m.over:
                alarm, new = self.alarms.raise_("meter_balance_mismatch", twin=m.twin, account=m.account, at=now,
                                                severity=Severity.MAJOR, evidence=m.evidence())
                if new:
                    self.alarm_changed(alarm, "raised")
            else:
                cleared = self.alarms.clear_subject("meter_balance_mismatch", twin=m.twin, at=now)
                if cleared is not None:
                    self.alarm_changed(cleared, "cleared")

    def _billing_tick(self, now: float) -> None:
        """Post what accrued; remember up to where, so a replay never bills it again."""
        self.billing.post(now)
        if self.meter_billing is not None:
            self.meter_billing.posted()
        self.closed_months += self.month_close.tick(self.billing.accrued_until, now)
        # up to the end of the last interval billed: an interval ending right now may not have closed yet
        self.posted_until = max(self.posted_until, float(self.billing.accrued_until))
        self.store.set_meta("billing_posted_until", str(self.posted_until))

    def _run_policies(self, now: float) -> None:
        """Low-balance alarms, cut-off and restore commands, access flags."""
        changed = False
        balances = self.billing.available_many(list(self.billing.accounts))
        for account, available in zip(self.billing.accounts, balances.tolist(), strict=True):
            decision = self.policy.decide(account, int(available), now)
            if decision.level_changed:
                changed = True
                for level in (1, 2, 3):
                    if level != decision.level:
                        cleared = self.alarms.clear_subject(f"low_balance_{level}", account=account, at=now)
                        if cleared is not None:
                            self.alarm_changed(cleared, "cleared")
                if decision.level:
                    alarm, new = self.alarms.raise_(f"low_balance_{decision.level}", account=account, at=now,
                                                    severity=Severity(min(decision.level + 1, 4)),
                                                    evidence={"available_fen": int(available)})
                    self.alarm_changed(alarm, "raised" if new else "repeated")
            if decision.cut or decision.restore:
                changed = True
                for twin in self.account_twins.get(account, []):
                    kind = self.twin_specs[twin].kind
                    action = ("relay_open" if decision.cut else "relay_close") if kind is Kind.ELECTRIC_METER else (
                        "valve_close" if decision.cut else "valve_open")
                    self.commands.create(twin, action, by="policy:prepaid", source="policy", now=now)
        if changed:
            self.store.set_meta("policy_states", json.dumps({
                a: {"level": s.level, "cut": s.cut, "access": s.access} for a, s in self.policy.states.items()}))

    def _on_day(self, day: DayResult) -> None:
        self.history.append(day.first_utc, day.reported)

    def _collected(self, now: float) -> None:
        """Modbus mode: store and bill the intervals the collector closed; alarms for units
        that went offline or came back, and for values it refused."""
        assert self.modbus is not None
        closed, events = self.modbus.drain(now)
        for start, row in closed:
            self.history.append(start, row[None, :].astype(np.float32))
            self._bill_interval(start, row)
        for event in events:
            if event.kind == "online":
                cleared = self.alarms.clear_subject("offline", twin=event.twin, at=event.at)
                if cleared is not None:
                    self.alarm_changed(cleared, "cleared")
                continue
            alarm, new = self.alarms.raise_(event.kind, twin=event.twin, at=event.at,
                                            severity=Severity.WARNING, evidence=event.evidence)
            self.alarm_changed(alarm, "raised" if new else "repeated")

    def _command_problem(self, command: Command) -> None:
        alarm, new = self.alarms.raise_(
            "command_failed" if command.state.value == "failed" else "command_expired",
            twin=command.twin, severity=Severity.MAJOR, at=self.now(),
            evidence={"command": command.id, "action": command.action, "reason": command.reason,
                      "requested_by": command.requested_by})
        self.alarm_changed(alarm, "raised" if new else "repeated")
        log.warning("command %s %s on %s: %s", command.id, command.state.value, command.twin, command.reason)

    def _check_offline(self, now: float) -> None:
        """Meters silent for two intervals raise an `offline` alarm; it clears when they
        report again. Over Modbus a meter is silent only when the collector asked it since
        then: while no poll cycle has begun and completed within the two intervals (the
        platform stalled, or is starting), the stale stamps are the collector's, and wait."""
        limit = now - 2 * self.world.interval_s
        if self.modbus is not None and not self.modbus.polled_since(limit):
            log.info("offline check skipped: no poll cycle completed since %d s ago", now - limit)
            return
        for kind in (Kind.ELECTRIC_METER, Kind.WATER_METER):
            table = self.state.tables[kind]
            stamps, online = table.stamps["reported"], table.faces["reported"]["online"]
            for row, twin_id in enumerate(table.ids):
                if stamps[row] and stamps[row] < limit:
                    alarm, new = self.alarms.raise_("offline", twin=twin_id, at=now, severity=Severity.WARNING,
                                                    evidence={"last_report_utc": int(stamps[row])})
                    if new:
                        self.alarm_changed(alarm, "raised")
                elif stamps[row] and online[row]:  # a link that lost the twin just now keeps its alarm
                    cleared = self.alarms.clear_subject("offline", twin=twin_id, at=now)
                    if cleared is not None:
                        self.alarm_changed(cleared, "cleared")

    def alarm_changed(self, alarm: Alarm, event: str) -> None:
        """Store an alarm and notify its transition (a repeat is stored, not sent)."""
        self.store.save_alarm(alarm)
        if event != "repeated":
            self.notifier.publish({"event": event, "site": self.scenario.site.id, "id": alarm.id, "kind": alarm.kind,
                                   "twin": alarm.twin, "account": alarm.account,
                                   "severity": alarm.severity.name.lower(), "start": alarm.start,
                                   "at": self.now(), "state": alarm.state.value, "evidence": alarm.evidence})

    # -- running ------------------------------------------------------------------------

    async def tick(self) -> None:
        """Move the world to the clock, follow up commands, run the tasks that are due:
        all in a worker thread, under the lock, so the loop only ever serves requests."""
        async with self.lock:
            await asyncio.to_thread(self._tick, self.clock.sim_s())

    def _tick(self, target: float) -> None:
        self.source.advance_to(target)
        now = self.now()
        if self.opcua_sync is not None:  # before the drain: twins whose values stand count for this interval
            for twin, field_name, value, reason in self.opcua_sync.tick(now):
                self.commands.not_confirmed(twin, field_name, value, reason, now)
        if self.modbus is not None:
            self._collected(now)
        self.commands.check(now)
        self.batch.run_due(now)
        for task in self.tasks:
            if now >= task.next_due:
                try:
                    task.run(now)
                    task.last_error = None
                except Exception as err:  # a failing task is logged and retried next period
                    task.last_error = f"{type(err).__name__}: {err}"
                    log.exception("periodic task %s failed", task.name)
                task.runs += 1
                task.next_due = now + task.every_s

    def save(self) -> None:
        """Store the simulated time reached (the world's snapshot) and flush the history."""
        self.store.set_meta("world", json.dumps({"scenario": Path(self.scenario_path).name, "seed": self.seed,
                                                 "start": self.world.start.isoformat(), "sim_s": self.world.now_s}))
        self.history.flush()

    async def run_loop(self) -> None:
        """Tick until asked to stop, saving every few seconds."""
        last_save = time.monotonic()
        while not self.stopping:
            started = time.monotonic()
            await self.tick()
            if time.monotonic() - last_save >= SAVE_S:
                async with self.lock:
                    await asyncio.to_thread(self.save)
                last_save = time.monotonic()
            await asyncio.sleep(max(0.0, TICK_S - (time.monotonic() - started)))

    async def serve(self, host: str = "127.0.0.1", port: int = 8050, opcua_port: int | None = None,
                    opcua_anonymous: bool = False) -> None:
        """Run the platform and its HTTP server (and the OPC UA server when `opcua_port` is
        given; 0 picks a free port) until SIGINT or SIGTERM, then save and close cleanly."""
        import uvicorn

        from control.api.app import create_app

        def stop(signum: int, frame: object) -> None:  # uvicorn re-raises the signal after its shutdown
            self.stopping = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stop)
        from dashboard.app import mount_dashboard

        app = create_app(self)
        mount_dashboard(app, self)  # after the API's routes, which win
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        self.notifier.start()
        self.topups = TopUpBatcher(self.ledger, self.now)
        self.topups.start()
        if self.modbus is not None:
            await self.modbus.start()
            for line in self.modbus.describe():
                log.info("polling %s", line)
        if self.opcua_sync is not None:
            await self.opcua_sync.start()
            for url, link in self.opcua_sync.links.items():
                log.info("syncing %s (%d twins, OPC UA subscriptions)", url, len(link.sources))
        opcua = None
        if opcua_port is not None:
            from control.opcua_link import start_opcua

            opcua = await start_opcua(self, opcua_port, opcua_anonymous, host)
        loop_task = asyncio.create_task(self.run_loop())
        # the world, scenario and tables are long-lived: keep them out of every collection, or a
        # full collection pauses the loop for tens of ms under load (p99 of top-ups 86 -> 33 ms)
        gc.collect()
        gc.freeze()
        try:
            await server.serve()  # returns once SIGINT or SIGTERM arrived and requests drained
        finally:
            self.stopping = True
            await loop_task
            if opcua is not None:
                await opcua.stop()
            if self.opcua_sync is not None:
                await self.opcua_sync.stop()
            if self.modbus is not None:
                await self.modbus.stop()
            await self.topups.stop()
            await self.notifier.stop()
            self.save()
            self.close()

    def close(self) -> None:
        """Close files and the databases."""
        if self.influx is not None:
            self.influx.close()
        self.history.close()
        self.ledger.close()
        self.auth.store.close()
        self.store.close()

    def health(self) -> dict[str, object]:
        """What /api/health and the health page show."""
        world = self.world
        return {
            "site": self.scenario.site.id, "name": self.scenario.site.name, "scenario": Path(self.scenario_path).name,
            "sim_time": datetime.fromtimestamp(self.now(), tz=world.tz).isoformat(),
            "speed": self.speed, "twins": len(world.state), "open_alarms": len(self.alarms.open_alarms()),
            "open_commands": len(self.commands.open), "uptime_s": round(time.time() - self.started_wall, 1),
            "replay_s": round(self.replay_seconds, 2), "webhooks": self.notifier.status(),
            "months_closed": self.month_close.closed or None,
            "modbus": self.modbus.status() if self.modbus is not None else None,
            "opcua_sources": self.opcua_sync.summary() if self.opcua_sync is not None else None,
            "influx": self.influx.status() if self.influx is not None else None,
            "detectors": self.detectors.status(),
            "analytics": self.analytics.status(),
            "tasks": [{"name": t.name, "every_s": t.every_s, "runs": t.runs, "last_error": t.last_error}
                      for t in self.tasks],
        }
