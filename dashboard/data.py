"""What the pages show, aggregated on the server from the live platform: the room grid's
states, the overview's figures, one twin's day, alarms, reports and tasks.

Every function here takes the platform and returns plain data (lists, dicts, numpy arrays)
small enough for a browser: a figure never carries more than `MAX_POINTS` points. Callers
run the functions that read live state under the platform lock (see `dashboard.bridge`).

Room states, worst first (a room shows the first that holds):
    offline    a meter of the room has gone silent (its comms are down)
    cut off    its relay is open or its valve closed (by a policy or an operator)
    alarm      an open alarm on one of its twins or its account (not low balance, not offline)
    arrears    its account's available balance is below zero
    low        its account is at a low-balance level (1..3)
    normal     none of these
    vacant     no account lives there
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from control.reports import paid_in_fen
from twin.history import History, HistoryError, open_history
from twin.kernels.billing import bill_fleet
from twin.model import Kind
from twin.tariffs import Tariff, parse_tariff, price_tables

if TYPE_CHECKING:
    from control.runtime import Platform

#: No figure sends more points than this to the browser.
MAX_POINTS = 100_000
#: State codes of the room grid, in display order, with their colours.
STATES = ("normal", "low balance", "arrears", "cut off", "alarm", "offline", "vacant")
COLOURS = ("#2e9e4f", "#f2c12e", "#e8772e", "#7b3fa0", "#d62728", "#6b6b6b", "#d9d9d9")
NORMAL, LOW, ARREARS, CUT, ALARM, OFFLINE, VACANT = range(len(STATES))
#: Alarm kinds the grid shows as their own state rather than as "alarm".
OWN_STATE_KINDS = ("offline", "low_balance_1", "low_balance_2", "low_balance_3")


_HISTORIES: dict[str, History] = {}
_TARIFFS: dict[tuple[str, str], Tariff] = {}


def history_of(platform: Platform) -> History:
    """The platform's history opened for reading, once (its topology is fixed for a run;
    reads see what the writer flushed)."""
    key = str(platform.data / "history")
    if key not in _HISTORIES:
        _HISTORIES[key] = open_history(key)
    return _HISTORIES[key]


def tariff_of(platform: Platform, name: str) -> Tariff:
    """A scenario tariff parsed once."""
    key = (platform.scenario_path, name)
    if key not in _TARIFFS:
        _TARIFFS[key] = parse_tariff(name, platform.scenario.tariffs[name])
    return _TARIFFS[key]


def _rows(platform: Platform, kind: Kind, ids: list[str | None]) -> np.ndarray:
    """Rows of twins in their kind's table, -1 where there is none."""
    row_of = platform.state.tables[kind].row_of
    return np.array([row_of.get(i, -1) if i else -1 for i in ids], dtype=np.int64)


