"""Retention: months that leave the raw window are rolled up to 15 minutes, hours and UTC
days (sums; NaN only where every reading is missing; missing counts kept), reads of old
ranges are served from the finest level kept and say so, and raw files go only once every
level is in place."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from twin.history import Column, HistoryError, HistoryWriter, Topology, open_history, rollup_levels

JAN = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
FEB = int(datetime(2026, 2, 1, tzinfo=UTC).timestamp())
MAR = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp())
APR = int(datetime(2026, 4, 1, tzinfo=UTC).timestamp())


def topology(n: int, interval_s: int) -> Topology:
    columns = [Column(f"B01-01-{i:02d}.em", "electric_meter", "electric", "kWh", "B01", 1) for i in range(n)]
    return Topology("S1", "UTC", interval_s, columns)


def readings(rows: int, cols: int, seed: int) -> np.ndarray:
    """Interval values with scattered gaps, a meter offline for a whole day and an hour
    where every meter is missing."""
    rng = np.random.default_rng(seed)
    block = rng.gamma(0.6, 0.15, (rows, cols)).astype(np.float32)
    block[rng.random((rows, cols)) < 0.1] = np.nan
    block[: rows // 4, 1] = np.nan
    block[rows // 2: rows // 2 + 12] = np.nan
    return block


def reference_sum(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy: sums of k rows skipping NaN, NaN where all k are NaN; missing counts."""
    cells = block.reshape(-1, k, block.shape[1]).astype(np.float64)
    missing = np.isnan(cells).sum(axis=1)
    sums = np.nansum(cells, axis=1)
    sums[missing == k] = np.nan
    return sums.astype(np.float32), missing


def test_levels_follow_the_interval():
    """A history keeps the levels of 15 min, hour and day that are multiples of its interval."""
    assert rollup_levels(60) == rollup_levels(300) == rollup_levels(900) == (900, 3600, 86400)
    assert rollup_levels(600) == rollup_levels(1800) == (3600, 86400)
    assert rollup_levels(86400) == (86400,)


