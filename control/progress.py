"""Progress lines for long commands, on stderr.

On a terminal the line redraws in place at most a few times a second; in a log (CI, a
pipe) it prints a line at every tenth of the work, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Example: ``p = Progress("simulate", total=30, unit="days"); p.update(3, "2.1 M/s")``."""

    def __init__(self, label: str, total: float, unit: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.perf_counter()
        self._last_draw = 0.0
        self._last_tenth = -1

    def update(self, done: float, note: str = "") -> None:
        """Report `done` units of `total`, with a short note (a rate, a figure)."""
        now = time.perf_counter()
        elapsed = now - self.started
        share = done / self.total if self.total else 1.0
        eta = elapsed / share - elapsed if share > 0 else float("nan")
        line = (f"{self.label}: {done:g}/{self.total:g} {self.unit} ({share:4.0%})  "
                f"{elapsed:6.1f}s elapsed, ~{eta:5.1f}s left  {note}")
        if self.tty:
            if now - self._last_draw >= 0.2 or done >= self.total:
                self.stream.write("\r\x1b[2K" + line)
                self.stream.flush()
                self._last_draw = now
        else:
            tenth = int(share * 10)
            if tenth > self._last_tenth:
                self.stream.write(line + "\n")
                self.stream.flush()
                self._last_tenth = tenth

    def finish(self) -> float:
        """End the progress line; returns the elapsed seconds."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
        return time.perf_counter() - self.started