@dataclass
class RoomIndex:
    """Every room of the site with its twins' rows and its place on the grid, built once.

    The grid puts each building's floors as rows (ground floor at the bottom) and its rooms
    as columns; buildings sit side by side on shelves, one empty column and row between, in
    site order from the top shelf down, as many to a shelf as brings the whole grid closest
    to a screen's shape (`GRID_ASPECT`)."""

    ids: list[str]  #: room ids in site order
    building: list[str]  #: building id per room
    accounts: list[str | None]  #: account per room (None: vacant)
    meter: list[str | None]  #: the room's electric meter id (the twin its cell opens)
    x: np.ndarray  #: grid column per room
    y: np.ndarray  #: grid row per room
    width: int  #: grid columns
    height: int  #: grid rows
    rows_e: np.ndarray  #: electric meter rows (-1: none)
    rows_w: np.ndarray  #: water meter rows
    rows_v: np.ndarray  #: valve rows
    labels: list[tuple[str, float, float]]  #: (building id, x, y) of each building's label
    twins_of: dict[str, list[str]]  #: room id -> its twin ids

    @classmethod
    def build(cls, platform: Platform, building: str | None = None) -> RoomIndex:
        """The grid of one building, or of the whole site when `building` is None."""
        site = platform.scenario.site
        buildings = [b for b in site.buildings if building is None or b.id == building]
        if not buildings:
            raise KeyError(f"no building {building!r}")
        per_shelf = _per_shelf(buildings)
        shelves = [buildings[s:s + per_shelf] for s in range(0, len(buildings), per_shelf)]
        shelf_h = [max(len(b.floors) for b in shelf) for shelf in shelves]
        # the first shelf on top: its floor 1 row sits above every later shelf and its gap
        shelf_y0 = [sum(h + 2 for h in shelf_h[k + 1:]) for k in range(len(shelves))]
        ids: list[str] = []
        owners: list[str] = []
        accounts: list[str | None] = []
        xs: list[int] = []
        ys: list[int] = []
        labels: list[tuple[str, float, float]] = []
        twins_of: dict[str, list[str]] = {}
        meters: dict[str, dict[Kind, str]] = {}
        for spec in site.twins:
            if spec.room and spec.role == "sub":
                meters.setdefault(spec.room, {})[spec.kind] = spec.id
        width = 0
        for shelf, shelf_y in zip(shelves, shelf_y0, strict=True):
            x0 = 0
            for b in shelf:
                wide = max((len(f.rooms) for f in b.floors), default=0)
                for f_index, floor in enumerate(b.floors):
                    for r_index, room in enumerate(floor.rooms):
                        ids.append(room.id)
                        owners.append(b.id)
                        accounts.append(room.account)
                        xs.append(x0 + r_index)
                        ys.append(shelf_y + f_index)
                        twins_of[room.id] = list(room.twins)
                labels.append((b.id, x0 + (wide - 1) / 2, shelf_y + len(b.floors) - 0.2))  # just above its roof
                x0 += wide + 1
            width = max(width, x0 - 1)
        room_meters = [meters.get(r, {}) for r in ids]
        return cls(ids, owners, accounts, [m.get(Kind.ELECTRIC_METER) or m.get(Kind.WATER_METER) for m in room_meters],
                   np.array(xs, dtype=np.int64), np.array(ys, dtype=np.int64), max(width, 1),
                   max(sum(h + 2 for h in shelf_h) - 2, 1),
                   _rows(platform, Kind.ELECTRIC_METER, [m.get(Kind.ELECTRIC_METER) for m in room_meters]),
                   _rows(platform, Kind.WATER_METER, [m.get(Kind.WATER_METER) for m in room_meters]),
                   _rows(platform, Kind.VALVE, [m.get(Kind.VALVE) for m in room_meters]), labels, twins_of)


#: The room grid's preferred width : height in cells (a screen is wider than tall).
GRID_ASPECT = 2.0


def _per_shelf(buildings: list[Any]) -> int:
    """How many buildings to put side by side on a shelf: the count whose whole grid is
    closest (by ratio) to `GRID_ASPECT`, fewer shelves on a tie."""
    widths = [max((len(f.rooms) for f in b.floors), default=0) for b in buildings]
    heights = [len(b.floors) for b in buildings]

    def misfit(n: int) -> float:
        width = max(sum(widths[s:s + n]) + len(widths[s:s + n]) - 1 for s in range(0, len(buildings), n))
        height = sum(max(heights[s:s + n]) + 2 for s in range(0, len(buildings), n)) - 2
        return abs(np.log(max(width, 1) / max(height, 1) / GRID_ASPECT))

    return min(range(len(buildings), 0, -1), key=misfit)


def available_fen(platform: Platform, accounts: list[str | None]) -> np.ndarray:
    """Each account's available balance (fen; 0 for None): the platform's figure in
    platform billing, the meter's own credit in meter billing."""
    if platform.meter_billing is None:
        return platform.billing.available_many(accounts)  # type: ignore[no-any-return]
    credit = platform.state.tables[Kind.ELECTRIC_METER].faces["reported"]["credit_fen"]
    by_account: dict[str, int] = {}
    for twin, row in platform.state.tables[Kind.ELECTRIC_METER].row_of.items():
        spec = platform.twin_specs[twin]
        if spec.account:
            by_account[spec.account] = by_account.get(spec.account, 0) + int(credit[row])
    return np.array([by_account.get(a, 0) if a else 0 for a in accounts], dtype=np.int64)


