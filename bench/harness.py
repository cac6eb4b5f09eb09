"""The benchmark harness: figures with their baselines, a table, and bench/results.json.

A figure is a measured value beside a baseline that does the same work the plain way
(numpy, a bare Numba loop, raw file I/O) measured in the same run, so a ratio means
something on a shared, noisy machine. Benchmarks never assert: they report.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path


@dataclass
class Figure:
    """One measured figure. Example: ``Figure("sim kernel", 990.0, "M meter-steps/s",
    "bare numba loop", 4600.0, 0.215)``."""

    name: str  #: what was measured
    value: float  #: the figure
    unit: str  #: its unit
    baseline: str  #: what the baseline is
    baseline_value: float  #: the baseline, same unit, same run
    ratio: float  #: value / baseline_value
    note: str = ""  #: goal, size, or a caveat (a smaller size than asked, say)


@dataclass
class Report:
    """Collects figures from every benchmark module."""

    figures: list[Figure] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def add(self, name: str, value: float, unit: str, baseline: str, baseline_value: float,
            note: str = "") -> Figure:
        """Record a figure; the ratio is value / baseline_value (NaN if the baseline is 0)."""
        ratio = value / baseline_value if baseline_value else float("nan")
        figure = Figure(name, float(value), unit, baseline, float(baseline_value), ratio, note)
        self.figures.append(figure)
        return figure

    def table(self) -> str:
        """An aligned table of every figure."""
        head = ("figure", "value", "unit", "baseline", "baseline value", "ratio", "note")
        rows = [head] + [(f.name, f"{f.value:,.3g}", f.unit, f.baseline, f"{f.baseline_value:,.3g}",
                          f"{f.ratio:.3g}", f.note) for f in self.figures]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def write_json(self, path: str | Path) -> None:
        """Write the figures and the machine they were measured on."""
        import numba
        import numpy

        doc = {
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                        "numpy": numpy.__version__, "numba": numba.__version__,
                        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
            "figures": [asdict(f) for f in self.figures],
            "failed": self.failed,
        }
        Path(path).write_text(json.dumps(doc, indent=1) + "\n")
