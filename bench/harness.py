"""The benchmark harness: figures with their baselines, a table, and bench/results.json.

A figure is a measured value beside a baseline that does the same work the plain way
(numpy, a bare Numba loop, raw file I/O) measured in the same run, so a ratio means
something on a shared, noisy machine. Benchmarks never assert: they report.

A benchmark module is ``bench/bench_<name>.py`` with ``def run(report: Report) -> None``;
``python -m bench`` finds and runs it. Sizes come down when ``METERTWIN_BENCH_QUICK=1``
(see :func:`quick`).
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path


def quick() -> bool:
    """True under ``python -m bench --quick`` (env METERTWIN_BENCH_QUICK=1): run small sizes."""
    return os.environ.get("METERTWIN_BENCH_QUICK") == "1"


@dataclass
class Figure:
    """One measured figure. Example: ``Figure("sim kernel", 990.0, "M meter-steps/s",
    "bare numba loop", 4600.0, 0.215)``."""

    name: str  #: what was measured
    value: float  #: the figure
    unit: str  #: its unit (the baseline is in the same unit)
    baseline_name: str  #: what the baseline is: the plain way of doing the same work
    baseline_value: float  #: the baseline, same unit, same run
    ratio: float  #: value / baseline_value (NaN if the baseline is 0)
    note: str = ""  #: goal, size, or a caveat (a smaller size than asked, say)

    def record(self) -> dict[str, object]:
        """The figure as written to results.json; a non-finite number is written as null."""

        def number(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {"name": self.name, "value": number(self.value), "unit": self.unit, "baseline": self.baseline_name,
                "baseline_value": number(self.baseline_value), "ratio": number(self.ratio), "note": self.note}


@dataclass
class Report:
    """Collects figures from every benchmark module, and the names of modules that failed."""

    figures: list[Figure] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def add(self, name: str, value: float, unit: str, baseline_name: str, baseline_value: float,
            note: str = "") -> Figure:
        """Record a figure; the ratio is value / baseline_value (NaN if the baseline is 0)."""
        value, baseline_value = float(value), float(baseline_value)
        ratio = value / baseline_value if baseline_value else float("nan")
        figure = Figure(name, value, unit, baseline_name, baseline_value, ratio, note)
        self.figures.append(figure)
        return figure

    def table(self) -> str:
        """An aligned table of every figure: figure, value, unit, baseline, baseline value, ratio, note."""
        head = ("figure", "value", "unit", "baseline", "baseline value", "ratio", "note")
        rows = [head] + [(f.name, f"{f.value:,.3g}", f.unit, f.baseline_name, f"{f.baseline_value:,.3g}",
                          f"{f.ratio:.3g}", f.note) for f in self.figures]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def print_table(self) -> None:
        """Print the table on stdout."""
        print(self.table(), flush=True)

    def write_json(self, path: str | Path) -> None:
        """Write the figures and the machine they were measured on (strict JSON: no NaN)."""
        import numba
        import numpy

        doc = {
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                        "numpy": numpy.__version__, "numba": numba.__version__,
                        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
            "figures": [f.record() for f in self.figures],
            "failed": self.failed,
        }
        Path(path).write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
