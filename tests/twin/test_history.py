"""The history format: rows land where their time says, missing stays NaN, torn writes
are harmless, and the topology and ground truth round-trip."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twin.history import (
    Column,
    HistoryError,
    HistoryWriter,
    Topology,
    TruthEvent,
    month_start_utc,
    next_month_start_utc,
    open_history,
    read_ground_truth,
    write_ground_truth,
)
from twin.model import Kind, TwinSpec

T0 = int(datetime(2026, 1, 30, tzinfo=UTC).timestamp())  # close to a month boundary


def topology(n: int, interval_s: int = 900) -> Topology:
    columns = [Column(f"B01-01-{i:02d}.em", "electric_meter", "electric", "kWh", "B01", 1,
                      f"B01-01-{i:02d}", f"A-{i}", None, "sub") for i in range(n)]
    return Topology("S1", "Asia/Shanghai", interval_s, columns)


def test_months_are_calendar_months_in_utc():
    """Month starts are calendar months in UTC, December rolling into January."""
    t = int(datetime(2025, 12, 31, 16, tzinfo=UTC).timestamp())
    assert month_start_utc(t) == int(datetime(2025, 12, 1, tzinfo=UTC).timestamp())
    assert next_month_start_utc(t) == int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_cols=st.integers(1, 7), writes=st.lists(
    st.tuples(st.integers(-300, 400), st.integers(1, 250)), min_size=1, max_size=6), data=st.data())
def test_rows_land_where_their_time_says(tmp_path_factory, n_cols, writes, data):
    """Blocks written in any order, across a month boundary, with gaps and overwrites,
    read back exactly as an in-memory reference; unwritten intervals read as NaN."""
    directory = tmp_path_factory.mktemp("h")
    topo = topology(n_cols)
    span = 800
    base = T0 - 300 * 900
    reference = np.full((span, n_cols), np.nan, dtype=np.float32)
    with HistoryWriter(directory, topo) as writer:
        for offset, length in writes:
            row = offset + 300
            length = min(length, span - row)
            block = np.array(data.draw(st.lists(
                st.one_of(st.floats(-1e3, 1e3, width=32), st.just(float("nan"))), min_size=length * n_cols,
                max_size=length * n_cols)), dtype=np.float32).reshape(length, n_cols)
            writer.append(base + row * 900, block)
            reference[row:row + length] = block
    history = open_history(directory)
    got = history.read_rows(base, base + span * 900)
    np.testing.assert_array_equal(got, reference)
    np.testing.assert_array_equal(history.read(base, base + span * 900), reference.T)
    written = np.flatnonzero(~np.all(np.isnan(reference), axis=1))
    if written.size:
        assert history.start == base + int(written[0]) * 900


def test_torn_trailing_row_is_ignored_then_repaired(tmp_path: Path):
    """A partial row at a file's end (a crash mid-write) is ignored by readers and cut off
    by the next writer; every complete row stays readable."""
    topo = topology(3)
    block = np.arange(12, dtype=np.float32).reshape(4, 3)
    with HistoryWriter(tmp_path, topo) as writer:
        writer.append(T0, block)
    month = next((tmp_path / "intervals").glob("*.f32"))
    with month.open("ab") as f:
        f.write(b"\x00\x01\x02\x03\x04")
    history = open_history(tmp_path)
    np.testing.assert_array_equal(history.read_rows(T0, T0 + 4 * 900), block)
    assert history.end == T0 + 4 * 900
    with HistoryWriter(tmp_path, topo) as writer:
        writer.append(T0 + 4 * 900, block[:1])
    assert month.stat().st_size == 5 * 3 * 4
    np.testing.assert_array_equal(open_history(tmp_path).read_rows(T0 + 4 * 900, T0 + 5 * 900), block[:1])


def test_reading_outside_the_data_gives_nan_of_the_right_shape(tmp_path: Path):
    """A range with no data reads as all NaN, shaped [columns, intervals]."""
    with HistoryWriter(tmp_path, topology(2)) as writer:
        writer.append(T0, np.ones((2, 2), dtype=np.float32))
    out = open_history(tmp_path).read(T0 + 86400 * 40, T0 + 86400 * 40 + 10 * 900)
    assert out.shape == (2, 10) and np.isnan(out).all()


def test_daily_interval_works(tmp_path: Path):
    """Daily readings (interval 86,400 s), as many field meters report, are a history too."""
    topo = topology(2, interval_s=86400)
    t = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    with HistoryWriter(tmp_path, topo) as writer:
        writer.append(t, np.arange(80, dtype=np.float32).reshape(40, 2))
    history = open_history(tmp_path)
    assert history.months() == ["2026-01", "2026-02"]
    np.testing.assert_array_equal(history.read(t, t + 40 * 86400)[1], np.arange(1, 80, 2))


def test_topology_round_trip_and_rules():
    """topology.json round-trips; a bad interval, a duplicate column and an unknown kind
    are refused naming the field."""
    twins = [TwinSpec("B01.mm", Kind.ELECTRIC_METER, "B01", role="master"),
             TwinSpec("B01-01-01.wm", Kind.WATER_METER, "B01", 1, "B01-01-01", master=None),
             TwinSpec("B01-01-01.vl", Kind.VALVE, "B01", 1, "B01-01-01", valve_of="B01-01-01.wm")]
    topo = Topology.from_twins("S1", "Asia/Shanghai", 900, twins)
    assert topo.ids == ["B01.mm", "B01-01-01.wm"]
    assert topo.columns[1].unit == "m3"
    assert Topology.from_json(topo.to_json()) == topo
    with pytest.raises(HistoryError, match="interval_s 700"):
        Topology("S1", "UTC", 700, [])
    with pytest.raises(HistoryError, match="appears twice"):
        Topology("S1", "UTC", 900, [topo.columns[0], topo.columns[0]])
    with pytest.raises(HistoryError, match=r"columns\[0\].*kind 'valve'"):
        Topology.from_json(topo.to_json().replace('"electric_meter"', '"valve"'))
    with pytest.raises(HistoryError, match="version 2 is not supported"):
        Topology.from_json(topo.to_json().replace('"version": 1', '"version": 2'))


def test_another_topology_is_refused(tmp_path: Path):
    """A writer refuses a directory that holds a history with other columns."""
    HistoryWriter(tmp_path, topology(3)).close()
    with pytest.raises(HistoryError, match="another topology"):
        HistoryWriter(tmp_path, topology(4))


def test_not_a_history_says_so(tmp_path: Path):
    """Opening a directory without topology.json says what is missing."""
    with pytest.raises(HistoryError, match="no topology.json"):
        open_history(tmp_path)


def test_bad_block_shape_is_refused(tmp_path: Path):
    """A block whose width is not the column count, or an unaligned start, is refused."""
    with HistoryWriter(tmp_path, topology(3)) as writer:
        with pytest.raises(HistoryError, match="does not fit"):
            writer.append(T0, np.zeros((2, 4)))
        with pytest.raises(HistoryError, match="interval boundary"):
            writer.append(T0 + 5, np.zeros((2, 3)))


def test_ground_truth_round_trip(tmp_path: Path):
    """Ground truth round-trips, sorted by start; an open end stays open; no file, no truth."""
    assert read_ground_truth(tmp_path) == []
    events = [TruthEvent("B01-01-02.em", "h1", T0 + 900, None, {"factor": 0.4, "hidden": 1.5}),
              TruthEvent("B01-01-01.em", "offline", T0, T0 + 3600, {})]
    write_ground_truth(tmp_path, events)
    back = read_ground_truth(tmp_path)
    assert back == sorted(events, key=lambda e: e.start)
    assert "2026-01-30T00:00:00Z" in (tmp_path / "ground_truth.csv").read_text()
