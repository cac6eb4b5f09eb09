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
