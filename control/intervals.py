"""Interval rows from polled counters: what a real site's history is made of.

A meter reports a running total (kWh, m3, trips); the history stores what each interval
added. At every interval boundary each column gets the counter's latest good reading
less the reading the column last closed with:
- a meter that gave no good reading during the interval gets NaN (missing), and its
  reference stays put, so the first interval after it comes back carries everything it
  counted meanwhile (the same catch-up the simulated world writes for offline meters);
- the first reading of a meter only sets its reference (the interval it falls in is NaN);
- readings the collector flagged (out of range, backwards, jumps) never arrive here, so
  garbage never becomes consumption; a delta below zero is refused all the same.
A reading belongs to the interval in which it was taken; a poll just after a boundary
lands in the next interval (the collector polls every few seconds: the skew is that).

Example::

    builder = IntervalBuilder(["B01-01-01.em", "B01-01-01.wm"], interval_s=900)
    builder.reading("B01-01-01.em", 1234.56, ts=1767225605)
    start, row = builder.close(1767226500)       # row[0]: kWh in [start, start + 900)
"""

from __future__ import annotations

import numpy as np


class IntervalBuilder:
    """Counter readings in, one interval row per boundary out (float64, NaN = missing)."""

    def __init__(self, columns: list[str], interval_s: int) -> None:
        self.columns = list(columns)
        self.col_of = {twin: i for i, twin in enumerate(self.columns)}
        self.interval_s = interval_s
        n = len(self.columns)
        self.reference = np.full(n, np.nan)  #: counter value each column last closed with
        self.latest = np.full(n, np.nan)  #: latest good counter reading
        self.latest_ts = np.zeros(n, dtype=np.int64)  #: when it was taken (UTC s)
        self.refused = 0  #: deltas below zero refused (a replaced meter, a reset register)

    def reading(self, twin: str, value: float, ts: int) -> None:
        """A good counter reading of a twin that has a column (others are ignored)."""
        col = self.col_of.get(twin)
        if col is not None and ts >= self.latest_ts[col]:
            self.latest[col] = value
            self.latest_ts[col] = ts

    def close(self, boundary_utc: int) -> tuple[int, np.ndarray]:
        """Close the interval ending at `boundary_utc`: its start and its row."""
        start = boundary_utc - self.interval_s
        fresh = (self.latest_ts > start) & (self.latest_ts <= boundary_utc) & ~np.isnan(self.latest)
        row = np.full(len(self.columns), np.nan)
        known = fresh & ~np.isnan(self.reference)
        delta = self.latest - self.reference
        good = known & (delta >= 0)
        self.refused += int(np.count_nonzero(known & (delta < 0)))
        row[good] = delta[good]
        first = fresh & np.isnan(self.reference)
        bad = known & ~good
        self.reference[good | first | bad] = self.latest[good | first | bad]
        return start, row
