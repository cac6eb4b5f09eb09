"""What a simulation run shows at its end: the shape of the load it made, the energy and
water per building, and each master meter's balance against its sub-meters.

`RunSummary` takes the world's run-days one at a time (never the whole run in memory)
and keeps only small accumulators, so it costs little beside a 100,000-meter run. Shape
figures use the truth (what households drew); building figures use what meters reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from devices.sim.world import DayResult, World
from twin.model import Kind


@dataclass
class BuildingTotals:
    """Per building: electricity and water reported by sub-meters and by the masters."""

    electric_sub: float = 0.0  #: kWh, sub-meters plus elevators plus shared circuits
    electric_master: float = float("nan")  #: kWh read by the master, NaN without one
    water_sub: float = 0.0  #: m3, sub-meters
    water_master: float = float("nan")  #: m3 read by the master, NaN without one


@dataclass
class RunSummary:
    """Accumulates figures from each `DayResult` of a `World`."""

    world: World
    days: int = 0
    hourly_e: np.ndarray = field(default_factory=lambda: np.zeros((2, 24)))  #: kWh by daytype, hour
    hourly_w: np.ndarray = field(default_factory=lambda: np.zeros((2, 24)))  #: m3 by daytype, hour
    hourly_n: np.ndarray = field(default_factory=lambda: np.zeros((2, 24)))  #: intervals counted
    daily_e: list[np.ndarray] = field(default_factory=list)  #: per day: kWh per household
    day_weekend: list[bool] = field(default_factory=list)  #: per day: a weekend day
    day_month: list[int] = field(default_factory=list)  #: per day: month 0..11
    day_hours: list[float] = field(default_factory=list)  #: per day: hours simulated
    lift_trips: int = 0  #: elevator trips counted
    lift_kwh: float = 0.0  #: elevator energy
    buildings: dict[str, BuildingTotals] = field(default_factory=dict)  #: by building id
    billing: Any = None  #: BillingFigures of a platform-billed run, else None

    def __post_init__(self) -> None:
        w = self.world
        cls_shape = [w.classes[c].shape for c in w.cls_e]
        self.hh_cols = np.array([
            col for col, t, shape in zip(w.cols["e"], w.groups["e"], cls_shape, strict=True)
            if shape == "household" and t.profile != "vacant"], dtype=np.int64)
        self.hh_w_cols = np.array([
            col for col, t, c in zip(w.cols["w"], w.groups["w"], w.cls_w, strict=True)
            if w.classes[c].shape == "household" and t.profile != "vacant"], dtype=np.int64)
        self.building_cols: dict[str, dict[str, np.ndarray]] = {}
        for b in w.site.buildings:
            self.buildings[b.id] = BuildingTotals()
        groups: dict[tuple[str, str], list[int]] = {}
        for col, t in enumerate(w.columns):
            if t.role == "master":
                key = "electric_master" if t.utility == "electric" else "water_master"
            else:
                key = "electric_sub" if t.utility == "electric" else "water_sub"
            groups.setdefault((t.building, key), []).append(col)
        self.groups = {k: np.array(v, dtype=np.int64) for k, v in groups.items()}

    def add(self, day: DayResult) -> None:
        """Take one run-day."""
        hours = day.interval_minute // 60
        true_hh = day.true[:, self.hh_cols].sum(axis=1)
        water_hh = day.true[:, self.hh_w_cols].sum(axis=1)
        np.add.at(self.hourly_e, (day.interval_weekend, hours), true_hh)
        np.add.at(self.hourly_w, (day.interval_weekend, hours), water_hh)
        np.add.at(self.hourly_n, (day.interval_weekend, hours), 1.0)
        self.daily_e.append(day.true[:, self.hh_cols].sum(axis=0).astype(np.float32))
        self.day_weekend.append(bool(day.interval_weekend[len(day.interval_weekend) // 2]))
        self.day_month.append(int(day.interval_month[len(day.interval_month) // 2]))
        self.day_hours.append(day.true.shape[0] * self.world.interval_s / 3600.0)
        sums = np.asarray(np.nansum(day.reported, axis=0, dtype=np.float64))
        for (building, key), cols in self.groups.items():
            totals = self.buildings[building]
            value = float(sums[cols].sum())
            current = getattr(totals, key)
            setattr(totals, key, value if np.isnan(current) else current + value)
        lifts = self.world.cols["l"]
        self.lift_kwh += float(day.true[:, lifts].sum())
        self.lift_trips = int(self.world.trips_l.sum())
        self.days += 1

    # -- figures ------------------------------------------------------------------------

    def shape(self) -> dict[str, Any]:
        """The load-shape figures of the run, as plain numbers (None when not measurable)."""
        out: dict[str, Any] = {"households": int(self.hh_cols.size)}
        if not self.hh_cols.size or not self.daily_e:
            return out
        daily = np.stack(self.daily_e, axis=1).astype(np.float64)  # [households, days]
        full = np.array(self.day_hours) >= 23.99
        hours_total = float(np.sum(self.day_hours))
        per30 = daily.sum(axis=1) / hours_total * 24.0 * 30.0
        out["kwh_per_30_days_mean"] = float(per30.mean())
        out["kwh_per_30_days_p10"] = float(np.percentile(per30, 10))
        out["kwh_per_30_days_p90"] = float(np.percentile(per30, 90))
        mean_kw = self.hourly_e.sum(axis=0) / np.maximum(self.hourly_n.sum(axis=0), 1)
        if self.hourly_n.sum(axis=0).min() > 0:
            out["peak_hour"] = int(np.argmax(mean_kw))
            out["night_min_to_peak"] = float(mean_kw[0:6].min() / mean_kw.max())
        days_full = daily[:, full]
        wk = np.array(self.day_weekend)[full]
        if wk.any() and (~wk).any():
            out["weekend_to_weekday"] = float(days_full[:, wk].mean() / days_full[:, ~wk].mean())
        months = np.array(self.day_month)[full]
        spring = np.isin(months, (3, 4))
        summer = np.isin(months, (6, 7))
        if spring.any() and summer.any():
            out["summer_to_spring"] = float(days_full[:, summer].mean() / days_full[:, spring].mean())
        if days_full.shape[1] >= 3:
            mean = days_full.mean(axis=1)
            ok = mean > 0
            cv = days_full[ok].std(axis=1) / mean[ok]
            out["daily_cv_median"] = float(np.median(cv))
        water = self.hourly_w.sum(axis=0) / np.maximum(self.hourly_n.sum(axis=0), 1)
        if self.hh_w_cols.size and water.max() > 0:
            out["water_m3_per_30_days_mean"] = float(
                self.hourly_w.sum() / self.hh_w_cols.size / hours_total * 24.0 * 30.0)
            out["water_night_min_to_peak"] = float(water[0:6].min() / water.max())
            out["water_morning_peak_hour"] = int(np.argmax(water[5:11]) + 5)
            out["water_evening_peak_hour"] = int(np.argmax(water[17:24]) + 17)
        if self.world.cols["l"].size:
            trips = max(self.lift_trips, 1)
            out["elevator_trips_per_day"] = self.lift_trips / self.world.cols["l"].size / (hours_total / 24)
            out["elevator_kwh_per_trip"] = self.lift_kwh / trips
        return out

    def buildings_table(self) -> list[dict[str, Any]]:
        """Per building: reported energy and water, master readings and the gap."""
        rows = []
        for building, t in self.buildings.items():
            gap_e = t.electric_master - t.electric_sub
            gap_w = t.water_master - t.water_sub
            rows.append({
                "building": building,
                "electric_sub_kwh": t.electric_sub, "electric_master_kwh": t.electric_master,
                "electric_gap_kwh": gap_e,
                "electric_gap_pct": 100.0 * gap_e / t.electric_master if t.electric_master else None,
                "water_sub_m3": t.water_sub, "water_master_m3": t.water_master,
                "water_gap_m3": gap_w,
                "water_gap_pct": 100.0 * gap_w / t.water_master if t.water_master else None,
            })
        return rows

    def twin_counts(self) -> dict[str, int]:
        """Twins by kind, masters apart."""
        counts = {str(k): 0 for k in Kind}
        masters = 0
        for t in self.world.site.twins:
            if t.role == "master":
                masters += 1
            else:
                counts[str(t.kind)] += 1
        counts["master_meter"] = masters
        return counts


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


MAX_BUILDINGS_SHOWN = 12


def _millions(rate: float) -> str:
    """A rate in millions, one decimal below 10 M (so a small run does not read 0)."""
    millions = rate / 1e6
    return f"{millions:.1f}" if millions < 10 else f"{millions:,.0f}"


def _building_line(r: dict[str, Any], width: int = 10) -> str:
    return (f"  {r['building']:<{width}}{_num(r['electric_sub_kwh']):>14}{_num(r['electric_master_kwh']):>14}"
            f"{_num(r['electric_gap_kwh']):>11}{_num(r['electric_gap_pct'], 2):>8}"
            f"{_num(r['water_sub_m3']):>11}{_num(r['water_master_m3']):>11}{_num(r['water_gap_pct'], 2):>8}")


def _site_total(table: list[dict[str, Any]], site: str) -> dict[str, Any]:
    """Sum of the buildings that have masters, for the site line of the table."""
    def total(key: str) -> float:
        values = [r[key] for r in table if not np.isnan(r[key])]
        return float(np.sum(values)) if values else float("nan")

    e_sub, e_master = total("electric_sub_kwh"), total("electric_master_kwh")
    w_sub, w_master = total("water_sub_m3"), total("water_master_m3")
    e_gap = sum(r["electric_gap_kwh"] for r in table if not np.isnan(r["electric_gap_kwh"]))
    w_gap = sum(r["water_gap_m3"] for r in table if not np.isnan(r["water_gap_m3"]))
    return {"building": f"{site} (all)", "electric_sub_kwh": e_sub, "electric_master_kwh": e_master,
            "electric_gap_kwh": e_gap, "electric_gap_pct": 100 * e_gap / e_master if e_master else None,
            "water_sub_m3": w_sub, "water_master_m3": w_master,
            "water_gap_pct": 100 * w_gap / w_master if w_master else None}


def render(summary: RunSummary, timing: dict[str, float], out_dir: str) -> str:
    """The readable end-of-run report."""
    w = summary.world
    lines = [f"MeterTwin simulation of {w.site.name or w.site.id} ({w.scenario.path})", ""]
    counts = summary.twin_counts()
    lines.append("twins: " + ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in counts.items() if v)
                 + f"  ({sum(counts.values()):,} in all)")
    lines.append(f"simulated: {w.days:g} day{'' if w.days == 1 else 's'} from {w.start:%Y-%m-%d %H:%M} "
                 f"({w.site.timezone}), "
                 f"step {w.step_s}s, interval {w.interval_s // 60} min, seed {w.seed}")
    lines.append(f"speed: {_millions(timing['kernel_rate'])} M meter-steps/s in the kernels, "
                 f"{_millions(timing['wall_rate'])} M/s end to end; {timing['wall']:.1f}s wall, "
                 f"{timing['kernel_seconds']:.1f}s in kernels, "
                 f"{timing['speedup']:,.0f}x faster than real time")
    lines += ["", "per building (reported; gap = master - sub-meters = losses + theft + faults):"]
    table = summary.buildings_table()
    total = _site_total(table, w.site.id)
    width = max(10, *(len(str(r["building"])) + 2 for r in [*table, total]))
    header = f"  {'building':<{width}}{'kWh sub':>14}{'kWh master':>14}{'gap kWh':>11}{'gap %':>8}" \
             f"{'m3 sub':>11}{'m3 master':>11}{'gap %':>8}"
    lines.append(header)
    shown = table if len(table) <= MAX_BUILDINGS_SHOWN else sorted(
        table, key=lambda r: -abs(r["electric_gap_pct"] or 0.0))[:MAX_BUILDINGS_SHOWN]
    for r in shown:
        lines.append(_building_line(r, width))
    if len(shown) < len(table):
        lines.append(f"  ... the {len(shown)} largest electric gaps of {len(table)} buildings shown; "
                     "all are in summary.json")
    lines.append(_building_line(total, width))
    s = summary.shape()
    households = s.get("households", 0)
    lifts = any(s.get(key) is not None for key in ("elevator_trips_per_day", "elevator_kwh_per_trip"))
    lines += ["", f"load shape ({households:,} households, truth):" if households else
              "load shape: no households in this scenario (its figures describe homes)" + (":" if lifts else "")]

    def fig(label: str, key: str, fmt: str, goal: str) -> None:
        value = s.get(key)
        text = "n/a" if value is None else format(value, fmt)
        lines.append(f"  {label:<40}{text:>12}   {goal}")

    if households:
        fig("electricity per household, kWh/30 days", "kwh_per_30_days_mean", ",.0f", "goal 150-300")
        if "kwh_per_30_days_p10" in s:
            p10, p90 = s["kwh_per_30_days_p10"], s["kwh_per_30_days_p90"]
            lines.append(f"  {'  P10 - P90':<40}{p10:>6.0f} - {p90:<5.0f}")
        fig("evening peak hour (mean power)", "peak_hour", "d", "goal 19-21 (19:00-22:00)")
        fig("night minimum / peak", "night_min_to_peak", ".2f", "goal < 0.40")
        fig("weekend / weekday daily energy", "weekend_to_weekday", ".2f", "goal != 1")
        fig("summer (Jul-Aug) / spring (Apr-May)", "summer_to_spring", ".2f",
            "goal 1.3-2.0" + ("" if "summer_to_spring" in s else " (run through spring and summer)"))
        fig("daily energy CV per household, median", "daily_cv_median", ".2f", "goal >= 0.20")
        fig("water per household, m3/30 days", "water_m3_per_30_days_mean", ".1f", "")
        fig("water night minimum / peak", "water_night_min_to_peak", ".2f", "goal < 0.2")
        fig("water morning peak hour", "water_morning_peak_hour", "d", "")
        fig("water evening peak hour", "water_evening_peak_hour", "d", "")
    if households or lifts:
        fig("elevator trips per elevator per day", "elevator_trips_per_day", ",.0f", "")
        fig("elevator kWh per trip", "elevator_kwh_per_trip", ".3f", "")
    if summary.billing is not None:
        f = summary.billing
        revenue = ", ".join(f"{u} {fen / 100:,.0f} yuan" for u, fen in sorted(f.revenue_fen.items()))
        lines += ["", f"platform billing: revenue {revenue or 'none'}; {f.topups:,} top-ups "
                      f"({f.topup_fen / 100:,.0f} yuan); {f.cutoffs:,} cut-offs, {f.restores:,} restores; "
                      f"emergency credit used {f.emergency_uses:,} times; ledger in {out_dir}/ledger.sqlite"]
    elif w.prepaid is not None:
        topups = [int(e.value) for e in w.events if e.event == "topup"]
        cuts = sum(1 for e in w.events if e.event == "relay" and e.value == "open" and e.source.startswith("meter"))
        lines += ["", f"prepaid meters: {int(w.prepaid.active.sum()):,}; residents topped up {len(topups):,} times "
                      f"({sum(topups) / 100:,.0f} yuan); {cuts:,} cut-offs at zero credit (events.csv)"]
    kinds = sorted({str(g["kind"]) for g in w.ground_truth()})
    lines += ["", f"injections: {len(w.ground_truth())} ({', '.join(kinds) or 'none'}; "
                  f"ground truth in {out_dir}/ground_truth.csv)",
              f"history: {out_dir}"]
    return "\n".join(lines)
