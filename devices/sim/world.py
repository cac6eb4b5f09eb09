"""The simulated world: a site's meters, valves, elevators and shared circuits, advanced
faster than real time.

SimPy drives what happens one at a time (an injection starting or ending, a relay or
valve command, the end of an interval or a day); everything frequent and per household
(appliances, water draws, elevator trips) happens inside the Numba kernels of
`devices.sim.kernels`, which advance the whole fleet between two such events. The world
keeps the truth (what flowed) and what the meters report, and hands both over a day at
a time as a `DayResult`; it also feeds the twins' reported state.

Time: SimPy's clock counts seconds since the run's start; the fleet moves in steps of
`step_s` seconds; readings close every `interval_s`; a run-day is 86,400 s from the start
(the start is a local midnight by default, so run-days are local days in zones without
daylight saving).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import simpy
from numba import njit, prange

from devices.sim import kernels, profiles
from devices.sim.injections import (
    PHYSICAL,
    WHOLE_DAY_REPORTS,
    WHOLE_DAYS,
    Resolved,
    apply_reporting,
    check_target,
    draw_params,
    resolve,
    window_times,
)
from devices.sim.prepaid import PrepaidMeters, meter_price_fen, resident_process
from devices.sim.rng import DAILY, INJECT, NOISE, SIZE, WATER, key_for, normal, twin_keys, uniform
from scenarios.schema import ProfileClass, Scenario
from twin.model import Kind, TwinSpec
from twin.state import FleetState

DEFAULT_START = datetime(2026, 1, 1)
VACANT = ProfileClass("vacant", monthly_kwh=4.0, water_m3_month=0.0, spread=0.3, daily_cv=0.1,
                      away_prob=0.0)
#: The register each metered kind reports, in the twins' state.
REGISTERS = {Kind.ELECTRIC_METER: "energy_kwh", Kind.WATER_METER: "volume_m3",
             Kind.ELEVATOR: "energy_kwh", Kind.SHARED_CIRCUIT: "energy_kwh"}
#: Share of its usual electricity a household uses on a day away (fridge, standby).
AWAY_ELECTRIC = 0.15


@dataclass
class DayResult:
    """One run-day of readings for the whole fleet, truth beside what was reported."""

    day: int  #: run-day index, 0 first
    first_utc: int  #: UTC epoch seconds of the first interval's start
    true: np.ndarray  #: float64 [intervals, columns] what flowed (masters: what they measured)
    reported: np.ndarray  #: float32 [intervals, columns] what the meters reported, NaN missing
    loss: np.ndarray  #: float64 [masters, intervals] technical loss inside each master's reading
    interval_minute: np.ndarray  #: int64 [intervals] local minute of day of each start
    interval_weekend: np.ndarray  #: int64 [intervals] 1 on Saturday and Sunday
    interval_month: np.ndarray  #: int64 [intervals] local month 0..11


@dataclass
class Event:
    """Something that happened in the world, for the events log."""

    utc: int  #: UTC epoch seconds
    twin: str  #: twin id
    event: str  #: what happened: "relay", "valve", "inject_start", "inject_end"
    value: str  #: new state or injection kind
    source: str  #: who caused it


@njit(cache=True, nogil=True, parallel=True)
def _daily_factors(keys: np.ndarray, day: int, cv: np.ndarray, away: np.ndarray,
                   away_factor: float, out: np.ndarray, is_away: np.ndarray) -> None:
    """Lognormal day factor (mean 1, coefficient of variation cv) times the away factor
    on days a household is away. Counter = day, so each day is drawn independently."""
    for m in prange(keys.size):
        sigma = np.sqrt(np.log(1.0 + cv[m] * cv[m]))
        z = normal(keys[m], np.uint64(day))
        f = np.exp(sigma * z - 0.5 * sigma * sigma)
        is_away[m] = 0
        if uniform(keys[m], np.uint64(1_000_000 + day)) < away[m]:
            f *= away_factor
            is_away[m] = 1
        out[m] = f


def _lognormal_sizes(keys: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """Per-twin size factors, lognormal with mean 1 and the class's spread."""
    z = np.array([normal(k, np.uint64(7)) for k in keys]) if keys.size else np.zeros(0)
    return np.exp(spread * z - 0.5 * spread * spread)