def room_states(platform: Platform, index: RoomIndex) -> tuple[np.ndarray, np.ndarray]:
    """(state code per room, available balance in fen per room). Call under the lock."""
    tables = platform.state.tables
    n = len(index.ids)
    state = np.full(n, NORMAL, dtype=np.int8)
    balance = available_fen(platform, index.accounts)
    levels = platform.policy.states
    low = np.array([bool(a and a in levels and levels[a].level > 0) for a in index.accounts])
    if platform.meter_billing is not None:
        low |= balance < platform.policy.settings.levels_fen[0]
    state[low] = LOW
    state[balance < 0] = ARREARS
    alarmed_twins: set[str] = set()
    alarmed_accounts: set[str] = set()
    for alarm in platform.alarms.open_alarms():
        if alarm.kind in OWN_STATE_KINDS:
            continue
        if alarm.twin:
            alarmed_twins.add(alarm.twin)
        if alarm.account:
            alarmed_accounts.add(alarm.account)
    if alarmed_twins or alarmed_accounts:
        room_of = {t: i for i, r in enumerate(index.ids) for t in index.twins_of[r]}
        hit = [room_of[t] for t in alarmed_twins if t in room_of]
        hit += [i for i, a in enumerate(index.accounts) if a in alarmed_accounts]
        state[hit] = ALARM
    cut = np.zeros(n, dtype=bool)
    offline = np.zeros(n, dtype=bool)
    for kind, rows, field in ((Kind.ELECTRIC_METER, index.rows_e, "relay_closed"), (Kind.VALVE, index.rows_v, "open"),
                              (Kind.WATER_METER, index.rows_w, None)):
        have = rows >= 0
        reported = tables[kind].faces["reported"]
        if field is not None:
            cut[have] |= reported[field][rows[have]] == 0
        offline[have] |= reported["online"][rows[have]] == 0
    state[cut] = CUT
    state[offline] = OFFLINE
    vacant = np.array([a is None for a in index.accounts])
    state[vacant & (state == NORMAL)] = VACANT
    return state, balance


def grid_figure(index: RoomIndex, state: np.ndarray, balance: np.ndarray, full: bool = True) -> dict[str, Any]:
    """The room grid as one heatmap (a plotly figure as plain data). With `full` False,
    only the trace's changing parts (z and hover text) for a Patch."""
    z = np.full((index.height, index.width), np.nan)
    z[index.y, index.x] = state
    text = np.full((index.height, index.width), "", dtype=object)
    yuan = balance / 100.0
    names = np.array(STATES, dtype=object)[state]
    text[index.y, index.x] = [f"{r} · {s} · {b:.2f} yuan" for r, s, b in zip(index.ids, names, yuan.tolist(),
                                                                             strict=True)]
    room = np.full((index.height, index.width), "", dtype=object)
    room[index.y, index.x] = [m or "" for m in index.meter]
    z_list = [[None if v != v else v for v in row] for row in z.tolist()]  # NaN (no room) as null
    if not full:
        return {"z": z_list, "text": text.tolist()}
    k = len(STATES)
    scale = []
    for i, colour in enumerate(COLOURS):
        scale += [[i / k, colour], [(i + 1) / k, colour]]
    trace = {"type": "heatmap", "z": z_list, "text": text.tolist(), "customdata": room.tolist(),
             "hovertemplate": "%{text}<extra></extra>", "zmin": -0.5, "zmax": k - 0.5,
             "colorscale": scale, "xgap": 1, "ygap": 1, "showscale": False}  # the page's legend names the colours
    annotations = [{"x": x, "y": y, "text": b, "showarrow": False, "font": {"size": 11}} for b, x, y in index.labels]
    layout = {"margin": {"l": 10, "r": 10, "t": 10, "b": 10}, "annotations": annotations,
              "xaxis": {"visible": False, "fixedrange": False},
              "yaxis": {"visible": False, "scaleanchor": "x"}, "plot_bgcolor": "white",
              "height": max(360, min(900, 22 * index.height + 40)), "uirevision": "grid"}
    return {"data": [trace], "layout": layout}


def state_counts(state: np.ndarray) -> dict[str, int]:
    """How many rooms are in each state."""
    counts = np.bincount(state.astype(np.int64), minlength=len(STATES))
    return {name: int(c) for name, c in zip(STATES, counts.tolist(), strict=True)}


# -- today ---------------------------------------------------------------------------------


def local_midnight(platform: Platform) -> int:
    """UTC epoch seconds of the current site-local day's start (platform time)."""
    local = datetime.fromtimestamp(platform.now(), tz=platform.world.tz)
    return int(local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp())


