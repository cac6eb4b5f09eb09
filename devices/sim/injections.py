"""Faults and thefts: resolving them to concrete windows, and what each does to readings.

Two families. Physical ones change what flows (a leak adds water, a stuck valve keeps
water flowing after a close, elevator drift raises energy per trip, a circuit off its
schedule draws power); the world applies them in its kernels and the meter reads the truth.
Reporting ones change what the meter reports against the truth: the thefts of Jokar et al.
(2016) h1..h6, the physical bypass (the meter sees a share of the load, the master meter
all of it), and the register faults (offline, stuck, backwards, jump). `apply_reporting`
applies the second family to a day of readings and returns what it hid.

Rules kept here (and held by tests/devices/test_world.py):
- windows start and end on interval boundaries; h2..h6 windows on run-day boundaries,
  because their definitions act on whole days;
- outside its window an injection changes nothing; inside, `hidden` adds up
  true - reported (a missing reading counts as 0 reported);
- an offline meter reports nothing until the last interval of its window, which carries
  everything the register counted meanwhile (the collector's delta on reconnection);
  a window that outlasts the run never reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from devices.sim.rng import INJECT, key_for, twin_keys, uniform
from scenarios.schema import (
    FAULT_KINDS,
    INJECTION_PARAMS,
    THEFT_KINDS,
    Injection,
    RandomInjections,
)
from twin.model import Kind, TwinSpec

PHYSICAL = frozenset({"leak", "valve_stuck_open", "elevator_drift", "off_schedule"})
WHOLE_DAYS = frozenset({"h2", "h3", "h4", "h5", "h6"})
#: Thefts that rewrite a whole day's readings (they need the day's mean or order), so
#: their meters' reports for a day are final only when the day ends.
WHOLE_DAY_REPORTS = frozenset({"h4", "h5", "h6"})


@dataclass
class Resolved:
    """An injection with its window in run steps and every random parameter drawn."""

    twin: str  #: twin id
    kind: str  #: injection kind
    column: int  #: history column of the twin
    row: int  #: row of the twin in its kind's arrays in the world
    start_step: int  #: first step affected (an interval boundary)
    end_step: int  #: first step no longer affected (may lie beyond the run)
    params: dict[str, float]  #: parameters, drawn ones filled in
    key: np.uint64  #: random key for per-reading draws
    hidden: float = 0.0  #: true - reported so far inside the window
    carry: float = 0.0  #: offline: what the register counted while unreported
    extra: dict[str, float] = field(default_factory=dict)  #: figures for the ground truth


def draw_params(kind: str, given: dict[str, float], key: np.uint64) -> dict[str, float]:
    """Fill defaults, and draw the parameters marked -1 from their documented ranges."""
    params = {**INJECTION_PARAMS[kind], **given}
    if kind == "h1" and params["factor"] < 0:
        params["factor"] = 0.1 + 0.7 * uniform(key, np.uint64(1))
    if kind == "h2":
        if params["off_hours"] < 0:
            params["off_hours"] = 4.0 + 8.0 * uniform(key, np.uint64(2))
        if params["off_start_h"] < 0:
            params["off_start_h"] = 24.0 * uniform(key, np.uint64(3))
    if kind == "bypass" and params["share"] < 0:
        params["share"] = 0.3 + 0.4 * uniform(key, np.uint64(4))
    for name in ("factor", "share"):
        if name in params and not 0.0 < params[name] < 1.0:
            raise ValueError(f"{kind}: {name} must be in (0, 1), not {params[name]}")
    return params


def check_target(kind: str, twin: TwinSpec) -> None:
    """Raise ValueError when `kind` cannot be injected into `twin`."""
    allowed = FAULT_KINDS.get(kind, ("electric_meter",) if kind in THEFT_KINDS else ())
    if twin.kind.value not in allowed or twin.role != "sub":
        raise ValueError(
            f"{kind} cannot be injected into {twin.id} ({twin.kind.value}, {twin.role}); "
            f"it applies to sub-meters of kind {', '.join(allowed)}"
        )


def resolve(
    injections: list[Injection], randoms: list[RandomInjections], twins: list[TwinSpec],
    column_of: dict[str, int], row_of: dict[str, int], start: datetime, days: float,
    step_s: int, interval_s: int, seed: int,
) -> list[Resolved]:
    """Turn the scenario's injections and random draws into windows of this run."""
    by_id = {t.id: t for t in twins}
    spi = interval_s // step_s
    spd = 86400 // step_s
    out: list[Resolved] = []

    def add(twin_id: str, kind: str, s: int, e: int, given: dict[str, float], tag: str) -> None:
        check_target(kind, by_id[twin_id])
        if kind in WHOLE_DAYS:
            s, e = (s // spd) * spd, -(-e // spd) * spd
        else:
            s, e = (s // spi) * spi, -(-e // spi) * spi
        e = max(e, s + spi)
        key = key_for(f"{twin_id}/{kind}/{tag}", seed, INJECT)
        params = draw_params(kind, given, key)
        out.append(Resolved(twin_id, kind, column_of[twin_id], row_of[twin_id], s, e, params, key))

    run_steps = int(round(days * spd))
    never = 10 * run_steps + 10 * spd
    for n, inj in enumerate(injections):
        s = int((inj.start.resolve(start) - start).total_seconds()) // step_s
        e = never if inj.end is None else int((inj.end.resolve(start) - start).total_seconds()) // step_s
        if e <= s:
            raise ValueError(f"injection {n + 1} ({inj.kind} on {inj.twin}): end is not after start")
        add(inj.twin, inj.kind, max(s, 0), e, dict(inj.params), f"file{n}")

    taken = {r.twin for r in out}
    occupied_subs: dict[str, list[TwinSpec]] = {}
    for t in twins:  # candidates: sub-meters of occupied rooms, by twin kind
        if t.role == "sub" and t.profile != "vacant":
            occupied_subs.setdefault(t.kind.value, []).append(t)
    for spec in randoms:
        for kind in spec.kinds:
            allowed = FAULT_KINDS.get(kind, ("electric_meter",))
            eligible = [t for k in allowed for t in occupied_subs.get(k, []) if t.id not in taken]
            ranks = twin_keys([f"{t.id}/{kind}" for t in eligible], seed, INJECT)
            ranked = [eligible[i] for i in np.argsort(ranks, kind="stable")[: spec.per_kind]]
            for i, twin in enumerate(ranked):
                key = key_for(f"{twin.id}/{kind}/random", seed, INJECT)
                last = min(spec.last_day, max(int(days) - 1, spec.first_day))
                day = spec.first_day + int(uniform(key, np.uint64(10)) * (last - spec.first_day + 1))
                length = spec.min_days + (spec.max_days - spec.min_days) * uniform(key, np.uint64(11))
                hour = 0.0 if kind in WHOLE_DAYS else 24.0 * uniform(key, np.uint64(12))
                s = int((day * 86400 + hour * 3600) // step_s)
                e = s + int(length * 86400 // step_s)
                add(twin.id, kind, s, e, {}, f"random{i}")
                taken.add(twin.id)
    return out


def apply_reporting(
    inj: Resolved, true_col: np.ndarray, rep_col: np.ndarray, day_first_step: int,
    spi: int, interval_minute: np.ndarray, run_end_step: int,
) -> None:
    """Apply one reporting injection to one twin's day of readings, in place.

    `true_col` and `rep_col` are the twin's true and reported values for the day's
    intervals; `interval_minute` the local minute of day at which each interval starts.
    """
    n = true_col.size
    first_interval = day_first_step // spi
    a = max(inj.start_step // spi - first_interval, 0)
    b = min(inj.end_step // spi - first_interval, n)
    if a >= b or inj.kind in PHYSICAL:
        return
    window = slice(a, b)
    truth = true_col[window].astype(np.float64)
    kind, p = inj.kind, inj.params
    if kind == "h1":
        rep = truth * p["factor"]
    elif kind == "bypass":
        rep = truth * (1.0 - p["share"])
    elif kind == "h2":
        minute = interval_minute[window]
        off0 = p["off_start_h"] * 60.0
        rel = (minute - off0) % 1440.0
        rep = np.where(rel < p["off_hours"] * 60.0, 0.0, truth)
    elif kind in ("h3", "h4"):
        counters = np.arange(first_interval + a, first_interval + b, dtype=np.uint64)
        factors = np.array([0.1 + 0.7 * uniform(inj.key, c + np.uint64(1000)) for c in counters])
        rep = truth * factors if kind == "h3" else factors * truth.mean()
    elif kind == "h5":
        rep = np.full_like(truth, truth.mean())
    elif kind == "h6":
        rep = truth[::-1].copy()
    elif kind == "stuck":
        rep = np.zeros_like(truth)
    elif kind == "backwards":
        rep = np.full_like(truth, -p["kwh_per_interval"])
    elif kind == "jump":
        rep = truth.copy()
        if inj.start_step // spi - first_interval == a and a < n:
            rep[0] += p["jump"]
    elif kind == "offline":
        rep = np.full_like(truth, np.nan)
        inj.carry += float(truth.sum())
        last = inj.end_step // spi - first_interval - 1
        if last < n and inj.end_step <= run_end_step:
            rep[last - a] = inj.carry
            inj.carry = 0.0
    else:  # pragma: no cover - resolve() refuses unknown kinds
        raise ValueError(f"unknown injection kind {kind!r}")
    rep32 = rep.astype(np.float32)
    inj.hidden += float(truth.sum() - np.nansum(rep32.astype(np.float64)))
    rep_col[window] = rep32


def window_times(inj: Resolved, start_utc: int, step_s: int, run_end_step: int) -> tuple[int, int | None]:
    """UTC start and end (None: beyond the run) of an injection's window."""
    end = None if inj.end_step > run_end_step else start_utc + inj.end_step * step_s
    return start_utc + inj.start_step * step_s, end


def valve_of_meter(twins: list[TwinSpec]) -> dict[str, str]:
    """Water meter id -> its valve id."""
    return {t.valve_of: t.id for t in twins if t.kind is Kind.VALVE and t.valve_of}

