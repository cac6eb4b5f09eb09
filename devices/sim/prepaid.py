"""Simulated prepaid meters and the residents who feed them (meter billing).

A prepaid electric meter in meter-billing mode holds its own credit: it deducts what it
measures at its own price, trips its relay when the credit reaches zero and closes it
again once a top-up brings the credit back. Residents top up when the credit falls
below their own threshold, after a wait that is usually hours and sometimes days; each
top-up is a SimPy event of the world. The platform's ledger (billing) is not here: this
is the device and the people in front of it.

The meter's price is a single figure per kWh taken from its tariff table (`price_yuan`,
or the first of `prices_yuan`, or the mean of band prices): simple meters deduct at one
rate and the platform reconciles the difference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from devices.sim.rng import PREPAID, normal, twin_keys, uniform
from scenarios.schema import Residents

DEFAULT_PRICE_FEN = 55.0


def meter_price_fen(tariff: dict[str, Any] | None) -> float:
    """The one price per kWh (fen) a simple prepaid meter deducts for a tariff table."""
    if not tariff:
        return DEFAULT_PRICE_FEN
    if isinstance(tariff.get("price_yuan"), int | float):
        return 100.0 * float(tariff["price_yuan"])
    prices = tariff.get("prices_yuan")
    if isinstance(prices, list) and prices and isinstance(prices[0], int | float):
        return 100.0 * float(prices[0])
    bands = tariff.get("bands")
    if isinstance(bands, list):
        values = [float(b["price_yuan"]) for b in bands
                  if isinstance(b, dict) and isinstance(b.get("price_yuan"), int | float)]
        if values:
            return 100.0 * float(np.mean(values))
    return DEFAULT_PRICE_FEN


class PrepaidMeters:
    """Credit, price and pending top-ups of every prepaid electric sub-meter of a world."""

    def __init__(self, residents: Residents, ids: list[str], accounts: list[str | None],
                 prepaid: np.ndarray, prices_fen: np.ndarray, seed: int) -> None:
        self.residents = residents
        self.ids = ids
        self.row_of = {twin: row for row, twin in enumerate(ids)}
        self.accounts = accounts
        self.active = prepaid & np.array([a is not None for a in accounts], dtype=bool)
        self.price_fen = prices_fen
        self.keys = twin_keys(ids, seed, PREPAID)
        low, high = residents.opening_yuan
        draw = np.array([uniform(k, np.uint64(1)) for k in self.keys]) if len(ids) else np.zeros(0)
        self.credit_fen = np.where(self.active, 100.0 * (low + (high - low) * draw), 0.0)
        #: total credit ever bought on each meter (its 购电总额 register); the opening credit
        #: counts as bought. A push of a new total credits the difference, once.
        self.purchased_fen = np.floor(self.credit_fen).astype(np.int64)
        #: True when residents pay the platform, which pushes credit to the meter (remote
        #: top-up); False when they load it on the meter themselves (card or keypad)
        self.remote = False
        low, high = residents.topup_below_yuan
        draw = np.array([uniform(k, np.uint64(2)) for k in self.keys]) if len(ids) else np.zeros(0)
        self.threshold_fen = 100.0 * (low + (high - low) * draw)
        self.pending = np.zeros(len(ids), dtype=bool)  # a top-up is on its way
        self.cut = np.zeros(len(ids), dtype=bool)  # the meter tripped its own relay
        self.topups = np.zeros(len(ids), dtype=np.int64)  # top-ups so far, the draw counter

    @property
    def on_meter(self) -> bool:
        """True when the meters hold the credit (meter billing)."""
        return self.residents.billing == "meter"

    def deduct(self, energy_kwh: np.ndarray) -> None:
        """Take the measured energy of an interval off the credit (meter billing only)."""
        if self.on_meter:
            self.credit_fen -= np.where(self.active, energy_kwh * self.price_fen, 0.0)

    def platform_due(self, balance_fen: np.ndarray) -> np.ndarray:
        """Platform billing: rows whose resident now decides to top up, seeing the
        platform's available balance of their account (as in the app)."""
        self.credit_fen = balance_fen.astype(np.float64)
        low = np.flatnonzero(self.active & ~self.pending & (self.credit_fen < self.threshold_fen))
        self.pending[low] = True
        return low

    def due(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows whose resident now decides to top up, rows to trip, rows to restore."""
        low = np.flatnonzero(self.active & ~self.pending & (self.credit_fen < self.threshold_fen))
        self.pending[low] = True
        trip = np.flatnonzero(self.active & ~self.cut & (self.credit_fen <= 0.0))
        self.cut[trip] = True
        restore = np.flatnonzero(self.cut & (self.credit_fen > 0.0))
        self.cut[restore] = False
        return low, trip, restore

    def push(self, row: int, total_fen: int) -> int:
        """A remote top-up: the platform writes the new purchase total; the meter credits
        what exceeds its own total (a repeated or older total credits nothing). Returns the
        fen credited."""
        credited = max(0, int(total_fen) - int(self.purchased_fen[row]))
        if credited:
            self.credit_fen[row] += credited
            self.purchased_fen[row] = int(total_fen)
        return credited

    def delay_s(self, row: int) -> float:
        """How long this resident waits before this top-up: lognormal around the median,
        sigma 1 (a third of residents wait over twice the median)."""
        z = normal(self.keys[row], np.uint64(100 + 2 * int(self.topups[row])))
        return 3600.0 * self.residents.topup_delay_hours * float(np.exp(z))

    def top_up(self, row: int) -> int:
        """Apply the resident's next top-up; returns the amount in fen."""
        amounts = self.residents.topup_yuan
        pick = uniform(self.keys[row], np.uint64(101 + 2 * int(self.topups[row])))
        fen = int(round(100 * amounts[min(int(pick * len(amounts)), len(amounts) - 1)]))
        if self.on_meter and not self.remote:
            self.credit_fen[row] += fen
            self.purchased_fen[row] += fen
        self.topups[row] += 1
        self.pending[row] = False
        return fen


def resident_process(env: Any, meters: PrepaidMeters, row: int, on_topup: Callable[[int, int], None]):  # type: ignore[no-untyped-def]
    """SimPy process: wait, then top up and tell the world (which restores a cut relay)."""
    yield env.timeout(meters.delay_s(row))
    on_topup(row, meters.top_up(row))