def live_intervals(platform: Platform, since_utc: int) -> tuple[np.ndarray, np.ndarray]:
    """(interval start times, readings [interval, column]) from `since_utc` to the last
    closed interval: the stored history, then the world's current day. Call under the lock."""
    world = platform.world
    day_first = world.start_utc + getattr(world, "day_first_step", 0) * world.step_s
    n_today = getattr(world, "interval_in_day", 0)
    parts_t: list[np.ndarray] = []
    parts_v: list[np.ndarray] = []
    if since_utc < day_first:
        platform.history.flush()
        history = history_of(platform)
        start = max(since_utc, history.start or day_first)
        if start < day_first:
            rows = history.read_rows(start, day_first)
            parts_t.append(start + np.arange(rows.shape[0], dtype=np.int64) * world.interval_s)
            parts_v.append(np.asarray(rows, dtype=np.float64))
    first = max(0, (since_utc - day_first) // world.interval_s)
    if n_today > first:
        parts_t.append(day_first + np.arange(first, n_today, dtype=np.int64) * world.interval_s)
        parts_v.append(world.reported_day[first:n_today].astype(np.float64))
    if not parts_t:
        return np.zeros(0, dtype=np.int64), np.zeros((0, len(world.columns)))
    return np.concatenate(parts_t), np.concatenate(parts_v)


def overview(platform: Platform) -> dict[str, Any]:
    """Meters online, alarms open, energy and water today, income today, and today's
    site load by interval. Call under the lock."""
    tables = platform.state.tables
    online = total = 0
    for kind in (Kind.ELECTRIC_METER, Kind.WATER_METER):
        flags = tables[kind].faces["reported"]["online"]
        online += int(flags.sum())
        total += int(flags.size)
    midnight = local_midnight(platform)
    times, readings = live_intervals(platform, midnight)
    columns = platform.world.columns
    sub_e = np.array([i for i, t in enumerate(columns) if t.role == "sub" and t.utility == "electric"], dtype=np.int64)
    sub_w = np.array([i for i, t in enumerate(columns) if t.role == "sub" and t.kind is Kind.WATER_METER],
                     dtype=np.int64)
    load = np.nansum(readings[:, sub_e], axis=1) if sub_e.size else np.zeros(len(times))
    water = np.nansum(readings[:, sub_w], axis=1) if sub_w.size else np.zeros(len(times))
    paid = paid_in_fen(platform.ledger, midnight)  # as the income report counts it: opening balances are not income
    alarms = platform.alarms.open_alarms()
    by_kind: dict[str, int] = {}
    for alarm in alarms:
        by_kind[alarm.kind] = by_kind.get(alarm.kind, 0) + 1
    return {"meters_online": online, "meters": total, "alarms_open": len(alarms), "alarms_by_kind": by_kind,
            "energy_kwh_today": float(load.sum()), "water_m3_today": float(water.sum()),
            "income_fen_today": int(paid), "times": times, "load_kwh": load, "water_m3": water,
            "open_commands": len(platform.commands.open),
            "sim_time": datetime.fromtimestamp(platform.now(), tz=platform.world.tz)}


def twin_day(platform: Platform, twin_id: str) -> dict[str, Any]:
    """One twin now: its live state, the last 24 hours of its readings, today's energy and
    cost by tariff band, and its account's balance. Call under the lock."""
    spec = platform.twin_specs[twin_id]
    view = platform.state.twin(twin_id).as_dict()
    out: dict[str, Any] = {"spec": spec, "state": view, "times": np.zeros(0), "values": np.zeros(0), "bands": []}
    column = platform.world.column_of.get(twin_id)
    if column is not None:
        since = int(platform.now()) - 86400
        times, readings = live_intervals(platform, since - since % platform.world.interval_s)
        out["times"], out["values"] = times, readings[:, column]
        midnight = local_midnight(platform)
        today = times >= midnight
        out["today_units"] = float(np.nansum(out["values"][today]))
        if spec.tariff and spec.tariff in platform.scenario.tariffs and today.any():
            tariff = tariff_of(platform, spec.tariff)
            first = int(times[today][0])
            tables = price_tables([tariff], first, int(today.sum()), platform.world.interval_s,
                                  platform.scenario.site.timezone)
            energy = np.nan_to_num(out["values"][today]).astype(np.float32)[None, :]
            billed = bill_fleet(energy, np.zeros(1, dtype=np.int64), np.zeros(1), tables)
            out["bands"] = [{"band": name, "units": float(billed["band_units"][0, b]),
                             "fen": float(billed["band_fen"][0, b])} for b, name in enumerate(tables.band_names[0])]
            out["surcharge_fen"] = float(billed["charge_fen"][0] - billed["band_fen"][0].sum())
    if spec.account:
        out["available_fen"] = int(available_fen(platform, [spec.account])[0])
        out["balance_fen"] = platform.ledger.balance(spec.account)
        policy = platform.policy.states.get(spec.account)
        out["low_level"] = policy.level if policy else 0
    out["commands"] = [c.as_dict() for c in platform.commands.recent(8, twin_id)]
    out["alarms"] = [a for a in platform.alarms.open_alarms() if a.twin == twin_id or (
        spec.account and a.account == spec.account)]
    return out


def downsample(times: np.ndarray, values: np.ndarray, limit: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most `limit` points: means of equal runs (a day of 15-minute intervals stays whole)."""
    n = len(times)
    if n <= limit:
        return times, values
    step = -(-n // limit)
    cut = n - n % step
    t = times[:cut:step]
    v = np.nanmean(values[:cut].reshape(-1, step), axis=1)
    return t, v


def days_ago(platform: Platform, days: int) -> int:
    """Site-local midnight `days` days before today, UTC epoch seconds."""
    local = datetime.fromtimestamp(local_midnight(platform), tz=platform.world.tz)
    return int((local - timedelta(days=days)).timestamp())


class EnergyDays:
    """Site energy (kWh, billed sub-meters) and water (m3) per site-local day from the
    history, remembered for closed days (a closed day's history no longer changes)."""

    def __init__(self) -> None:
        self.days: dict[int, tuple[float, float]] = {}

    def table(self, platform: Platform) -> list[tuple[datetime, float, float]]:
        """(local midnight, kWh, m3) for every day the history holds, and today so far."""
        platform.history.flush()
        history = history_of(platform)
        start, end = history.start, history.end
        columns = platform.world.columns
        sub_e = [i for i, t in enumerate(columns) if t.role == "sub" and t.kind is Kind.ELECTRIC_METER]
        sub_w = [i for i, t in enumerate(columns) if t.role == "sub" and t.kind is Kind.WATER_METER]
        tz = platform.world.tz
        out: list[tuple[datetime, float, float]] = []
        day = datetime.fromtimestamp(start or 0, tz=tz).replace(hour=0, minute=0, second=0, microsecond=0)
        while start is not None and end is not None and int(day.timestamp()) < end:
            t0 = int(day.timestamp())
            t1 = int((day + timedelta(days=1)).replace(tzinfo=None).replace(tzinfo=tz).timestamp())
            if t0 not in self.days:
                try:  # the finest the history keeps for the day (old months may be rolled up)
                    rows, _ = history.read_finest(max(t0, start), min(t1, end), sub_e + sub_w)
                except HistoryError:  # a day not on the roll-up's boundaries: left out, not guessed
                    day = datetime.fromtimestamp(t1, tz=tz)
                    continue
                sums = (float(np.nansum(rows[:len(sub_e)])), float(np.nansum(rows[len(sub_e):])))
                if t1 > end:
                    out.append((day, *sums))
                    break
                self.days[t0] = sums
            out.append((day, *self.days[t0]))
            day = datetime.fromtimestamp(t1, tz=tz)
        # what the history does not hold yet: the world's current day, interval by interval
        times, readings = live_intervals(platform, end if end is not None else platform.world.start_utc)
        if len(times):
            kwh = np.nansum(readings[:, sub_e], axis=1)
            m3 = np.nansum(readings[:, sub_w], axis=1)
            for t, e, w in zip(times.tolist(), kwh.tolist(), m3.tolist(), strict=True):
                midnight = datetime.fromtimestamp(t, tz=tz).replace(hour=0, minute=0, second=0, microsecond=0)
                if out and out[-1][0] == midnight:
                    out[-1] = (midnight, out[-1][1] + e, out[-1][2] + w)
                else:
                    out.append((midnight, e, w))
        return out


def energy_by_period(days: list[tuple[datetime, float, float]], period: str) -> list[dict[str, Any]]:
    """Energy and water per day, month or year, each beside the same period a year
    earlier (None where the history does not hold it)."""
    fmt = {"day": "%Y-%m-%d", "month": "%Y-%m", "year": "%Y"}[period]
    sums: dict[str, list[float]] = {}
    for day, kwh, m3 in days:
        key = day.strftime(fmt)
        row = sums.setdefault(key, [0.0, 0.0])
        row[0] += kwh
        row[1] += m3
    out = []
    for key, (kwh, m3) in sums.items():
        before = sums.get(str(int(key[:4]) - 1) + key[4:])
        out.append({"period": key, "energy_kwh": round(kwh, 3), "water_m3": round(m3, 3),
                    "energy_kwh_last_year": None if before is None else round(before[0], 3),
                    "water_m3_last_year": None if before is None else round(before[1], 3)})
    return out
