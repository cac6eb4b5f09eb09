"""Daily load shapes for the simulated world: electricity, water draws, elevator trips.

Shapes are 24 hourly weights (hour 0 is 00:00-01:00 local), for weekdays and for
weekends, interpolated linearly between hour centres to the simulation step. They follow
the measured shape of urban Chinese households (evening peak 19:00-22:00, night minimum
about a fifth of the peak, busier weekend daytime) rather than BDEW H0, whose German
winter-evening and midday-cooking peaks do not fit a Xi'an high-rise; BDEW H0 was the
starting point for the relative weekday/weekend weighting. Electricity shapes are
normalised so that a week averages 1.0: multiplied by a household's mean power they give
its expected power at that minute. Water shapes are draw probabilities per minute,
normalised the same way; the world scales them to each household's daily volume.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

# fmt: off
ELECTRIC_HOURLY: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # weekday, weekend
    "household": (
        (0.45, 0.38, 0.35, 0.33, 0.33, 0.36, 0.55, 0.80, 0.75, 0.60, 0.55, 0.70,
         0.80, 0.65, 0.55, 0.55, 0.60, 0.85, 1.25, 1.70, 1.85, 1.75, 1.35, 0.80),
        (0.50, 0.42, 0.37, 0.34, 0.33, 0.34, 0.42, 0.60, 0.80, 0.95, 1.00, 1.05,
         1.10, 1.00, 0.95, 0.90, 0.90, 1.00, 1.30, 1.70, 1.80, 1.70, 1.40, 0.90),
    ),
    "shop": (
        (0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.18, 0.30, 0.60, 1.20, 1.60, 1.70,
         1.75, 1.70, 1.65, 1.65, 1.70, 1.75, 1.80, 1.85, 1.80, 1.60, 0.90, 0.30),
        (0.15, 0.15, 0.15, 0.15, 0.15, 0.15, 0.18, 0.30, 0.70, 1.40, 1.85, 1.95,
         2.00, 1.95, 1.90, 1.90, 1.95, 2.00, 2.05, 2.05, 1.95, 1.70, 1.00, 0.30),
    ),
    "office": (
        (0.20, 0.20, 0.20, 0.20, 0.20, 0.20, 0.25, 0.60, 1.60, 2.00, 2.10, 2.10,
         1.80, 2.00, 2.10, 2.10, 2.00, 1.70, 1.00, 0.50, 0.35, 0.30, 0.25, 0.20),
        (0.20, 0.20, 0.20, 0.20, 0.20, 0.20, 0.20, 0.22, 0.30, 0.35, 0.35, 0.35,
         0.35, 0.35, 0.35, 0.35, 0.35, 0.30, 0.25, 0.22, 0.20, 0.20, 0.20, 0.20),
    ),
}

WATER_HOURLY: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "household": (
        (0.25, 0.10, 0.05, 0.05, 0.05, 0.15, 1.10, 2.40, 1.60, 0.80, 0.60, 0.90,
         1.20, 0.80, 0.50, 0.50, 0.60, 0.90, 1.50, 2.10, 2.30, 2.00, 1.40, 0.70),
        (0.35, 0.15, 0.06, 0.05, 0.05, 0.10, 0.50, 1.30, 1.80, 1.60, 1.20, 1.10,
         1.30, 0.90, 0.70, 0.70, 0.80, 1.00, 1.50, 2.00, 2.20, 1.90, 1.50, 0.80),
    ),
    "shop": (
        (0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.05, 0.30, 0.90, 1.50, 1.60, 1.90,
         2.10, 1.70, 1.30, 1.20, 1.30, 1.70, 2.00, 1.90, 1.60, 1.20, 0.40, 0.05),
        (0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.05, 0.30, 0.90, 1.60, 1.80, 2.10,
         2.30, 1.90, 1.50, 1.40, 1.50, 1.90, 2.20, 2.10, 1.80, 1.30, 0.50, 0.05),
    ),
    "office": (
        (0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.05, 0.80, 2.00, 1.80, 1.60, 1.80,
         2.00, 1.80, 1.60, 1.60, 1.50, 1.20, 0.50, 0.10, 0.05, 0.05, 0.02, 0.02),
        (0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.05, 0.10, 0.15, 0.15, 0.15,
         0.15, 0.15, 0.15, 0.15, 0.10, 0.10, 0.05, 0.05, 0.02, 0.02, 0.02, 0.02),
    ),
}

#: Elevator trips by hour in a residential high-rise (morning and evening rush).
ELEVATOR_HOURLY: tuple[tuple[float, ...], tuple[float, ...]] = (
    (0.10, 0.05, 0.03, 0.03, 0.03, 0.10, 0.70, 2.60, 2.40, 1.10, 0.80, 1.00,
     1.40, 1.10, 0.80, 0.80, 1.00, 1.60, 2.60, 2.20, 1.70, 1.20, 0.70, 0.30),
    (0.15, 0.08, 0.04, 0.03, 0.03, 0.06, 0.30, 0.80, 1.40, 1.70, 1.70, 1.60,
     1.50, 1.40, 1.40, 1.40, 1.50, 1.70, 2.00, 1.90, 1.60, 1.20, 0.80, 0.40),
)
# fmt: on

#: Mean litres drawn in a minute with water flowing (a tap, a shower, a flush).
LITRES_PER_DRAW_MINUTE = 6.0


def per_minute(hourly: tuple[float, ...]) -> np.ndarray:
    """1440 values interpolated linearly between hour centres (wrapping at midnight)."""
    centres = np.arange(24) * 60.0 + 30.0
    minutes = np.arange(1440) + 0.5
    x = np.concatenate(([centres[-1] - 1440.0], centres, [centres[0] + 1440.0]))
    y = np.concatenate(([hourly[-1]], hourly, [hourly[0]]))
    return np.interp(minutes, x, y)


def _weekly_normalised(pair: tuple[tuple[float, ...], tuple[float, ...]]) -> np.ndarray:
    """[2, 1440] weekday and weekend shapes scaled so a 5+2 week averages 1.0."""
    shapes = np.stack([per_minute(pair[0]), per_minute(pair[1])])
    week_mean = (5.0 * shapes[0].mean() + 2.0 * shapes[1].mean()) / 7.0
    return shapes / week_mean


ELECTRIC = {name: _weekly_normalised(pair) for name, pair in ELECTRIC_HOURLY.items()}
WATER = {name: _weekly_normalised(pair) for name, pair in WATER_HOURLY.items()}
ELEVATOR = _weekly_normalised(ELEVATOR_HOURLY)


def step_calendar(
    day_start: datetime, steps: int, step_s: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each step of a run-day starting at local `day_start`: minute of day (int),
    weekend flag (0 or 1) and month index 0..11, as arrays of length `steps`."""
    offsets = np.arange(steps, dtype=np.int64) * step_s
    minute = np.empty(steps, dtype=np.int64)
    weekend = np.empty(steps, dtype=np.int64)
    month = np.empty(steps, dtype=np.int64)
    midnight = day_start.replace(hour=0, minute=0, second=0, microsecond=0)
    first = int((day_start - midnight).total_seconds())
    seconds = first + offsets
    for d in range(int(seconds[-1] // 86400) + 1):
        date = midnight + timedelta(days=d)
        sel = (seconds // 86400) == d
        minute[sel] = (seconds[sel] % 86400) // 60
        weekend[sel] = 1 if date.weekday() >= 5 else 0
        month[sel] = date.month - 1
    return minute, weekend, month


def electric_shapes(
    shapes: list[str], seasonal: np.ndarray, minute: np.ndarray, weekend: np.ndarray,
    month: np.ndarray,
) -> np.ndarray:
    """[n_classes, n_steps] expected power per unit of mean power, with the season."""
    out = np.empty((len(shapes), minute.size))
    for c, name in enumerate(shapes):
        out[c] = ELECTRIC[name][weekend, minute] * seasonal[c, month]
    return out


def water_shapes(shapes: list[str], minute: np.ndarray, weekend: np.ndarray) -> np.ndarray:
    """[n_classes, n_steps] relative draw probability (a week averages 1.0)."""
    out = np.empty((len(shapes), minute.size))
    for c, name in enumerate(shapes):
        out[c] = WATER[name][weekend, minute]
    return out


def elevator_shape(minute: np.ndarray, weekend: np.ndarray) -> np.ndarray:
    """[n_steps] relative trip rate (a week averages 1.0)."""
    return ELEVATOR[weekend, minute]
