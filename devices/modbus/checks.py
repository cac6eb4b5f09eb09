"""Plausibility checks on values read from Modbus devices, before they reach a twin.

A decoded value is refused when it is NaN or outside its point's valid range. A counter
(energy, volume, trips) is also refused when it goes backwards, or when it advances more
than the point's `max_rate_per_h` allows in the hours since its last good reading, plus a
small allowance (`grace_s` at full rate, and two steps of its scale, for meters that update
their registers a little late). A refused value never becomes the reference: the next
reading is compared with the last good one. An unchanged value keeps its reference's time:
a register that moves in steps (whole kWh, or a whole interval's energy at once) may have
been counting all the while since it was first read at that value, not just since the
last poll. Example::

    checks = Checks()
    checks.problem("B01-01-01.em", energy_point, 1200.5, ts=1_700_000_000.0)   # None: good
    checks.problem("B01-01-01.em", energy_point, 1100.0, ts=1_700_000_060.0)   # "went backwards ..."
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from devices.modbus.maps import Point


@dataclass(frozen=True, slots=True)
class Reference:
    """A counter's last good reading."""

    value: float  #: engineering value
    ts: float  #: when it was first read at this value (seconds, the collector's clock)


class Checks:
    """Range and counter checks for the points of many twins; keeps each counter's last
    good reading (one per twin and point) as its reference."""

    def __init__(self, grace_s: float = 60.0) -> None:
        if not grace_s >= 0:
            raise ValueError(f"grace_s must be >= 0, not {grace_s}")
        self.grace_s = grace_s  #: slack for a counter's jump check, in seconds at full rate
        self._references: dict[tuple[str, str], Reference] = {}

    def problem(self, twin: str, point: Point, value: float, ts: float) -> str | None:
        """Why `value` read at `ts` is not believable, or None when it is good (a good
        counter value becomes the reference for the next)."""
        if math.isnan(value):
            return "not a number (NaN)"
        if not point.valid(value):
            return f"out of range [{point.low:g}, {point.high:g}]"
        if not point.counter:
            return None
        key = (twin, point.name)
        last = self._references.get(key)
        if last is not None:
            if value < last.value:
                return f"counter went backwards from {last.value:g} to {value:g}"
            hours = max(0.0, ts - last.ts) / 3600
            allowed = point.max_rate_per_h * (hours + self.grace_s / 3600) + 2 * abs(point.scale)
            if value - last.value > allowed:
                return (f"counter jumped by {value - last.value:g} in {hours:.3g} h "
                        f"(at most {point.max_rate_per_h:g} per hour)")
            if value == last.value:  # the step it takes next may hold all the time since it was first seen
                return None
        self._references[key] = Reference(value, ts)
        return None

    def reference(self, twin: str, point: str) -> Reference | None:
        """A counter's last good reading, if there is one."""
        return self._references.get((twin, point))

    def forget(self, twin: str) -> None:
        """Drop a twin's references (a replaced or reset meter starts afresh)."""
        for key in [k for k in self._references if k[0] == twin]:
            del self._references[key]


__all__ = ["Checks", "Reference"]
