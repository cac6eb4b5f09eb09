"""The theft score kernels (twin.kernels.theft_score) against the numpy code they replace,
bit for bit, NaN, infinities, signed zeros, ties, no meters, no days and one day included;
and the per-topology layout twin.theft keeps between calls."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.detect import DetectView
from twin.history import Column, Topology
from twin.kernels import theft as k
from twin.kernels import theft_score as ks
from twin.kernels.load import local_calendar
from twin.theft import (
    BAL_CAP,
    DROP_EPS_KWH,
    FLAT_CV,
    FLAT_SCORE,
    FLOORS,
    ONSET_WEIGHT,
    PATTERN,
    RUN_DAYS,
    WEIGHTS,
    Z_CAP,
    _layout,
    theft_features,
    trailing_run,
)

START = 1767196800  # 2025-12-31T16:00Z = 2026-01-01 00:00 Asia/Shanghai
#: Values that hit the rules: NaN, infinities, both zeros, the caps, the flat CV, ties.
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, Z_CAP, BAL_CAP, FLAT_CV, 0.5, 1e-300, -1e308, 1e308]


# --- the numpy code of twin.theft before these kernels: the references ---------------------

def ref_trailing_run(z: np.ndarray, days: int = RUN_DAYS) -> np.ndarray:
    filled = np.nan_to_num(z, nan=0.0)
    best = filled.copy()
    acc = filled.copy()
    for n in range(1, min(days, z.shape[1])):  # runs of n + 1 days end on days n and after
        acc[:, n:] += filled[:, :-n]
        best[:, n:] = np.maximum(best[:, n:], acc[:, n:] / math.sqrt(n + 1))
    return np.where(np.isnan(z), np.nan, best)


def ref_drop(drop: np.ndarray, peer: np.ndarray, total: np.ndarray, log_base: np.ndarray, loss: np.ndarray,
             cut: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        drop = np.minimum(drop - np.where(np.isfinite(peer), peer, 0.0), Z_CAP)
        deficit = np.exp(log_base) - DROP_EPS_KWH - total
        share = np.clip(np.where(deficit > 0, loss / np.where(deficit > 0, deficit, 1.0), 1.0), 0.0, 1.0)
        drop = np.where(np.isfinite(loss), drop * np.where(drop > 0, share, 1.0), drop)
        drop[cut] = np.minimum(drop[cut], 0.0)
        return ref_trailing_run(drop)


def ref_pattern(zero: np.ndarray, cv: np.ndarray, raw_cv: np.ndarray, lag: np.ndarray, shape: np.ndarray,
                cut: np.ndarray) -> dict[str, np.ndarray]:
    z = {}
    zero = zero.copy()
    zero[cut] = np.minimum(zero[cut], 0.0)
    z["zero"] = zero
    z["cv_high"] = cv
    with np.errstate(invalid="ignore"):
        z["cv_low"] = np.where(raw_cv < FLAT_CV, FLAT_SCORE, -cv)
    z["lag"] = -lag
    z["shape"] = -shape
    z["pattern"] = np.fmax.reduce([z[name] for name in ("zero", "cv_high", "cv_low", "lag", "shape")])
    return z


def ref_balance_score(bal: np.ndarray, med: np.ndarray, mad: np.ndarray, z: dict[str, np.ndarray],
                      onset: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    with np.errstate(all="ignore"):
        zb = (bal - med) / np.hypot(1.4826 * mad, FLOORS["bal"])
        z_bal = ref_trailing_run(np.minimum(zb, BAL_CAP))
        terms = [WEIGHTS[name] * z[name] for name in PATTERN]
        joint = np.where(z_bal > 0, (z_bal + np.maximum(np.nan_to_num(z["drop"]), 0.0)) / math.sqrt(2.0), np.nan)
        score = np.full_like(joint, -np.inf)
        source = np.full(joint.shape, -1, dtype=np.int64)
        z_onset = ONSET_WEIGHT * onset
        for i, term in enumerate(terms + [joint, z_onset]):
            better = term > score  # NaN never is
            score = np.where(better, term, score)
            source[better] = i
        score[source < 0] = np.nan
    return z_bal, z_onset, score, source


def ref_fit_medians(fits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.full(fits.shape[0], np.nan)
    slope_c = np.full(fits.shape[0], np.nan)
    for g in range(fits.shape[0]):
        ok = np.isfinite(fits[g, :, 2])
        if not ok.any():
            continue
        rms = fits[g, ok, 2]
        best = rms <= np.quantile(rms, 0.25)  # the cleanest quarter of the days
        a[g] = float(np.median(fits[g, ok, 0][best]))
        slope_c[g] = float(np.median(fits[g, ok, 1][best]))
    return a, slope_c


# --- helpers --------------------------------------------------------------------------------

def same_bits(got: np.ndarray, want: np.ndarray, zeros: bool = True) -> None:
    """Equal, NaN where NaN, and (with `zeros`) every zero of the same sign."""
    assert got.shape == want.shape and got.dtype == want.dtype
    assert np.array_equal(got, want, equal_nan=True)
    if zeros and got.dtype.kind == "f":
        assert np.array_equal(np.signbit(got[got == 0]), np.signbit(want[want == 0]))


def mixed(rng: np.random.Generator, shape: tuple[int, ...], special: float = 0.3) -> np.ndarray:
    """Normal values with a share of SPECIAL ones."""
    v = rng.normal(0.0, 3.0, size=shape)
    pick = rng.random(shape) < special
    v[pick] = rng.choice(SPECIAL, size=int(pick.sum()))
    return v


def arrays(shape: tuple[int, int]) -> st.SearchStrategy[np.ndarray]:
    n = shape[0] * shape[1]
    values = st.one_of(st.sampled_from(SPECIAL), st.floats(-20, 20, allow_nan=False, width=64))
    return st.lists(values, min_size=n, max_size=n).map(lambda v: np.array(v, dtype=np.float64).reshape(shape))


SHAPES = [(0, 0), (0, 5), (4, 0), (3, 1), (5, 2), (7, 30), (40, 9)]


def run_kernels(rng: np.random.Generator, shape: tuple[int, int]) -> None:
    """Every kernel on one random draw of `shape`, against its reference."""
    drop, peer, total, log_base, loss = (mixed(rng, shape) for _ in range(5))
    total = np.abs(total)
    cut = rng.random(shape) < 0.2
    want = ref_drop(drop, peer, total, log_base, loss, cut)
    got = np.empty(shape)
    with np.errstate(all="ignore"):
        base = np.exp(log_base)
    ks.drop_run(drop, peer, total, base, loss, cut, DROP_EPS_KWH, Z_CAP, RUN_DAYS, got)
    same_bits(got, want)

    zero, cv, raw_cv, lag, shape_z = (mixed(rng, shape) for _ in range(5))
    raw_cv[rng.random(shape) < 0.2] = 0.0
    ref = ref_pattern(zero, cv, raw_cv, lag, shape_z, cut)
    cv_low, pattern = np.empty(shape), np.empty(shape)
    ks.pattern_terms(zero, cv, raw_cv, lag, shape_z, cut, FLAT_CV, FLAT_SCORE, cv_low, pattern)
    for name, got_z in (("zero", zero), ("cv_high", cv), ("cv_low", cv_low), ("lag", lag), ("shape", shape_z)):
        same_bits(got_z, ref[name])
    same_bits(pattern, ref["pattern"], zeros=False)  # np.fmax's zero of a tie depends on where it falls

    bal, med, mad, onset = (mixed(rng, shape) for _ in range(4))
    mad = np.abs(mad)
    z = {"drop": want, **{name: ref[name] for name in PATTERN[1:]}}
    want_bal, want_onset, want_score, want_source = ref_balance_score(bal, med, mad, z, onset)
    out = [np.empty(shape), np.empty(shape), np.empty(shape), np.empty(shape, dtype=np.int64)]
    ks.balance_score(bal, med, mad, FLOORS["bal"], BAL_CAP, RUN_DAYS, np.array([WEIGHTS[p] for p in PATTERN]),
                     z["drop"], z["zero"], z["cv_high"], z["cv_low"], z["lag"], z["shape"], onset, ONSET_WEIGHT, *out)
    for got_x, want_x in zip(out, (want_bal, want_onset, want_score, want_source), strict=True):
        same_bits(got_x, want_x)


# --- the kernels ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("days", [0, 1, 2, 3, 5, 40])
def test_trailing_run_is_the_numpy_code_bit_for_bit(shape: tuple[int, int], days: int) -> None:
    """trailing_run (kernel and twin.theft's wrapper) equals the shifted-add numpy code for
    any run length, on rows with NaN, infinities and both zeros, none, one or many days."""
    rng = np.random.default_rng(sum(shape) * 7 + days)
    z = mixed(rng, shape)
    with np.errstate(all="ignore"):
        want = ref_trailing_run(z, days)
    got = np.empty(shape)
    ks.trailing_run(z, days, got)
    same_bits(got, want)
    same_bits(trailing_run(z, days), want)
    same_bits(trailing_run(np.asfortranarray(z), days), want)  # any layout in, the same numbers out


def test_trailing_run_known_values() -> None:
    """A run of equal days scores sqrt(k) times a day; a NaN day stays NaN and counts 0 in
    the runs after it."""
    got = trailing_run(np.array([[1.0, 1.0, 1.0, 1.0], [1.0, np.nan, 1.0, -2.0]]), 3)
    assert got[0].tolist() == [1.0, 2.0 / math.sqrt(2.0), 3.0 / math.sqrt(3.0), 3.0 / math.sqrt(3.0)]
    assert got[1, 0] == 1.0 and np.isnan(got[1, 1]) and got[1, 2] == max(1.0, 1.0 / math.sqrt(2.0),
                                                                           2.0 / math.sqrt(3.0))
    assert got[1, 3] == max(-2.0, -1.0 / math.sqrt(2.0), -1.0 / math.sqrt(3.0))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_score_kernels_are_the_numpy_code_bit_for_bit(shape: tuple[int, int], seed: int) -> None:
    """drop_run, pattern_terms and balance_score equal the numpy code they replace, every
    output, on draws rich in NaN, infinities, both zeros and values at the caps."""
    run_kernels(np.random.default_rng(seed * 1000 + shape[0] * 31 + shape[1]), shape)


@settings(max_examples=150, deadline=None)
@given(shape=st.sampled_from([(1, 1), (2, 3), (3, 6), (2, 8)]), seed=st.integers(0, 2**32 - 1))
def test_score_kernels_hold_on_any_draw(shape: tuple[int, int], seed: int) -> None:
    """The same on draws hypothesis picks."""
    run_kernels(np.random.default_rng(seed), shape)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), shape=st.sampled_from([(1, 1), (1, 4), (2, 3), (3, 7)]))
def test_balance_score_on_any_values(data: st.DataObject, shape: tuple[int, int]) -> None:
    """balance_score equals the numpy code on arrays hypothesis builds from the special
    values (a tie between terms goes to the first; NaN never wins)."""
    bal, med, mad, onset, drop, zero, cv, cv_low, lag, shape_z = (data.draw(arrays(shape)) for _ in range(10))
    mad = np.abs(mad)
    z = {"drop": drop, "zero": zero, "cv_high": cv, "cv_low": cv_low, "lag": lag, "shape": shape_z}
    want = ref_balance_score(bal, med, mad, z, onset)
    out = [np.empty(shape), np.empty(shape), np.empty(shape), np.empty(shape, dtype=np.int64)]
    ks.balance_score(bal, med, mad, FLOORS["bal"], BAL_CAP, RUN_DAYS, np.array([WEIGHTS[p] for p in PATTERN]),
                     drop, zero, cv, cv_low, lag, shape_z, onset, ONSET_WEIGHT, *out)
    for got_x, want_x in zip(out, want, strict=True):
        same_bits(got_x, want_x)


def test_balance_score_over_groups_sharing_a_mad() -> None:
    """The scale worked out once for a run of rows with the same MAD that day (a group's
    meters) is the scale of each: the numpy code's numbers over more rows than one task
    takes, groups of 7 to 130 meters, NaN and zero MADs among them."""
    rng = np.random.default_rng(11)
    sizes = rng.integers(7, 130, size=12)
    day_mad = np.abs(mixed(rng, (sizes.size, 5)))
    mad = np.repeat(day_mad, sizes, axis=0)
    shape = mad.shape
    bal, med, onset, drop, zero, cv, cv_low, lag, shape_z = (mixed(rng, shape) for _ in range(9))
    z = {"drop": drop, "zero": zero, "cv_high": cv, "cv_low": cv_low, "lag": lag, "shape": shape_z}
    want = ref_balance_score(bal, med, mad, z, onset)
    out = [np.empty(shape), np.empty(shape), np.empty(shape), np.empty(shape, dtype=np.int64)]
    ks.balance_score(bal, med, mad, FLOORS["bal"], BAL_CAP, RUN_DAYS, np.array([WEIGHTS[p] for p in PATTERN]),
                     drop, zero, cv, cv_low, lag, shape_z, onset, ONSET_WEIGHT, *out)
    for got_x, want_x in zip(out, want, strict=True):
        same_bits(got_x, want_x)


def test_the_first_term_wins_a_tie_and_nan_never_scores() -> None:
    """Equal terms give the first one's index; a meter-day of NaN terms only scores NaN, -1."""
    one = np.ones((1, 2))
    nan = np.full((1, 2), np.nan)
    out = [np.empty((1, 2)), np.empty((1, 2)), np.empty((1, 2)), np.empty((1, 2), dtype=np.int64)]
    ks.balance_score(nan, nan, nan, 1.0, BAL_CAP, RUN_DAYS, np.ones(6), nan, nan, 2 * one, 2 * one, one, nan, nan,
                     ONSET_WEIGHT, *out)
    assert out[2].tolist() == [[2.0, 2.0]] and out[3].tolist() == [[2, 2]]
    ks.balance_score(nan, nan, nan, 1.0, BAL_CAP, RUN_DAYS, np.ones(6), nan, nan, nan, nan, nan, nan, nan,
                     ONSET_WEIGHT, *out)
    assert np.isnan(out[2]).all() and out[3].tolist() == [[-1, -1]]


@pytest.mark.parametrize("shape", SHAPES)
def test_nan_to_num_is_numpys(shape: tuple[int, int]) -> None:
    """nan_to_num: NaN 0, infinities the largest finite floats, the rest (both zeros) as is."""
    values = mixed(np.random.default_rng(shape[0] + 10 * shape[1]), shape, special=0.6)
    got = np.empty(shape)
    ks.nan_to_num(values, got)
    same_bits(got, np.nan_to_num(values))


@pytest.mark.parametrize("n_days", [0, 1, 2, 3, 4, 5, 7, 8, 30, 31])
def test_fit_medians_are_numpy_quantile_and_median(n_days: int) -> None:
    """Per master, the medians of a and c over the days whose rms is at or below the 0.25
    quantile of the fitted rms (linear interpolation), as np.quantile and np.median give:
    unfitted days (NaN rms) left out, NaN where no day is fitted or a kept a is NaN, ties
    in the rms all kept."""
    rng = np.random.default_rng(n_days)
    fits = rng.normal(size=(12, n_days, 3))
    fits[..., 2] = np.abs(fits[..., 2])
    fits[0, :, 2] = np.nan  # never fitted
    fits[1, ::2, 2] = np.nan
    fits[2, :, 2] = 0.5  # every day ties
    fits[3, :, 2] = np.round(fits[3, :, 2], 0)  # some ties
    fits[4, :3, 0] = np.nan
    fits[5, :, 2] = np.inf
    fits[6, 1:, 2] = np.nan  # one day fitted
    fits[7, :, :2] = -0.0
    want_a, want_c = ref_fit_medians(fits)
    a, c = np.empty(12), np.empty(12)
    ks.fit_medians(fits, 0.25, a, c)
    same_bits(a, want_a)
    same_bits(c, want_c)


@settings(max_examples=200, deadline=None)
@given(rms=st.lists(st.one_of(st.just(np.nan), st.floats(0, 10, width=64)), min_size=1, max_size=40),
       seed=st.integers(0, 2**32 - 1))
def test_fit_medians_on_any_rms(rms: list[float], seed: int) -> None:
    """The same for any list of day fits hypothesis picks."""
    rng = np.random.default_rng(seed)
    fits = rng.normal(size=(1, len(rms), 3))
    fits[0, :, 2] = rms
    want_a, want_c = ref_fit_medians(fits)
    a, c = np.empty(1), np.empty(1)
    ks.fit_medians(fits, 0.25, a, c)
    same_bits(a, want_a)
    same_bits(c, want_c)


@pytest.mark.parametrize("interval_s", [900, 3600, 86400])
def test_meter_day_features_write_every_feature_but_balance(interval_s: int) -> None:
    """theft_features leaves raw uninitialised but for BAL_CORR: meter_day_features must
    write every other feature of every meter-day (a DST day and missing readings included)."""
    per_day = 86400 // interval_s
    rng = np.random.default_rng(interval_s)
    start = 1774713600  # 2026-03-28T16:00Z: 2026-03-29 00:00 Europe/Berlin, DST starts that day
    n = 9 * per_day
    m = rng.gamma(2.0, 0.1, size=(4, n)).astype(np.float32)
    m[rng.random(m.shape) < 0.1] = np.nan
    m[1, : 2 * per_day] = np.nan
    cal = local_calendar(start, n, interval_s, "Europe/Berlin")
    out = np.full((6, 3, len(cal.days)), 12345.0)
    k.meter_day_features(m, np.array([0, 1, 3], dtype=np.int64), cal.day_bounds, cal.slot, cal.n_slots,
                         cal.interval_h, 4, out)
    assert (out[:k.BAL_CORR] != 12345.0).all()
    assert (out[k.BAL_CORR] == 12345.0).all()


# --- the layout kept per topology -----------------------------------------------------------

def _site(flats: int = 6, water: bool = True) -> Topology:
    cols = [Column("B1.mm", "electric_meter", "electric", "kWh", building="B1", role="master"),
            Column("B2-00.em", "electric_meter", "electric", "kWh", building="B2", room="B2-00")]
    for f in range(flats):
        room = f"B1-{f:02d}"
        cols.append(Column(f"{room}.em", "electric_meter", "electric", "kWh", building="B1", room=room,
                           master="B1.mm"))
        if water and f % 2 == 0:
            cols.append(Column(f"{room}.wm", "water_meter", "water", "m3", building="B1", room=room))
    cols.append(Column("X.em", "electric_meter", "electric", "kWh"))  # no building, no master
    cols.append(Column("B1.sc", "shared_circuit", "electric", "kWh", building="B1", master="B1.mm"))
    return Topology("T", "Asia/Shanghai", 900, cols)


def _view(topology: Topology, days: int = 10, seed: int = 3) -> DetectView:
    rng = np.random.default_rng(seed)
    n = days * 96
    matrix = rng.gamma(2.0, 0.05, size=(len(topology.columns), n)).astype(np.float32)
    matrix[0] = matrix[1:].sum(axis=0) * 1.02 + 0.01
    return DetectView(matrix, topology, local_calendar(START, n, 900, "Asia/Shanghai"))


def test_layout_is_the_topology_read_again() -> None:
    """The layout kept for a topology holds what the per-call code read from its columns:
    the electric sub-meters, the master rows, peer groups (master, else building, else
    none), feeds and the room's one water meter."""
    topology = _site()
    cols = topology.columns
    layout = _layout(topology)
    meters = [i for i, c in enumerate(cols) if c.kind == "electric_meter" and c.role == "sub"]
    assert layout.meters.tolist() == meters
    assert layout.row_of == {c: j for j, c in enumerate(meters)}
    assert layout.masters.tolist() == [0]
    assert layout.rrow.tolist() == [-1 if cols[i].master is None else 0 for i in meters]
    assert layout.feed_cols.tolist() == [i for i, c in enumerate(cols) if c.master == "B1.mm"]
    # numbered as first met: B2-00.em's building, then B1.mm's flats; X.em is in none
    groups = [[0], [j for j in range(len(meters)) if cols[meters[j]].master == "B1.mm"]]
    assert [layout.group_rows[a:b].tolist() for a, b in zip(layout.group_ptr[:-1], layout.group_ptr[1:],
                                                            strict=True)] == groups
    assert [cols[w].room if w >= 0 else None for w in layout.water] == [
        cols[i].room if cols[i].room and int(cols[i].room[-2:]) % 2 == 0 and cols[i].master else None
        for i in meters]


def test_layout_is_kept_and_worked_out_again_when_the_columns_change() -> None:
    """The same topology gives the same layout object; a column added, or replaced, gives a
    new one, and the features follow the new columns."""
    topology = _site()
    first = _layout(topology)
    assert _layout(topology) is first
    view = _view(topology)
    before = theft_features(view)
    topology.columns.append(Column("B1-99.em", "electric_meter", "electric", "kWh", building="B1", room="B1-99",
                                   master="B1.mm"))
    second = _layout(topology)
    assert second is not first and second.meters.size == first.meters.size + 1
    grown = _view(topology)
    assert theft_features(grown).meters.tolist() == second.meters.tolist()
    topology.columns[-1] = Column("B1-99.em", "water_meter", "water", "m3", building="B1", room="B1-99")
    third = _layout(topology)
    assert third is not second and third.meters.tolist() == first.meters.tolist()
    again = theft_features(_view(topology))
    assert again.meters.tolist() == before.meters.tolist()


def test_theft_features_do_not_share_the_layouts_arrays() -> None:
    """A caller writing into the meters it was given cannot change the next call's."""
    topology = _site()
    view = _view(topology)
    f = theft_features(view)
    f.meters[:] = 0
    assert theft_features(view).meters.tolist() == _layout(topology).meters.tolist() != f.meters.tolist()