def parse_windows(schedule: str) -> list[tuple[int, int]]:
    """'18:00-06:00,12:00-13:00' or 'always' -> [(start_minute, end_minute)] within a day,
    wrapping windows split in two."""
    text = schedule.strip().lower()
    if text in ("always", "00:00-24:00", ""):
        return [(0, 1440)]
    out: list[tuple[int, int]] = []
    for part in text.split(","):
        a, b = (p.strip() for p in part.split("-"))
        s = int(a[:2]) * 60 + int(a[3:5])
        e = int(b[:2]) * 60 + int(b[3:5])
        out += [(s, e)] if s < e else [(s, 1440), (0, e)]
    return out


class World:
    """A site's simulated fleet. Example::

        world = World(scenario, seed=1, days=7)
        world.run(on_day=lambda day: print(day.day, np.nansum(day.reported)))
    """

    def __init__(self, scenario: Scenario, *, seed: int = 0, start: datetime | None = None,
                 days: float = 1.0, step_s: int = 60, live: bool = False) -> None:
        self.scenario = scenario
        self.site = scenario.site
        self.seed = seed
        self.interval_s = scenario.interval_s
        if self.interval_s % step_s or 86400 % step_s:
            raise ValueError(f"step {step_s}s must divide the interval ({self.interval_s}s) and a day")
        self.step_s = step_s
        self.dt_h = step_s / 3600.0
        self.spi = self.interval_s // step_s  # steps per interval
        self.spd = 86400 // step_s  # steps per run-day
        self.ipd = 86400 // self.interval_s  # intervals per run-day
        self.start = start or scenario.start or DEFAULT_START
        self.tz = ZoneInfo(self.site.timezone)
        self.start_utc = int(self.start.replace(tzinfo=self.tz).timestamp())
        if self.start_utc % self.interval_s:
            raise ValueError(f"start {self.start} is not on a {self.interval_s}s interval boundary")
        self.run_steps = int(round(days * self.spd / self.spi)) * self.spi
        if self.run_steps <= 0:
            raise ValueError("a run needs at least one interval: raise --days")
        self.days = self.run_steps / self.spd
        self.state = FleetState.from_site(self.site)
        grid = self.state.tables[Kind.ELECTRIC_METER].faces["reported"]  # the grid's figures from the start:
        grid["voltage_v"][:], grid["frequency_hz"][:], grid["power_factor"][:] = 220.0, 50.0, 0.95  # a meter
        grid["current_a"][:] = 0.0  # polled before the first step reads them, not NaN
        #: live: twins are fed every interval (power every step), and the fleet moves one step
        #: at a time so a command acts from the next step; headless: a day at a time, fast
        self.live = live
        self.feed_every_interval = live
        self.events: list[Event] = []
        self.kernel_seconds = 0.0
        self.step = 0
        self._pending: list[tuple[float, Callable[[], None]]] = []
        self._build()
        self.injections = resolve(
            scenario.injections, scenario.random_injections, self.site.twins, self.column_of,
            self.group_row, self.start, self.days, step_s, self.interval_s, seed,
        )
        #: live hooks: each closed interval (UTC start, reported row) goes to `on_interval`;
        #: in platform billing, `balance_of(accounts)` gives available balances (fen) and
        #: `on_payment(account, fen, payment_id)` receives the residents' top-ups
        self.on_interval: Callable[[int, np.ndarray], None] | None = None
        self.balance_of: Callable[[list[str | None]], np.ndarray] | None = None
        self.on_payment: Callable[[str, int, str], None] | None = None
        self.prepaid: PrepaidMeters | None = None
        if scenario.residents is not None:
            e = self.groups["e"]
            prices = np.array([meter_price_fen(scenario.tariffs.get(t.tariff or "")) for t in e])
            self.prepaid = PrepaidMeters(scenario.residents, [t.id for t in e], [t.account for t in e],
                                         np.array([t.prepaid for t in e], dtype=bool), prices, seed)

    # -- set-up -------------------------------------------------------------------------

    def _build(self) -> None:
        twins = self.site.twins
        self.columns: list[TwinSpec] = [t for t in twins if t.metered]
        self.column_of = {t.id: i for i, t in enumerate(self.columns)}
        pick = {
            "e": [t for t in self.columns if t.kind is Kind.ELECTRIC_METER and t.role == "sub"],
            "w": [t for t in self.columns if t.kind is Kind.WATER_METER and t.role == "sub"],
            "l": [t for t in self.columns if t.kind is Kind.ELEVATOR],
            "s": [t for t in self.columns if t.kind is Kind.SHARED_CIRCUIT],
            "m": [t for t in self.columns if t.role == "master"],
        }
        self.groups = pick
        self.group_row = {t.id: i for members in pick.values() for i, t in enumerate(members)}
        self.cols = {g: np.array([self.column_of[t.id] for t in m], dtype=np.int64) for g, m in pick.items()}
        self._build_classes()
        e, w, lifts, shared = pick["e"], pick["w"], pick["l"], pick["s"]
        ids = {g: [t.id for t in m] for g, m in pick.items()}
        # electricity
        self.keys_e = twin_keys(ids["e"], self.seed, NOISE)
        self.daily_keys_e = twin_keys(ids["e"], self.seed, DAILY)
        self.cls_e = np.array([self.class_of[t.profile or "household"] for t in e], dtype=np.int64)
        spread = self.class_param("spread")
        base_kw = self.class_param("monthly_kwh") / 720.0
        sizes_e = _lognormal_sizes(twin_keys(ids["e"], self.seed, SIZE), spread[self.cls_e])
        self.size_e = base_kw[self.cls_e] * sizes_e
        self.cv_e = self.class_param("daily_cv")[self.cls_e]
        self.away_e = self.class_param("away_prob")[self.cls_e]
        self.on_e = np.ones(len(e), dtype=np.int8)
        self.acc_e = np.zeros(len(e))
        self.power_e = np.zeros(len(e))
        self.mean_kw_e = np.zeros(len(e))
        self.factor_e = np.zeros(len(e))
        self.away_today_e = np.zeros(len(e), dtype=np.int8)
        # water: the day factor is the household's own (same room, same day)
        room_e = {t.room: i for i, t in enumerate(e)}
        self.keys_w = twin_keys(ids["w"], self.seed, WATER)
        self.cls_w = np.array([self.class_of[t.profile or "household"] for t in w], dtype=np.int64)
        self.e_of_w = np.array([room_e.get(t.room, -1) for t in w], dtype=np.int64)
        draw_m3 = profiles.LITRES_PER_DRAW_MINUTE / 1000.0
        self.draw_m3 = draw_m3 * self.step_s / 60.0
        sizes_w = _lognormal_sizes(twin_keys(ids["w"], self.seed, SIZE), spread[self.cls_w])
        self.base_draws_w = (self.class_param("water_m3_month")[self.cls_w] / 30.0 / self.draw_m3
                             / self.spd) * sizes_w
        self.draws_w = np.zeros(len(w))
        self.valve_open = np.ones(len(w), dtype=np.int8)  # the valve's actual state
        self.stuck_w = np.zeros(len(w), dtype=np.int8)  # valve that does not close
        self.flowing_w = np.ones(len(w), dtype=np.int8)
        self.leak_w = np.zeros(len(w))
        self.acc_w = np.zeros(len(w))
        valves = {t.valve_of: t.id for t in self.site.twins if t.kind is Kind.VALVE}
        self.valve_id = [valves.get(t.id) for t in w]
        self.w_of_valve = {v: i for i, v in enumerate(self.valve_id) if v}
        # elevators
        param = self._params
        self.keys_l = twin_keys(ids["l"], self.seed, NOISE)
        self.trip_kwh0 = param(lifts, "trip_kwh", 0.06)
        self.trip_kwh = self.trip_kwh0.copy()
        self.standby_l = param(lifts, "standby_w", 250.0) / 1000.0
        self.trips_day_l = param(lifts, "trips_per_day", 300.0)
        self.trips_step_l = np.zeros(len(lifts))
        self.acc_l = np.zeros(len(lifts))
        self.trips_l = np.zeros(len(lifts), dtype=np.int64)
        # shared circuits
        self.keys_s = twin_keys(ids["s"], self.seed, NOISE)
        self.power_s = param(shared, "power_kw", 1.0)
        self.duty_s = param(shared, "duty", 1.0)
        self.windows_s = [parse_windows(str(t.params.get("schedule", "always"))) for t in shared]
        self.always_s = np.zeros(len(shared), dtype=np.int8)
        self.acc_s = np.zeros(len(shared))
        self.on_s = np.zeros(len(shared), dtype=np.int8)
        # masters: each reads the truth of everything it feeds, plus its losses
        feeders: dict[str, list[int]] = {t.id: [] for t in pick["m"]}
        for t in self.columns:
            if t.master in feeders:
                feeders[t.master].append(self.column_of[t.id])
        self.feeders = [np.array(feeders[t.id], dtype=np.int64) for t in pick["m"]]
        self.fed_cols = np.concatenate([f for f in self.feeders] or [np.zeros(0, dtype=np.int64)])
        self.fed_master = np.concatenate([np.full(f.size, j, dtype=np.int64) for j, f in enumerate(self.feeders)]
                                         or [np.zeros(0, dtype=np.int64)])
        self.loss_pct = param(pick["m"], "loss_pct", 0.0) / 100.0
        fixed_kw = param(pick["m"], "fixed_loss_w", 0.0) / 1000.0
        electric_master = np.array([t.utility == "electric" for t in pick["m"]])
        self.fixed_loss = np.where(electric_master, fixed_kw * self.interval_s / 3600.0, 0.0)

    def _build_classes(self) -> None:
        classes = dict(self.scenario.profiles)
        classes.setdefault("household", ProfileClass("household"))
        classes["vacant"] = VACANT
        self.classes = list(classes.values())
        self.class_of = {c.name: i for i, c in enumerate(self.classes)}
        for t in self.columns:
            if t.kind in (Kind.ELECTRIC_METER, Kind.WATER_METER) and t.role == "sub":
                if (t.profile or "household") not in self.class_of:
                    raise ValueError(f"twin {t.id}: unknown profile class {t.profile!r}")
        self.seasonal = np.array([c.seasonal for c in self.classes], dtype=np.float64)
        self.class_shapes = [c.shape for c in self.classes]

    def class_param(self, name: str) -> np.ndarray:
        """One figure of every profile class, by class index."""
        return np.array([getattr(c, name) for c in self.classes], dtype=np.float64)

    @staticmethod
    def _params(twins: list[TwinSpec], name: str, default: float) -> np.ndarray:
        return np.array([float(t.params.get(name, default)) for t in twins], dtype=np.float64)

    # -- commands -----------------------------------------------------------------------

    def now_utc(self) -> int:
        """The world's clock as UTC epoch seconds."""
        return self.start_utc + int(self.env.now) if hasattr(self, "env") else self.start_utc

    def write(self, twin_id: str, field: str, value: int, source: str) -> None:
        """Write a control point, as a command does: `relay_closed` of an electric meter or
        `open` of a valve. A meter that is offline (comms lost) never gets the write."""
        if field == "relay_closed":
            self.set_relay(twin_id, bool(value), source)
        elif field == "open":
            self.set_valve(twin_id, bool(value), source)
        elif field == "purchased_fen":
            self.push_credit(twin_id, int(value), source)
        elif field.startswith("inject:"):
            self.inject(twin_id, field[len("inject:"):], float(value), source)
        else:
            raise KeyError(f"{field!r} is not a control point of the simulated world")

    def _unreachable(self, twin_id: str) -> bool:
        kind, row = self.state.locate(twin_id)
        return not self.state.tables[kind].faces["reported"]["online"][row]

    def set_relay(self, twin_id: str, closed: bool, source: str = "operator") -> None:
        """Close or open the relay of an electric meter: an open relay stops its load."""
        if twin_id not in self.group_row or self.site_kind(twin_id) is not Kind.ELECTRIC_METER:
            raise KeyError(f"{twin_id!r} is not an electric sub-meter of this site")
        if self._unreachable(twin_id):
            self.events.append(Event(self.now_utc(), twin_id, "relay", "unreachable", source))
            return
        row = self.group_row[twin_id]
        self.on_e[row] = 1 if closed else 0
        kind, srow = self.state.locate(twin_id)
        self.state.report(kind, np.array([srow]), self.now_utc(), relay_closed=int(closed))
        self.events.append(Event(self.now_utc(), twin_id, "relay", "closed" if closed else "open", source))

    def push_credit(self, twin_id: str, total_fen: int, source: str = "platform") -> None:
        """A remote top-up of a prepaid meter in meter billing: write the new purchase total;
        the meter credits the difference and closes its relay if that brings it back."""
        meters = self.prepaid
        if meters is None or twin_id not in meters.row_of or not meters.active[meters.row_of[twin_id]]:
            raise KeyError(f"{twin_id!r} is not a prepaid electric meter of this site")
        if self._unreachable(twin_id):
            self.events.append(Event(self.now_utc(), twin_id, "credit", "unreachable", source))
            return
        row = meters.row_of[twin_id]
        credited = meters.push(row, total_fen)
        kind, srow = self.state.locate(twin_id)
        self.state.report(kind, np.array([srow]), self.now_utc(), purchased_fen=int(meters.purchased_fen[row]),
                          credit_fen=int(np.floor(meters.credit_fen[row])))
        self.events.append(Event(self.now_utc(), twin_id, "credit", f"+{credited}", source))
        if meters.cut[row] and meters.credit_fen[row] > 0:
            meters.cut[row] = False
            self.set_relay(twin_id, True, source="meter: credit restored")

    def set_valve(self, valve_id: str, open_: bool, source: str = "operator") -> None:
        """Open or close a valve: a closed valve stops its meter's flow, unless stuck."""
        if valve_id not in self.w_of_valve:
            raise KeyError(f"{valve_id!r} is not a valve of this site")
        row = self.w_of_valve[valve_id]
        self.valve_open[row] = 1 if open_ else 0
        self.flowing_w[row] = 1 if (open_ or self.stuck_w[row]) else 0
        kind, srow = self.state.locate(valve_id)
        self.state.report(kind, np.array([srow]), self.now_utc(), open=int(open_))
        self.events.append(Event(self.now_utc(), valve_id, "valve", "open" if open_ else "closed", source))

    def inject(self, twin_id: str, kind: str, duration_s: float, source: str = "operator") -> Resolved:
        """Start a fault or theft on a twin now, for `duration_s` simulated seconds, with its
        default parameters (random ones drawn from the seed, the twin and how many live
        injections came before, so a replay draws the same). The window starts at the
        current interval's start (a whole-day theft at the current day's) and ends on an
        interval boundary. As a control point: ``write(twin, "inject:leak", 86400, who)``.
        ValueError when the kind does not apply to the twin."""
        spec = next((t for t in self.site.twins if t.id == twin_id), None)
        if spec is None:
            raise ValueError(f"no twin {twin_id!r} in this site")
        check_target(kind, spec)
        if not duration_s > 0:
            raise ValueError(f"{kind} on {twin_id}: the duration must be above 0 seconds, not {duration_s}")
        step = int(self.now_s // self.step_s)
        unit = self.spd if kind in WHOLE_DAYS else self.spi
        start = (step // unit) * unit
        end = max(-(-(step + int(duration_s // self.step_s)) // self.spi) * self.spi, start + self.spi)
        live = sum(1 for inj in self.injections if inj.extra.get("live"))
        key = key_for(f"{twin_id}/{kind}/live{live}", self.seed, INJECT)
        inj = Resolved(twin_id, kind, self.column_of[twin_id], self.group_row[twin_id], start, end,
                       draw_params(kind, {}, key), key, extra={"live": 1.0})
        self.injections.append(inj)
        self.env.process(self._injection(inj, source))
        return inj

    def site_kind(self, twin_id: str) -> Kind:
        """The kind of a twin of this site."""
        return self.state.locate(twin_id)[0]

    def at(self, when: datetime | timedelta, action: Callable[[], None]) -> None:
        """Run `action` at a simulated time (local datetime, or offset from the start).
        Call before or during `run`; actions at one instant run in the order given."""
        offset = when - self.start if isinstance(when, datetime) else when
        delay = offset.total_seconds() - (self.env.now if hasattr(self, "env") else 0)
        self._pending.append((max(delay, 0.0), action))

    # -- running ------------------------------------------------------------------------

    def run(self, on_day: Callable[[DayResult], None]) -> None:
        """Run the whole simulation, handing each finished run-day to `on_day`."""
        self.begin(on_day)
        self.advance_to(self.end_s + 0.5)

    def begin(self, on_day: Callable[[DayResult], None]) -> None:
        """Set the world going at its start; `advance_to` then moves it (live use)."""
        self.env = simpy.Environment()
        self.on_day = on_day
        for delay, action in self._pending:
            self.env.process(self._later(delay, action))
        self._pending = []
        for inj in self.injections:
            self.env.process(self._injection(inj))
        self.env.process(self._stepper())

    @property
    def end_s(self) -> float:
        """Seconds from the start to the end of the run."""
        return float(self.run_steps * self.step_s)

    @property
    def now_s(self) -> float:
        """Seconds of simulated time since the start."""
        return float(self.env.now) if hasattr(self, "env") else 0.0

    def advance_to(self, t_s: float) -> None:
        """Move simulated time to `t_s` seconds after the start (at most the run's end).
        Half a second past the end is run too, so what happens at the last instant runs."""
        until = min(t_s, self.end_s + 0.5)
        if until > self.env.now:
            self.env.run(until=until)

    def _later(self, delay: float, action: Callable[[], None]):  # type: ignore[no-untyped-def]
        yield self.env.timeout(delay)
        action()

    def _stepper(self):  # type: ignore[no-untyped-def]
        """Advance the fleet from event to event, closing intervals and days on the way."""
        env = self.env
        while self.step < self.run_steps:
            if self.step % self.spd == 0:
                self._begin_day(self.step // self.spd)
            while env.peek() <= env.now:  # events of this instant act before the fleet moves
                yield env.timeout(0)
            next_interval = (self.step // self.spi + 1) * self.spi
            next_event = int(-(-env.peek() // self.step_s)) if env.peek() < float("inf") else next_interval
            stop = min(next_interval, max(next_event, self.step + 1), self.run_steps)
            if self.live:
                stop = self.step + 1
            self._advance(self.step, stop)
            if self.live:
                self._feed_power()
            yield env.timeout((stop - self.step) * self.step_s)
            self.step = stop
            if stop % self.spi == 0:
                self._close_interval()
            if stop % self.spd == 0 or stop == self.run_steps:
                self._close_day()

    def _injection(self, inj: Resolved, source: str = "scenario"):  # type: ignore[no-untyped-def]
        """Start and end one injection at its window's edges (a live one starts now)."""
        yield self.env.timeout(max(0.0, inj.start_step * self.step_s - self.env.now))
        self._apply_physical(inj, True)
        self.events.append(Event(self.now_utc(), inj.twin, "inject_start", inj.kind, source))
        if inj.end_step < self.run_steps:
            yield self.env.timeout(max(0.0, inj.end_step * self.step_s - self.env.now))
            self._apply_physical(inj, False)
            self.events.append(Event(self.now_utc(), inj.twin, "inject_end", inj.kind, source))

    def _apply_physical(self, inj: Resolved, begin: bool) -> None:
        sign = 1.0 if begin else -1.0
        if inj.kind == "leak":
            self.leak_w[inj.row] += sign * inj.params["flow_lph"] / 1000.0 * self.dt_h
        elif inj.kind == "valve_stuck_open":
            self.stuck_w[inj.row] = 1 if begin else 0
            valve = self.valve_id[inj.row]
            if valve:  # the fault shows when someone closes the valve: the world does
                self.set_valve(valve, not begin, source="scenario")
            else:
                self.flowing_w[inj.row] = 1
        elif inj.kind == "off_schedule":
            self.always_s[inj.row] = 1 if begin else 0
        elif inj.kind == "offline":
            kind, row = self.state.locate(inj.twin)
            self.state.tables[kind].faces["reported"]["online"][row] = 0 if begin else 1

    def _begin_day(self, day: int) -> None:
        self.day = day
        self.day_first_step = day * self.spd
        local = self.start + timedelta(days=day)
        minute, weekend, month = profiles.step_calendar(local, self.spd, self.step_s)
        self.shape_e = profiles.electric_shapes(self.class_shapes, self.seasonal, minute, weekend, month)
        self.shape_w = profiles.water_shapes(self.class_shapes, minute, weekend)
        self.shape_l = profiles.elevator_shape(minute, weekend)
        first = slice(None, None, self.spi)
        self.interval_minute = minute[first]
        self.interval_weekend = weekend[first]
        self.interval_month = month[first]
        n_s = len(self.windows_s)
        self.scheduled_s = np.zeros((n_s, self.spd), dtype=np.int8)
        for i, windows in enumerate(self.windows_s):
            for s, e in windows:
                self.scheduled_s[i] |= ((minute >= s) & (minute < e)).astype(np.int8)
        _daily_factors(self.daily_keys_e, day, self.cv_e, self.away_e, AWAY_ELECTRIC,
                       self.factor_e, self.away_today_e)
        self.mean_kw_e = self.size_e * self.factor_e
        # a household's water follows its electricity's day factor; away, no water at all
        e_row = np.maximum(self.e_of_w, 0)
        present = np.where(self.e_of_w >= 0, self.away_today_e[e_row] == 0, True)
        household = np.where(self.e_of_w >= 0, self.factor_e[e_row], 1.0)
        self.draws_w = self.base_draws_w * np.where(present, household, 0.0)
        self.trips_step_l = self.trips_day_l / self.spd
        self.trip_kwh = self.trip_kwh0.copy()
        for inj in self.injections:
            if inj.kind == "elevator_drift" and inj.start_step <= self.day_first_step < inj.end_step:
                days_in = (self.day_first_step - inj.start_step) / self.spd + 1.0
                self.trip_kwh[inj.row] *= 1.0 + inj.params["growth_per_day"] * days_in
        self.true_day = np.zeros((self.ipd, len(self.columns)))
        self.reported_day = np.full((self.ipd, len(self.columns)), np.nan, dtype=np.float32)
        self.loss_day = np.zeros((len(self.feeders), self.ipd))
        self.interval_in_day = 0

    def _advance(self, s0: int, s1: int) -> None:
        """Move the whole fleet through steps [s0, s1) of the current day."""
        t = time.perf_counter()
        k0, k1, g0 = s0 - self.day_first_step, s1 - self.day_first_step, self.day_first_step
        kernels.advance_electric(self.keys_e, self.cls_e, self.mean_kw_e, self.on_e, self.shape_e,
                                 k0, k1, g0, self.dt_h, self.acc_e, self.power_e)
        kernels.advance_water(self.keys_w, self.cls_w, self.draws_w, self.flowing_w, self.leak_w,
                              self.shape_w, k0, k1, g0, self.draw_m3, self.acc_w)
        kernels.advance_elevators(self.keys_l, self.trips_step_l, self.trip_kwh, self.standby_l,
                                  self.shape_l, k0, k1, g0, self.dt_h, self.acc_l, self.trips_l)
        kernels.advance_shared(self.keys_s, self.power_s, self.duty_s, self.scheduled_s,
                               self.always_s, k0, k1, g0, self.dt_h, self.acc_s, self.on_s)
        self.kernel_seconds += time.perf_counter() - t

    @property
    def metered_steps(self) -> int:
        """Meter-steps done so far: twins advanced by the kernels times steps."""
        n = len(self.keys_e) + len(self.keys_w) + len(self.keys_l) + len(self.keys_s)
        return n * self.step

    def _close_interval(self) -> None:
        """The interval is over: its truth, the masters' readings and what every meter
        reports (all but the whole-day thefts h4..h6, which wait for the day's end)."""
        i = self.interval_in_day
        row = self.true_day[i]
        if self.prepaid is not None:
            self._prepaid_interval()
        for group, acc in (("e", self.acc_e), ("w", self.acc_w), ("l", self.acc_l), ("s", self.acc_s)):
            row[self.cols[group]] = acc
            acc[:] = 0.0
        fed = np.bincount(self.fed_master, weights=row[self.fed_cols], minlength=len(self.feeders))
        loss = self.fixed_loss + self.loss_pct * fed
        row[self.cols["m"]] = fed + loss
        self.loss_day[:, i] = loss
        reported = self.reported_day[i]
        reported[:] = row
        first_step = self.day_first_step + i * self.spi
        minute = self.interval_minute[i:i + 1]
        for inj in self.injections:
            if inj.kind in PHYSICAL or inj.kind in WHOLE_DAY_REPORTS:
                continue
            if inj.start_step <= first_step < inj.end_step:
                c = inj.column
                apply_reporting(inj, row[c:c + 1], reported[c:c + 1], first_step, self.spi, minute, self.run_steps)
        self.interval_in_day += 1
        if self.on_interval is not None:
            self.on_interval(self.start_utc + first_step * self.step_s, reported)
        if self.feed_every_interval:
            ts = self.start_utc + (first_step + self.spi) * self.step_s
            self._feed_twins(np.nan_to_num(reported).astype(np.float64), reported, ts)

    def _prepaid_interval(self) -> None:
        """Meters deduct the interval's energy; residents below their threshold decide to
        top up (a SimPy process each); meters at zero trip, meters back in credit close."""
        meters = self.prepaid
        assert meters is not None
        if not meters.on_meter:  # residents look at the platform's balance about once an hour
            if self.balance_of is not None and self.interval_in_day % max(1, 3600 // self.interval_s) == 0:
                for row in meters.platform_due(self.balance_of(meters.accounts)):
                    self.env.process(resident_process(self.env, meters, int(row), self._topped_up))
            return
        meters.deduct(self.acc_e)
        low, trip, restore = meters.due()
        for row in low:
            self.env.process(resident_process(self.env, meters, int(row), self._topped_up))
        for row in trip:
            self.set_relay(meters.ids[row], False, source="meter: credit exhausted")
        for row in restore:
            self.set_relay(meters.ids[row], True, source="meter: credit restored")

    def _topped_up(self, row: int, fen: int) -> None:
        meters = self.prepaid
        assert meters is not None
        twin = meters.ids[row]
        self.events.append(Event(self.now_utc(), twin, "topup", str(fen), f"resident {meters.accounts[row]}"))
        if not meters.on_meter or meters.remote:  # paid at the platform
            account = meters.accounts[row]
            if self.on_payment is not None and account is not None:
                self.on_payment(account, fen, f"sim:{twin}:{int(meters.topups[row])}")
            return
        if meters.cut[row] and meters.credit_fen[row] > 0:
            meters.cut[row] = False
            self.set_relay(twin, True, source="meter: credit restored")

    def _close_day(self) -> None:
        """The run-day is over: the whole-day thefts rewrite their meters' day, and the
        day goes to `on_day`."""
        n = self.interval_in_day
        true, reported = self.true_day[:n], self.reported_day[:n]
        before = reported.copy() if self.feed_every_interval else None
        for inj in self.injections:
            if inj.kind in WHOLE_DAY_REPORTS:
                apply_reporting(inj, true[:, inj.column], reported[:, inj.column],
                                self.day_first_step, self.spi, self.interval_minute[:n], self.run_steps)
        first_utc = self.start_utc + self.day_first_step * self.step_s
        day = DayResult(self.day, first_utc, true, reported, self.loss_day[:, :n], self.interval_minute[:n],
                        self.interval_weekend[:n], self.interval_month[:n])
        ts = first_utc + n * self.interval_s
        if before is None:
            self._feed_twins(np.asarray(np.nansum(reported, axis=0, dtype=np.float64)), reported[-1], ts)
        else:  # twins moved every interval; the tampered daily uploads correct the registers now
            delta = np.nansum(reported, axis=0, dtype=np.float64) - np.nansum(before, axis=0, dtype=np.float64)
            self._feed_twins(np.asarray(delta), reported[-1], ts)
        self.on_day(day)

    def _feed_power(self) -> None:
        """Live: electric meters report the power of the step just simulated."""
        if not hasattr(self, "_state_rows_e"):
            table = self.state.tables[Kind.ELECTRIC_METER]
            self._state_rows_e = np.array([table.row_of[t.id] for t in self.groups["e"]], dtype=np.int64)
        table = self.state.tables[Kind.ELECTRIC_METER]
        rows = self._state_rows_e
        live = table.faces["reported"]["online"][rows] == 1  # a meter whose comms are down says nothing
        table.faces["reported"]["power_w"][rows[live]] = self.power_e[live] * 1000.0
        table.stamps["reported"][rows[live]] = self.now_utc() + self.step_s

    def _feed_twins(self, sums: np.ndarray, last: np.ndarray, ts: int) -> None:
        """Add `sums` ([columns], kWh or m3) to the twins' registers; power or flow from
        `last` (the last interval's readings); stamp the reports `ts`."""
        online = ~np.isnan(last)
        hours = self.interval_s / 3600.0
        if not hasattr(self, "_state_rows_e"):
            table = self.state.tables[Kind.ELECTRIC_METER]
            self._state_rows_e = np.array([table.row_of[t.id] for t in self.groups["e"]], dtype=np.int64)
        if not hasattr(self, "_state_cols"):
            self._state_cols = {
                kind: np.array([self.column_of[i] for i in self.state.tables[kind].ids], dtype=np.int64)
                for kind in REGISTERS}
        for kind, register in REGISTERS.items():
            table = self.state.tables[kind]
            if not len(table):
                continue
            cols = self._state_cols[kind]
            ok = online[cols]
            rows = np.flatnonzero(ok)
            fields = table.faces["reported"]
            fields[register][:] += sums[cols]
            rate = np.where(ok, last[cols], 0.0) / hours
            if kind is Kind.WATER_METER:
                fields["flow_m3h"][:] = rate
            else:
                fields["power_w"][:] = rate * 1000.0
            fields["online"][:] = ok
            table.stamps["reported"][rows] = ts
        fields = self.state.tables[Kind.ELECTRIC_METER].faces["reported"]
        fields["voltage_v"][:] = 220.0
        fields["frequency_hz"][:] = 50.0
        fields["power_factor"][:] = 0.95
        fields["current_a"][:] = fields["power_w"] / (220.0 * 0.95)
        if self.prepaid is not None:
            live = fields["online"][self._state_rows_e].astype(bool)  # an offline meter's registers go unread
            rows = self._state_rows_e[live]
            fields["credit_fen"][rows] = np.floor(self.prepaid.credit_fen[live]).astype(np.int64)
            fields["purchased_fen"][rows] = self.prepaid.purchased_fen[live]

    # -- ground truth -------------------------------------------------------------------

    def ground_truth(self) -> list[dict[str, object]]:
        """Every injection of the run as (twin, kind, start, end, params) records; params
        include what was drawn and, for reporting ones, the `hidden` total."""
        rows = []
        for inj in self.injections:
            if inj.start_step >= self.run_steps:
                continue
            start, end = window_times(inj, self.start_utc, self.step_s, self.run_steps)
            params: dict[str, float] = {k: round(v, 6) for k, v in inj.params.items()}
            if inj.kind not in PHYSICAL:
                params["hidden"] = round(inj.hidden, 6)
            rows.append({"twin": inj.twin, "kind": inj.kind, "start": start, "end": end,
                         "params": params})
        return sorted(rows, key=lambda r: (r["start"], r["twin"], r["kind"]))  # type: ignore[return-value]
