"""Late and out-of-order readings: each lands in its interval, fills a missing cell,
changes nothing when repeated, replaces a different value (last write wins, counted), and
never erases a reading with NaN; a rebase of a month file to an earlier first row is safe
at every step a writer can be killed at."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twin.history import CellWrites, Column, HistoryError, HistoryWriter, Topology, open_history, read_first_row

T0 = int(datetime(2026, 1, 31, 12, tzinfo=UTC).timestamp())  # 48 rows before February
STEP = 900


def topology(n: int) -> Topology:
    columns = [Column(f"B01-01-{i:02d}.em", "electric_meter", "electric", "kWh", "B01", 1) for i in range(n)]
    return Topology("S1", "UTC", STEP, columns)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_cols=st.integers(1, 5), calls=st.lists(st.lists(st.tuples(
    st.integers(0, 4), st.integers(-60, 90), st.sampled_from([0.5, 1.25, 2.0, float("nan")])),
    min_size=1, max_size=12), min_size=1, max_size=5), base_rows=st.integers(0, 40))
def test_cells_land_in_their_interval(tmp_path_factory, n_cols, calls, base_rows):
    """Readings in any order, across a month boundary, before the first row and past the
    last, repeated and conflicting, read back as a reference that applies the same rules;
    the counts say how many were filled, the same, changed and skipped."""
    directory = tmp_path_factory.mktemp("h")
    topo = topology(n_cols)
    first = T0 + 20 * STEP  # the file starts mid-January: earlier readings rebase it
    reference: dict[tuple[int, int], float] = {}
    block = np.full((base_rows, n_cols), np.nan, dtype=np.float32)
    block[::3, 0] = 7.0
    for r in range(0, base_rows, 3):
        reference[(r + 20, 0)] = 7.0
    with HistoryWriter(directory, topo) as writer:
        if base_rows:
            writer.append(first, block)
        for call in calls:
            cols = [c % n_cols for c, _, _ in call]
            rows = [r for _, r, _ in call]
            values = [v for _, _, v in call]
            expect = [0, 0, 0, 0]
            last: dict[tuple[int, int], float] = {}
            for c, r, v in zip(cols, rows, values, strict=True):
                if np.isnan(v):
                    expect[3] += 1
                else:
                    last[(r, c)] = v
            for key, v in last.items():
                old = reference.get(key)
                expect[0 if old is None else 1 if old == v else 2] += 1
                reference[key] = v
            names = [topo.columns[c].id for c in cols]
            got = writer.write_cells(names, [T0 + r * STEP for r in rows], values)
            assert got == CellWrites(*expect)
    history = open_history(directory)
    matrix = history.read_rows(T0 - 60 * STEP, T0 + 91 * STEP)
    want = np.full_like(matrix, np.nan)
    for (r, c), v in reference.items():
        want[r + 60, c] = v
    np.testing.assert_array_equal(matrix, want)


def test_the_same_reading_twice_changes_nothing(tmp_path: Path):
    """A duplicate delivery writes nothing and leaves the files byte for byte as they were."""
    with HistoryWriter(tmp_path, topology(3)) as writer:
        writer.append(T0, np.full((4, 3), np.nan, dtype=np.float32))
        assert writer.write_cells([0, 2], [T0, T0 + 3 * STEP], [1.5, 2.5]) == CellWrites(2, 0, 0, 0)
        before = (tmp_path / "intervals" / "2026-01.f32").read_bytes()
        assert writer.write_cells(np.array([0, 2]), [T0, T0 + 3 * STEP], [1.5, 2.5]) == CellWrites(0, 2, 0, 0)
        assert writer.write_cells([0], [T0], [float("nan")]) == CellWrites(0, 0, 0, 1)
        assert (tmp_path / "intervals" / "2026-01.f32").read_bytes() == before
        assert writer.write_cells([0, 0], [T0, T0], [3.0, 4.0]) == CellWrites(0, 0, 1, 0)
    assert open_history(tmp_path).read(T0, T0 + STEP, [0])[0, 0] == 4.0


def test_bad_cells_are_refused_naming_the_reading(tmp_path: Path):
    """An unknown twin, a column out of range, an unaligned start and mismatched lengths are
    refused with the position of the reading, and nothing is written."""
    with HistoryWriter(tmp_path, topology(2)) as writer:
        with pytest.raises(HistoryError, match=r"columns\[1\]: no twin 'B09.em'"):
            writer.write_cells(["B01-01-00.em", "B09.em"], [T0, T0], [1.0, 1.0])
        with pytest.raises(HistoryError, match=r"columns\[0\] = 5 is not a column"):
            writer.write_cells([5], [T0], [1.0])
        with pytest.raises(HistoryError, match=r"starts\[1\] = .* 900s interval boundary"):
            writer.write_cells([0, 1], [T0, T0 + 60], [1.0, 1.0])
        with pytest.raises(HistoryError, match="2 columns, 1 starts and 2 values"):
            writer.write_cells([0, 1], [T0], [1.0, 1.0])
    assert open_history(tmp_path).end is None


def test_a_rebase_killed_at_any_step_reads_right(tmp_path: Path):
    """A month file starting at row 40 gets a reading for row 10: the rebase records its
    target in the sidecar, writes the rebased file aside, renames it into place and then
    settles the sidecar. Stopped after the first step or after the rename, a reader still
    finds every row at its time, and the next writer settles the sidecar."""
    topo = topology(2)
    month0 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    rows = np.arange(10, dtype=np.float32).reshape(5, 2)
    with HistoryWriter(tmp_path, topo) as writer:
        writer.append(month0 + 40 * STEP, rows)
    f32, sidecar = tmp_path / "intervals" / "2026-01.f32", tmp_path / "intervals" / "2026-01.json"
    old = f32.read_bytes()
    assert read_first_row(tmp_path, "2026-01") == 40
    rebased = np.full((35, 2), np.nan, dtype=np.float32)
    rebased[30:] = rows
    intent = {"first_row": 40, "rebase": {"first_row": 10, "rows": 35}}
    for state in ("recorded", "renamed"):
        f32.write_bytes(old if state == "recorded" else rebased.tobytes())
        sidecar.write_text(json.dumps(intent))
        history = open_history(tmp_path)
        np.testing.assert_array_equal(history.read_rows(month0 + 40 * STEP, month0 + 45 * STEP), rows)
        assert history.start == month0 + 40 * STEP
        with HistoryWriter(tmp_path, topo) as writer:  # settles the sidecar before anything else
            assert json.loads(sidecar.read_text()) == {"first_row": 40 if state == "recorded" else 10}
            writer.write_cells([1], [month0 + 10 * STEP], [9.5])
        assert json.loads(sidecar.read_text()) == {"first_row": 10}
        got = open_history(tmp_path).read_rows(month0 + 10 * STEP, month0 + 45 * STEP)
        assert got[0, 1] == 9.5
        np.testing.assert_array_equal(got[30:], rows)
        sidecar.write_text(json.dumps({"first_row": 40}))


def test_a_sidecar_left_before_the_first_byte_is_dropped(tmp_path: Path):
    """A writer killed after recording a month's first row but before its file existed
    leaves a lone sidecar; a later writer starting that month at row 0 removes it, so rows
    are not shifted."""
    (tmp_path / "intervals").mkdir()
    (tmp_path / "intervals" / "2026-02.json").write_text('{"first_row": 50}\n')
    feb = int(datetime(2026, 2, 1, tzinfo=UTC).timestamp())
    with HistoryWriter(tmp_path, topology(1)) as writer:
        writer.append(feb, np.array([[1.0], [2.0]], dtype=np.float32))
    assert not (tmp_path / "intervals" / "2026-02.json").exists()
    np.testing.assert_array_equal(open_history(tmp_path).read(feb, feb + 2 * STEP), [[1.0, 2.0]])