def test_a_month_out_of_the_window_is_rolled_up_and_reads_the_same(tmp_path: Path):
    """Jan to Mar at 5 minutes; a writer opened with raw_days=31 (newest reading Apr 1) turns Jan and Feb into
    roll-ups (raw files and first_row sidecars gone), March stays raw. Old ranges read at
    15 min, hour and day exactly as the raw did, and as plain numpy sums them; the missing
    counts too; a default read of them is refused naming the level; read_finest says 900."""
    topo = topology(3, 300)
    rows = (APR - JAN) // 300
    block = readings(rows, 3, 1)
    block[:40] = np.nan  # first interval written is row 40 (the file still starts at row 0)
    with HistoryWriter(tmp_path, topo, raw_days=None) as writer:
        writer.append(JAN + 40 * 300, block[40:])
    history = open_history(tmp_path)
    before = {step: (history.read(JAN, APR, interval_s=step), history.read_missing(JAN, APR, interval_s=step))
              for step in (900, 3600, 86400)}
    for step, (values, missing) in before.items():
        ref_values, ref_missing = reference_sum(block, step // 300)
        np.testing.assert_allclose(values, ref_values.T, rtol=1e-6)
        np.testing.assert_array_equal(np.isnan(values), np.isnan(ref_values.T))
        np.testing.assert_array_equal(missing, ref_missing.T)
    with HistoryWriter(tmp_path, topo, raw_days=31) as writer:  # opening rolls up: the newest reading is Apr 1
        assert writer.roll_up(APR) == []
    assert history.months() == ["2026-03"]
    assert history.rolled_up_months() == ["2026-01", "2026-02"]
    assert sorted(p.name for p in (tmp_path / "rollups" / "900").iterdir()) == [
        "2026-01.f32", "2026-01.missing.u16", "2026-02.f32", "2026-02.missing.u16"]
    for step, (values, missing) in before.items():
        np.testing.assert_array_equal(history.read(JAN, APR, interval_s=step), values)
        np.testing.assert_array_equal(history.read_missing(JAN, APR, interval_s=step), missing)
    with pytest.raises(HistoryError, match=r"2026-02 is kept at 900s.*interval_s a multiple of 900"):
        history.read(FEB, MAR + 3600)
    np.testing.assert_array_equal(history.read(MAR, APR), block[(MAR - JAN) // 300:].T)  # raw still there
    assert history.resolution(FEB, APR) == 900 and history.resolution(MAR, APR) == 300
    finest, step = history.read_finest(FEB - 86400, MAR + 86400, columns=["B01-01-02.em"])
    assert step == 900
    np.testing.assert_array_equal(finest, before[900][0][2:, (FEB - 86400 - JAN) // 900:(MAR + 86400 - JAN) // 900])
    assert history.start == JAN + (40 // 3) * 900  # at the level kept: the 15 minutes holding row 40
    assert history.end == APR


def test_crash_mid_roll_up_leaves_the_raw_month_served_and_redone(tmp_path: Path):
    """A writer killed after writing the roll-ups but before deleting the raw file (or with
    a temporary file half written) leaves a month whose raw file is still what readers use;
    the next writer rolls it up again, to the same files."""
    topo = topology(2, 900)
    block = readings((FEB - JAN) // 900 + 96, 2, 2)
    with HistoryWriter(tmp_path, topo, raw_days=None) as writer:
        writer.append(JAN, block)
    raw = tmp_path / "intervals" / "2026-01.f32"
    kept = raw.read_bytes()
    HistoryWriter(tmp_path, topo, raw_days=1).close()  # opening rolls up what left the window
    assert open_history(tmp_path).rolled_up_months() == ["2026-01"]
    rolled = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "rollups").rglob("*.*")}
    raw.write_bytes(kept)  # the state a kill between the last rename and the unlink leaves
    (tmp_path / "rollups" / "3600" / "2026-01.f32.tmp").write_bytes(b"\x00" * 10)
    history = open_history(tmp_path)
    assert history.months() == ["2026-01", "2026-02"] and history.rolled_up_months() == []
    np.testing.assert_array_equal(history.read(JAN, FEB), block[:(FEB - JAN) // 900].T)
    with HistoryWriter(tmp_path, topo, raw_days=1):  # opening rolls up what left the window
        pass
    assert history.months() == ["2026-02"]
    assert {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "rollups").rglob("*.*")
            if not p.name.endswith(".tmp")} == rolled


def test_a_writer_rolls_up_as_new_months_begin(tmp_path: Path):
    """Appending month after month with raw_days=40 rolls each month up once its end is 40
    days behind the newest reading, with no call; the default window (400 days) keeps all."""
    topo = topology(2, 3600)
    span = readings((APR - JAN) // 3600, 2, 3)
    with HistoryWriter(tmp_path / "short", topo, raw_days=40) as writer:
        for day in range(0, (APR - JAN) // 86400, 7):
            writer.append(JAN + day * 86400, span[day * 24:(day + 7) * 24])
    short = open_history(tmp_path / "short")
    assert short.rolled_up_months() == ["2026-01"] and short.months() == ["2026-02", "2026-03"]
    np.testing.assert_array_equal(short.read(JAN, APR, interval_s=86400),
                                  reference_sum(span, 24)[0].T)
    with HistoryWriter(tmp_path / "long", topo) as writer:
        writer.append(JAN, span)
    assert open_history(tmp_path / "long").rolled_up_months() == []


def test_writes_into_a_rolled_up_month_are_refused(tmp_path: Path):
    """A late reading or a block for a month kept only as roll-ups is refused naming the
    month, and nothing of the call is written (not even its cells for raw months)."""
    topo = topology(2, 900)
    with HistoryWriter(tmp_path, topo, raw_days=20) as writer:
        writer.append(JAN, readings((MAR - JAN) // 900, 2, 4))
        writer.roll_up(MAR)
        with pytest.raises(HistoryError, match="2026-01: its raw readings left the 20-day window"):
            writer.write_cells(["B01-01-00.em", "B01-01-00.em"], [MAR - 900, JAN], [5.0, 5.0])
        with pytest.raises(HistoryError, match="2026-01"):
            writer.append(JAN + 86400, np.ones((1, 2), dtype=np.float32))
    assert open_history(tmp_path).read(MAR - 900, MAR)[0, 0] != 5.0


def test_awkward_intervals(tmp_path: Path):
    """A 10-minute history rolls up to hours and days only: a 15-minute read of a rolled
    month is refused, an hourly one served. A daily history keeps its days."""
    topo = topology(2, 600)
    block = readings((MAR - JAN) // 600, 2, 5)
    with HistoryWriter(tmp_path / "ten", topo, raw_days=10) as writer:
        writer.append(JAN, block)  # February's end rolls January up
        assert writer.roll_up(MAR + 10 * 86400) == ["2026-02"]
    ten = open_history(tmp_path / "ten")
    with pytest.raises(HistoryError, match="kept at 3600s"):
        ten.read(JAN, FEB, interval_s=1800)
    with pytest.raises(HistoryError, match="multiple of the history's 600s"):
        ten.read(JAN, FEB, interval_s=900)
    np.testing.assert_allclose(ten.read(JAN, MAR, interval_s=3600), reference_sum(block, 6)[0].T, rtol=1e-6)
    daily = topology(2, 86400)
    days = readings((MAR - JAN) // 86400, 2, 6)
    with HistoryWriter(tmp_path / "daily", daily, raw_days=1) as writer:
        writer.append(JAN, days)
    got, step = open_history(tmp_path / "daily").read_finest(JAN, MAR)
    assert step == 86400
    np.testing.assert_array_equal(got, days.T)


def test_a_copy_of_a_rolled_history_reads_alike(tmp_path: Path):
    """A rolled-up history is plain files: copied elsewhere it reads the same."""
    topo = topology(2, 900)
    with HistoryWriter(tmp_path / "a", topo, raw_days=5) as writer:
        writer.append(JAN, readings((FEB - JAN) // 900 + 960, 2, 7))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a, b = open_history(tmp_path / "a"), open_history(tmp_path / "b")
    assert a.rolled_up_months() == b.rolled_up_months() == ["2026-01"]
    np.testing.assert_array_equal(a.read(JAN, FEB + 86400 * 10, interval_s=900),
                                  b.read(JAN, FEB + 86400 * 10, interval_s=900))


@pytest.mark.parametrize("k", [1, 3, 4, 24])
def test_the_resampling_kernel_matches_plain_numpy(k: int):
    """twin.kernels.rollup.sum_intervals against numpy: float64 sums skipping NaN rounded
    once, NaN only where all k are NaN, NaN counts; with counts passed in, their sums."""
    from twin.kernels.rollup import sum_intervals

    rng = np.random.default_rng(k)
    x = rng.gamma(0.6, 0.15, (k * 50, 7)).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = np.nan
    x[:k, 3] = np.nan
    sums, counts = np.empty((50, 7), np.float32), np.empty((50, 7), np.uint16)
    sum_intervals(x, k, np.zeros((0, 7), np.uint16), False, sums, counts)
    ref_sums, ref_missing = reference_sum(x, k)
    np.testing.assert_array_equal(sums, ref_sums)
    np.testing.assert_array_equal(counts, ref_missing)
    given = rng.integers(0, 4, x.shape).astype(np.uint16)
    sum_intervals(x, k, given, True, sums, counts)
    np.testing.assert_array_equal(sums, ref_sums)
    np.testing.assert_array_equal(counts, given.reshape(50, k, 7).sum(axis=1))


def test_a_live_writer_rolls_up_in_the_background_alike(tmp_path: Path):
    """With background=True (the live platform) the months leaving the window are rolled up
    by a thread of their own while appends go on; a write into a month being rolled up is
    refused naming it; once done the history reads exactly as one rolled up in the foreground."""
    topo = topology(3, 900)
    span = readings((APR - JAN) // 900, 3, 5)
    per_day = 86400 // 900
    with HistoryWriter(tmp_path / "fg", topo, raw_days=25) as writer:
        for day in range(0, (APR - JAN) // 86400):
            writer.append(JAN + day * 86400, span[day * per_day:(day + 1) * per_day])
    refused = 0
    with HistoryWriter(tmp_path / "bg", topo, raw_days=25, background=True) as writer:
        for day in range(0, (APR - JAN) // 86400):
            writer.append(JAN + day * 86400, span[day * per_day:(day + 1) * per_day])
            if writer._rolling:  # a roll-up is running now: its month takes no more readings
                month = sorted(writer._rolling)[0]
                with pytest.raises(HistoryError, match=f"{month}: its raw readings left the 25-day window"):
                    writer.write_cells(["B01-01-00.em"], [_month_start(month)], [9.0])
                refused += 1
        writer.wait_roll_up()
        assert writer.roll_up_error is None
    fg, bg = open_history(tmp_path / "fg"), open_history(tmp_path / "bg")
    assert bg.rolled_up_months() == fg.rolled_up_months() == ["2026-01", "2026-02"]
    assert bg.months() == fg.months() == ["2026-03"]
    for level in (900, 3600, 86400):
        np.testing.assert_array_equal(bg.read(JAN, MAR, interval_s=level), fg.read(JAN, MAR, interval_s=level))
    np.testing.assert_array_equal(bg.read(MAR, APR), fg.read(MAR, APR))
    for level in (900, 86400):
        for month in ("2026-01", "2026-02"):
            assert (tmp_path / "bg" / "rollups" / str(level) / f"{month}.missing.u16").read_bytes() == \
                (tmp_path / "fg" / "rollups" / str(level) / f"{month}.missing.u16").read_bytes()
    print(f"background roll-up: {refused} writes refused while a month was being rolled up")


def _month_start(month: str) -> int:
    return int(datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC).timestamp())
