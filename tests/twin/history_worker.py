"""A separate process for the history crash test: appends blocks of rows from a given row
on, then fills the first column of earlier rows with late readings; prints `rows N` once
rows before N are appended and `cells N` once the late readings of rows before N are in.
Usage: python history_worker.py DIR FROM_ROW LATE_FROM SEED. Values are `expected(row)`."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from twin.history import Column, HistoryWriter, Topology  # noqa: E402

COLUMNS = 600  # 2,400-byte rows: row ends fall inside pages, so a kill can tear one
STEP = 60
T0 = int(datetime(2026, 1, 31, 23, 0, tzinfo=UTC).timestamp())  # a month boundary an hour in
LATE = 7  # the late reading of a row's first column comes this many rows later


def topology() -> Topology:
    """The crash test's topology."""
    return Topology("S1", "UTC", STEP, [Column(f"M{i:04d}.em", "electric_meter", "electric", "kWh")
                                        for i in range(COLUMNS)])


def expected(first: int, rows: int) -> np.ndarray:
    """[rows, COLUMNS] of the values of rows first .. first + rows - 1, exact in float32."""
    r = np.arange(first, first + rows, dtype=np.int64)[:, None]
    c = np.arange(COLUMNS, dtype=np.int64)[None, :]
    return (((r * 7919 + c * 104729) % 100_000) / 8).astype(np.float32)


def main() -> None:
    directory, row, late_from, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(seed)
    with HistoryWriter(directory, topology()) as writer:
        while True:
            n = int(rng.integers(1, 40))
            block = expected(row, n)
            block[:, 0] = np.nan  # the first column arrives late
            writer.append(T0 + row * STEP, block)
            row += n
            print(f"rows {row}", flush=True)
            late_to = max(row - LATE, 0)
            if late_to > late_from:
                rows = np.arange(late_from, late_to)
                writer.write_cells(np.zeros(len(rows), dtype=np.int64), T0 + rows * STEP,
                                   expected(late_from, late_to - late_from)[:, 0])
                late_from = late_to
                print(f"cells {late_to}", flush=True)


if __name__ == "__main__":
    main()
