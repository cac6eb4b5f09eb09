"""Theft detection: one suspicion score per electric sub-meter per site-local day.

`theft_scores(view)` returns {"theft": DayScores}. The score is built from the features of
`twin.kernels.theft` in three steps, with fixed constants (set once on the simulator's
demo-theft scenario, seeds 1-6, 101, 202 and 303; never fitted at run time, never to a run's
ground truth):

1. Each pattern feature becomes a one-sided robust z-score against the meter's own
   `WINDOW` days before (median and MAD, `trailing_robust_z`), signed so that higher is
   more suspicious: the day total falling (DROP: log of the total, then less the median
   DROP of the meter's building that day, so a cold day that raises every flat is not
   read as theft by the others), the longest off run growing (ZERO), the day's spread
   rising or collapsing (CV_HIGH, CV_LOW), the quarter-hour autocorrelation falling (LAG),
   the day's shape departing from the meter's usual day (SHAPE).
   Where the flat's room has a water meter, DROP compares the electricity's total divided
   by the water's to the power `WATER_BETA` (`_drop_z`): a household at home less, or
   away, uses less of both; a meter that hides energy reads less electricity only.
2. Balance localisation (BAL): how closely the meter's moves follow its master meter's
   unexplained energy (`twin.kernels.theft_features.balance_block_z`: Fisher z of the
   correlation of first differences per 3-hour block, best sum over the day's last
   blocks), as a z-score against the other meters of the same master that day (median
   and MAD). A meter that explains the building's loss stands out from its neighbours.
3. The theft score is the largest of: each pattern z (DROP, ZERO, CV_HIGH, CV_LOW, LAG,
   SHAPE) times its weight in `WEIGHTS`, and the joint balance evidence
   `(BAL + max(DROP, 0)) / sqrt(2)` when BAL is above 0 (a share of the load stolen shows
   both as the meter explaining the loss and as its own total falling), and the onset
   evidence times `ONSET_WEIGHT` (a theft that starts in the day's last 3 hours: the
   reading fell as the master's unexplained energy rose by about as much). The evidence
   line names the term that gave the score, with its figures.

At one reading a day only DROP and ZERO exist (and BAL when masters are kept, though it is
not computed at daily resolution): h5 and h6 keep the day's total and cannot be seen.
Limits. The baseline is the meter's own past: a theft that goes on for more than about a
third of `WINDOW` fills that past and its score fades (h6 after 4 to 6 days in a test;
the meter was flagged long before). Relay events (supply cut by the prepaid policy) excuse
a fall in the total and an off run on the days they cover.

Only electric sub-meters are scored (the thefts of Jokar et al. act on electricity
meters); every other column is NaN.

Speed: the features and z-scores come from the kernels of `twin.kernels.theft` and
`twin.kernels.theft_features`; the steps above that combine them per meter-day run in
`twin.kernels.theft_score`, the numbers of the numpy expressions they replaced bit for bit.
What a topology's columns say (the meters scored, masters and feeds, peer groups, room
water) is worked out once per topology (`_layout`) and kept while its columns stay the same.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from twin.detect import DayScores, DetectView
from twin.history import Column, Topology
from twin.kernels import theft as k
from twin.kernels import theft_features as kf
from twin.kernels import theft_score as ks

#: Days of own history each meter-day is compared with.
WINDOW = 28
#: Days per block that share one reference (the WINDOW days before the block).
REF_STEP = 7
#: Fewest days behind a block before it is compared with its past (else the start-up rule).
MIN_REF = 5
#: Least robust scale per feature (the z-score's floor), in the feature's units. BAL's is
#: added in quadrature to its neighbours' spread: balance_block_z is about N(0, 1) for a
#: meter whose moves are its own, so a day its neighbours happen to agree closely cannot
#: make a small lead look large.
FLOORS = {"drop": 0.05, "zero": 1.0, "cv": 0.15, "lag": 0.05, "shape": 0.05, "bal": 1.0}
#: Weight of each pattern z in the maximum (1: as is).
WEIGHTS = {"drop": 1.0, "zero": 1.0, "cv_high": 1.0, "cv_low": 1.0, "lag": 1.0, "shape": 1.0}
#: A sub-daily day whose spread / mean is below this is flat (every reading the same: h5),
#: which no meter measuring a real load reports; it scores FLAT_SCORE.
FLAT_CV = 0.01
FLAT_SCORE = 10.0
#: Score at or above which a meter-day raises a theft alarm.
THRESHOLD = 3.5
#: Added to a day's total (kWh) before taking its log, so an empty day is finite.
DROP_EPS_KWH = 0.05
#: Cap on one day's DROP and BAL z before runs add up: one odd day (a day away) stays one day.
Z_CAP = 2.5
BAL_CAP = 8.0

#: The room's water as a witness of the day (see _drop_z): exponent on its day total,
#: m3 added before the log (a day without water is finite), and the robust z above its own
#: usual beyond which the water is not trusted (a leak, a misread register).
WATER_BETA = 0.7
WATER_EPS_M3 = 0.01
WATER_GATE = 3.0

#: Weight of the onset evidence (twin.kernels.theft_features, in [0, 1]) in the maximum:
#: a reading that fell as the residual rose by as much, carrying all the residual's
#: movement in the day's last 3 hours, scores 5.
ONSET_WEIGHT = 5.0

#: Most pattern suspects fitted out of one master-day's residual before localising.
MAX_SUSPECTS = 4
#: Longest run of trailing days whose mean z (times sqrt of its length) DROP and BAL take.
RUN_DAYS = 3
PATTERN = ("drop", "zero", "cv_high", "cv_low", "lag", "shape")


def trailing_run(z: np.ndarray, days: int = RUN_DAYS) -> np.ndarray:
    """Per meter-day, the best evidence of a run of days ending that day: the largest over
    k = 1..days of sum(z[d - k + 1 .. d]) / sqrt(k) (a shift that lasts adds up; noise
    averages out). NaN days count as 0 inside a run; a NaN day itself stays NaN."""
    z = np.ascontiguousarray(z, dtype=np.float64)
    out = np.empty_like(z)
    ks.trailing_run(z, days, out)
    return out


@dataclass
class TheftFeatures:
    """The features and z-scores behind a theft score, for evidence and for tests."""

    meters: np.ndarray  #: int64 [meters]: columns scored
    raw: np.ndarray  #: float64 [6, meters, days]: twin.kernels.theft.FEATURES
    z: dict[str, np.ndarray]  #: float64 [meters, days] per name in PATTERN plus "bal" and "onset" (weighted)
    score: np.ndarray  #: float64 [meters, days]: the combined score
    source: np.ndarray  #: int64 [meters, days]: which term gave it (index in PATTERN, 6: balance, 7: onset, -1 none)
    loss_kwh: np.ndarray  #: float64 [meters, days]: the meter's master's unexplained energy that day (NaN none)


@dataclass(frozen=True)
class _Layout:
    """What theft_features reads of a topology, worked out once per topology (`_layout`):
    the live task scores the same topology every few minutes."""

    columns: list[Column]  #: the topology's columns it was worked out from (the cache's check)
    meters: np.ndarray  #: int64 [meters]: the electric sub-meters, the columns scored
    row_of: dict[int, int]  #: column -> its row of `meters`
    masters: np.ndarray  #: int64 [masters]: the electric master meters
    feed_ptr: np.ndarray  #: int64 [masters + 1]: CSR offsets into feed_cols
    feed_cols: np.ndarray  #: int64: the columns each master feeds
    rrow: np.ndarray  #: int64 [meters]: the row of `masters` feeding each meter, -1 none
    group_ptr: np.ndarray  #: int64 [groups + 1]: CSR offsets into group_rows
    group_rows: np.ndarray  #: int64: rows of `meters` by peer group (its master, else its building)
    water: np.ndarray  #: int64 [meters]: room_water of each meter


def _work_out_layout(cols: list[Column]) -> _Layout:
    meters = np.array([i for i, c in enumerate(cols) if c.kind == "electric_meter" and c.role == "sub"],
                      dtype=np.int64)
    index = {c.id: i for i, c in enumerate(cols)}
    masters = [i for i, c in enumerate(cols) if c.role == "master" and c.utility == "electric"]
    row_of = {cols[m].id: g for g, m in enumerate(masters)}
    feeds: list[list[int]] = [[] for _ in masters]
    for i, c in enumerate(cols):
        if c.master is not None and c.master in row_of and c.master in index:
            feeds[row_of[c.master]].append(i)
    feed_ptr = np.zeros(len(masters) + 1, dtype=np.int64)
    feed_ptr[1:] = np.cumsum([len(f) for f in feeds])
    rrow = np.array([row_of.get(cols[i].master or "", -1) for i in meters], dtype=np.int64)
    # group of each meter for peer terms: its master, else its building
    labels: dict[str, int] = {}
    group = np.array([labels.setdefault(cols[i].master or f"building:{cols[i].building}", len(labels))
                      if (cols[i].master or cols[i].building) else -1 for i in meters], dtype=np.int64)
    order = np.argsort(group, kind="stable")
    order = order[group[order] >= 0]
    counts = np.bincount(group[order], minlength=int(group.max()) + 1 if group.size else 0)
    group_ptr = np.zeros(counts.size + 1, dtype=np.int64)
    group_ptr[1:] = np.cumsum(counts)
    return _Layout(list(cols), meters, {int(c): j for j, c in enumerate(meters)}, np.array(masters, dtype=np.int64),
                   feed_ptr, np.array([c for f in feeds for c in f], dtype=np.int64), rrow, group_ptr,
                   order.astype(np.int64), _room_water(cols, meters))


_LAYOUTS: dict[int, _Layout] = {}  # by id of the topology; checked against its columns
_LAYOUTS_KEPT = 8
_LAYOUTS_LOCK = threading.Lock()


def _layout(topology: Topology) -> _Layout:
    """The topology's layout, worked out again only when its columns changed (a new
    topology with the id of one gone is checked the same way)."""
    with _LAYOUTS_LOCK:
        cached = _LAYOUTS.get(id(topology))
    if cached is not None and cached.columns == topology.columns:
        return cached
    layout = _work_out_layout(topology.columns)
    with _LAYOUTS_LOCK:
        _LAYOUTS.pop(id(topology), None)
        while len(_LAYOUTS) >= _LAYOUTS_KEPT:
            del _LAYOUTS[next(iter(_LAYOUTS))]
        _LAYOUTS[id(topology)] = layout
    return layout


def _balance(view: DetectView, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """Per master: the unexplained energy per interval (NaN rows where it cannot be fitted)
    and per day."""
    masters = layout.masters
    n_t = view.matrix.shape[1]
    residual = np.full((len(masters), n_t), np.nan)
    if not masters.size or view.calendar.n_slots == 1:
        return residual, np.zeros((len(masters), len(view.calendar.days)))
    fed = np.empty((len(masters), n_t))
    k.balance_sums(view.matrix, layout.feed_ptr, layout.feed_cols, fed)
    master = view.matrix[masters].astype(np.float64)
    fits = np.empty((len(masters), len(view.calendar.days), 3))
    k.balance_day_fits(master, fed, view.calendar.day_bounds, fits)
    a = np.empty(len(masters))
    slope_c = np.empty(len(masters))
    ks.fit_medians(fits, 0.25, a, slope_c)  # the median fit of the cleanest quarter of the days
    fitted = np.isfinite(a)
    k.balance_residual(master, fed, np.where(fitted, a, 0.0), np.where(fitted, slope_c, 0.0), residual)
    residual[~fitted] = np.nan
    if not len(view.calendar.days):
        return residual, np.zeros((len(masters), 0))
    filled = np.empty_like(residual)
    ks.nan_to_num(residual, filled)
    return residual, np.add.reduceat(filled, view.calendar.day_bounds[:-1], axis=1)


def _z(values: np.ndarray, floor: float) -> np.ndarray:
    return _z_med(values, floor)[0]


def _z_med(values: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    out = np.empty_like(values)
    med = np.empty_like(values)
    k.trailing_robust_z(np.ascontiguousarray(values), WINDOW, REF_STEP, MIN_REF, floor, out, med)
    return out, med


def supply_cut(view: DetectView, meters: np.ndarray, row: dict[int, int] | None = None) -> np.ndarray:
    """bool [meters, days]: the meter's relay was open (supply cut) at some time that day,
    from the view's relay events (a relay open before the first event of a meter is not
    known here). `row`: column -> row of `meters`, when known."""
    n_days = len(view.calendar.days)
    out = np.zeros((meters.size, n_days), dtype=np.bool_)
    if not view.events:
        return out
    if row is None:
        row = {int(c): j for j, c in enumerate(meters)}
    opened: dict[int, int] = {}
    for e in view.events:
        if e.kind != "relay" or e.column not in row:
            continue
        if e.value == "open":
            opened.setdefault(e.column, e.t_utc)
        elif e.column in opened:
            a = max(view.day_of(opened.pop(e.column)), 0)
            b = min(view.day_of(e.t_utc), n_days - 1)
            out[row[e.column], a:b + 1] = True
    for column, t in opened.items():
        out[row[column], max(view.day_of(t), 0):] = True
    return out


def _by_group_median(values: np.ndarray, layout: _Layout, with_mad: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per meter-day: the median and MAD of `values` over the meters of its group that day
    (NaN for meters in no group); without `with_mad` the MAD is an empty array."""
    every = layout.group_rows.size == values.shape[0]  # the kernel writes the rows of every group
    med = np.empty_like(values) if every else np.full_like(values, np.nan)
    mad = (np.empty_like(values) if every else np.full_like(values, np.nan)) if with_mad else np.empty((0, 0))
    k.group_median_mad(np.ascontiguousarray(values), layout.group_ptr, layout.group_rows, med, mad, with_mad)
    return med, mad


