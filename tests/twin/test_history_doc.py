"""The import recipe in docs/history-format.md runs and gives the history it promises."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from twin.history import open_history

DOC = Path(__file__).resolve().parents[2] / "docs" / "history-format.md"


def test_import_recipe_from_the_docs_works(tmp_path):
    """The documented long-CSV import builds a history whose rows sit at their times and
    whose absent readings read as NaN; the worked example's row arithmetic holds."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    recipe = next(b for b in blocks if "def import_long_csv" in b)
    namespace: dict = {}
    exec(compile(recipe, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    csv_path = tmp_path / "export.csv"
    csv_path.write_text("twin_id,timestamp,kwh\n"
                        "B01-01-01.em,2026-01-31T08:00:00Z,0.25\n"
                        "B01-01-02.em,2026-01-31T08:00:00Z,0.5\n"
                        "B01-01-01.em,2026-01-31T08:30:00Z,0.75\n")
    namespace["import_long_csv"](str(csv_path), str(tmp_path / "h"))
    history = open_history(tmp_path / "h")
    t0 = int(datetime(2026, 1, 31, 8, tzinfo=UTC).timestamp())
    data = history.read(t0, t0 + 3 * 900)
    np.testing.assert_array_equal(data[0], [0.25, np.nan, 0.75])
    np.testing.assert_array_equal(data[1], [0.5, np.nan, np.nan])
    assert (t0 - int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())) // 900 == 2912


def test_roll_up_reading_recipe_from_the_docs_works(tmp_path):
    """The documented numpy read of an hourly roll-up gives what History.read gives at 3600 s,
    missing counts included, and a cell is NaN only where every raw reading was missing."""
    from twin.history import Column, HistoryWriter, Topology

    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    recipe = next(b for b in blocks if "rollups/3600/2025-01.f32" in b)
    jan = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
    feb = int(datetime(2025, 2, 1, tzinfo=UTC).timestamp())
    columns = [Column(f"M{i}.em", "electric_meter", "electric", "kWh") for i in range(3)]
    block = np.random.default_rng(3).random(((feb - jan) // 900 + 100, 3), dtype=np.float32)
    block[4:8, 1] = np.nan  # hour 1 of column 1: nothing
    block[9, 2] = np.nan  # hour 2 of column 2: one quarter missing
    with HistoryWriter(tmp_path, Topology("S1", "UTC", 900, columns), raw_days=1) as writer:
        writer.append(jan, block)
    namespace: dict = {"np": np}
    exec(compile(recipe.replace("DIR", str(tmp_path)), str(DOC), "exec"), namespace)  # noqa: S102
    history = open_history(tmp_path)
    assert history.rolled_up_months() == ["2025-01"]
    np.testing.assert_array_equal(namespace["sums"], history.read(jan, feb, interval_s=3600).T)
    np.testing.assert_array_equal(namespace["missing"], history.read_missing(jan, feb, interval_s=3600).T)
    assert np.isnan(namespace["sums"][1, 1]) and namespace["missing"][1, 1] == 4
    assert namespace["missing"][2, 2] == 1
    assert namespace["sums"][2, 2] == np.float32(np.float64(block[8:12, 2][~np.isnan(block[8:12, 2])]).sum())