def _explain_away(view: DetectView, meters: np.ndarray, rrow: np.ndarray, residual: np.ndarray,
                  pattern: np.ndarray) -> np.ndarray:
    """The residual with the moves of each master-day's pattern suspects (at most
    `MAX_SUSPECTS`, strongest first, pattern z at or above THRESHOLD) fitted out."""
    with np.errstate(invalid="ignore"):
        hit = (pattern >= THRESHOLD) & (rrow >= 0)[:, None]
    if not hit.any():
        return residual
    js, ds = np.nonzero(hit)
    order = np.lexsort((-pattern[js, ds], ds, rrow[js]))
    js, ds = js[order], ds[order]
    pairs: list[tuple[int, int]] = []
    cols: list[int] = []
    ptr = [0]
    for j, d in zip(js.tolist(), ds.tolist(), strict=True):
        key = (int(rrow[j]), d)
        if not pairs or pairs[-1] != key:
            pairs.append(key)
            ptr.append(ptr[-1])
        if ptr[-1] - ptr[-2] < MAX_SUSPECTS:
            cols.append(int(meters[j]))
            ptr[-1] += 1
    out = residual.copy()
    k.clean_residual(view.matrix, residual, view.calendar.day_bounds, np.array(pairs, dtype=np.int64),
                     np.array(ptr, dtype=np.int64), np.array(cols, dtype=np.int64), out)
    return out


def room_water(view: DetectView, meters: np.ndarray) -> np.ndarray:
    """int64 [meters]: the column of the water sub-meter in each electric meter's room
    (-1 where the room has none, or more than one)."""
    return _room_water(view.topology.columns, meters)


def _room_water(cols: list[Column], meters: np.ndarray) -> np.ndarray:
    water: dict[str, list[int]] = {}
    for i, c in enumerate(cols):
        if c.kind == "water_meter" and c.role == "sub" and c.room:
            water.setdefault(c.room, []).append(i)
    return np.array([water[r][0] if (r := cols[i].room) and len(water.get(r, ())) == 1 else -1 for i in meters],
                    dtype=np.int64)


def _drop_z(view: DetectView, partner: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The day total's robust z against the meter's own past (higher: lower than usual) and
    the log of the total that past expects. Where the room's water meter read the whole
    day, and no more than `WATER_GATE` robust z above its own usual (a leak would read as a
    fall of the electricity), the total is first divided by the water's day total to the
    power `WATER_BETA`: the household's day-to-day swings (more at home, away) move both."""
    log_total = np.log(total + DROP_EPS_KWH)
    drop, log_base = _z_med(log_total, FLOORS["drop"])
    has = partner >= 0
    if not has.any() or not total.size:
        return np.negative(drop, out=drop), log_base
    water = np.full_like(total, np.nan)
    sums = np.empty((int(has.sum()), total.shape[1]))
    kf.row_day_totals(view.matrix, partner[has], view.calendar.day_bounds, sums)
    with np.errstate(invalid="ignore"):
        water[has] = np.where(sums >= 0.0, np.log(np.maximum(sums, 0.0) + WATER_EPS_M3), np.nan)
    water_z = _z(water, FLOORS["drop"])
    adjusted, adjusted_base = _z_med(log_total - WATER_BETA * water, FLOORS["drop"])
    with np.errstate(invalid="ignore"):
        use = np.isfinite(adjusted) & (water_z <= WATER_GATE)
    return -np.where(use, adjusted, drop), np.where(use, adjusted_base + WATER_BETA * water, log_base)


def theft_features(view: DetectView) -> TheftFeatures:
    """Features, z-scores and the combined score for every electric sub-meter and day."""
    return _features(view, _layout(view.topology))


def _features(view: DetectView, layout: _Layout) -> TheftFeatures:
    cal = view.calendar
    meters = layout.meters
    rrow = layout.rrow
    n_days = len(cal.days)
    residual, daily_loss = _balance(view, layout)
    if residual.shape[0] == 0:
        residual = np.zeros((1, view.matrix.shape[1]))
    raw = np.empty((6, meters.size, n_days))
    raw[k.BAL_CORR] = np.nan  # meter_day_features writes every other feature
    if meters.size and n_days:
        k.meter_day_features(view.matrix, meters, cal.day_bounds, cal.slot, cal.n_slots, cal.interval_h, WINDOW,
                             raw)
    z: dict[str, np.ndarray] = {}
    cut = supply_cut(view, meters, layout.row_of)
    total = np.maximum(raw[k.TOTAL], 0.0)
    drop, log_base = _drop_z(view, layout.water, total)
    peer, _ = _by_group_median(drop, layout, with_mad=False)
    with_none = np.full((daily_loss.shape[0] + 1, n_days), np.nan)  # its last row: meters without a master
    with_none[:-1] = daily_loss
    loss = with_none[rrow]
    # DROP less its group's; with a master, a fall the building's unexplained energy does not
    # match is the flat's own (a day away): scaled by the share of it the loss explains
    z["drop"] = np.empty_like(drop)
    ks.drop_run(drop, peer, total, np.exp(log_base), loss, cut, DROP_EPS_KWH, Z_CAP, RUN_DAYS, z["drop"])
    zero = _z(raw[k.ZERO_H], FLOORS["zero"])
    cv = _z(raw[k.CV], FLOORS["cv"])
    lag = _z(raw[k.LAG1], FLOORS["lag"])
    shape = _z(raw[k.PROFILE_CORR], FLOORS["shape"])
    cv_low = np.empty_like(cv)
    pattern = np.empty_like(cv)
    # a flat day (h5) has no shape or autocorrelation to compare: its CV_LOW is FLAT_SCORE
    ks.pattern_terms(zero, cv, raw[k.CV], lag, shape, cut, FLAT_CV, FLAT_SCORE, cv_low, pattern)
    z["zero"], z["cv_high"], z["cv_low"], z["lag"], z["shape"] = zero, cv, cv_low, lag, shape
    onset = np.full((meters.size, n_days), np.nan)
    if meters.size and n_days and (rrow >= 0).any():
        cleaned = _explain_away(view, meters, rrow, residual, pattern)
        n_blocks = kf.blocks_per_day(cal.n_slots)
        kf.balance_block_z(view.matrix, meters, rrow, cleaned, cal.day_bounds,
                           kf.block_of_interval(cal.slot, cal.n_slots, n_blocks), n_blocks, raw[k.BAL_CORR], onset)
    bal = raw[k.BAL_CORR]
    med, mad = _by_group_median(bal, layout)
    z["bal"] = np.empty_like(bal)
    z["onset"] = np.empty_like(bal)
    score = np.empty_like(bal)
    source = np.empty(bal.shape, dtype=np.int64)
    ks.balance_score(bal, med, mad, FLOORS["bal"], BAL_CAP, RUN_DAYS, np.array([WEIGHTS[name] for name in PATTERN]),
                     z["drop"], zero, cv, cv_low, lag, shape, onset, ONSET_WEIGHT, z["bal"], z["onset"], score, source)
    return TheftFeatures(meters.copy(), raw, z, score, source, loss)


def theft_scores(view: DetectView) -> dict[str, DayScores]:
    """{"theft": DayScores}: the combined score (module docstring) per column and day."""
    layout = _layout(view.topology)
    f = _features(view, layout)
    scores = np.full((view.matrix.shape[0], len(view.calendar.days)), np.nan, dtype=np.float32)
    scores[f.meters] = f.score  # cast to float32 as astype does
    row_of = layout.row_of

    def evidence(column: int, day: int) -> str:
        j = row_of.get(column)
        if j is None:
            return "not scored for theft (only electric sub-meters are)"
        src = int(f.source[j, day])
        total = f.raw[k.TOTAL, j, day]
        base = f"day total {total:.2f} kWh"
        if src < 0:
            return f"no theft evidence ({base})"
        if src == len(PATTERN):
            return (f"moves with its master's unexplained energy ({f.loss_kwh[j, day]:.2f} kWh that day): "
                    f"correlation {f.raw[k.BAL_CORR, j, day]:.2f}, z {f.z['bal'][j, day]:.1f} against its "
                    f"neighbours; total z {f.z['drop'][j, day]:.1f} below its usual; score {f.score[j, day]:.1f}")
        if src == len(PATTERN) + 1:
            return (f"fell as its master's unexplained energy rose by about as much, late in the day (the start of "
                    f"under-reporting?): onset evidence {f.z['onset'][j, day] / ONSET_WEIGHT:.2f}; "
                    f"score {f.score[j, day]:.1f}")
        name = PATTERN[src]
        what = {
            "drop": f"{base}, {f.z['drop'][j, day]:.1f} robust z below its own last {WINDOW} days",
            "zero": f"off for {f.raw[k.ZERO_H, j, day]:.1f} h in a row, z {f.z['zero'][j, day]:.1f}",
            "cv_high": f"spread/mean {f.raw[k.CV, j, day]:.2f}, z {f.z['cv_high'][j, day]:.1f} above its usual",
            "cv_low": f"spread/mean {f.raw[k.CV, j, day]:.2f}: flattened, z {f.z['cv_low'][j, day]:.1f}",
            "lag": f"quarter-hour autocorrelation {f.raw[k.LAG1, j, day]:.2f}, z {f.z['lag'][j, day]:.1f} "
                   "below its usual (random readings)",
            "shape": f"correlation with its usual day {f.raw[k.PROFILE_CORR, j, day]:.2f}, "
                     f"z {f.z['shape'][j, day]:.1f} (reordered or flattened day)",
        }[name]
        return f"{what}; score {f.score[j, day]:.1f}"

    return {"theft": DayScores("theft", scores, THRESHOLD, evidence)}


__all__ = ["FLOORS", "THRESHOLD", "TheftFeatures", "WEIGHTS", "WINDOW", "theft_features", "theft_scores"]
