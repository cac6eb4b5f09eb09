"""Live platform billing: charges accrue every interval and post to the ledger at the
billing tick.

Each closed interval of every billed meter (a sub-meter with an account and a tariff)
is charged by the billing kernel, its tier counter carried from interval to interval
and reset when the tariff's billing period changes (site time). Charges accrue per
account, unrounded; at the billing tick (daily by default) they post to the ledger, one
transfer per account and utility, rounded half-up with the remainder carried. The
available balance policies and screens use is the posted balance minus what accrued
since. Readings are billed as reported when the interval closes (a whole-day theft
that rewrites its day at midnight is not billed again).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from scenarios.schema import Scenario
from twin.kernels.billing import bill_fleet
from twin.ledger import Ledger
from twin.tariffs import PriceTables, Tariff, parse_tariff, price_tables


def slice_tables(tables: PriceTables, i: int) -> PriceTables:
    """The tables of one interval `i` of a longer run, as their own one-interval run."""
    k = tables.band.shape[0]
    return PriceTables(tables.band[:, i:i + 1].copy(), tables.price_fen[:, i:i + 1].copy(),
                       tables.version[:, i:i + 1].copy(), tables.period[:, i:i + 1].copy(), tables.thresholds,
                       tables.surcharges_fen, tables.band_names, np.ascontiguousarray(tables.onehot[:, :, i:i + 1]),
                       tables.n_bands, np.tile(np.array([[0, 1]], dtype=np.int64), (k, 1)),
                       np.ones(k, dtype=np.int64))


@dataclass
class BilledMeter:
    """A meter the platform bills."""

    twin: str  #: twin id
    column: int  #: its history column
    account: str  #: account charged
    utility: str  #: electric or water
    tariff: int  #: index into LiveBilling.tariffs


class LiveBilling:
    """Accrual per interval and posting per tick for every prepaid account of a site."""

    def __init__(self, scenario: Scenario, column_of: dict[str, int], ledger: Ledger, interval_s: int) -> None:
        self.ledger = ledger
        self.interval_s = interval_s
        self.tz = ZoneInfo(scenario.site.timezone)
        names = sorted(scenario.tariffs)
        self.tariffs: list[Tariff] = [parse_tariff(n, scenario.tariffs[n]) for n in names]
        index = {n: i for i, n in enumerate(names)}
        prepaid_accounts = {a.id for a in scenario.site.accounts if a.prepaid}
        # prepaid and postpaid accounts alike: postpaid ones are billed at the month close
        self.meters = [BilledMeter(t.id, column_of[t.id], t.account, t.utility, index[t.tariff])
                       for t in scenario.site.twins
                       if t.role == "sub" and t.tariff and t.utility and t.id in column_of and t.account is not None]
        self.columns = np.array([m.column for m in self.meters], dtype=np.int64)
        self.tariff_of = np.array([m.tariff for m in self.meters], dtype=np.int64)
        self.used = np.zeros(len(self.meters))
        #: what each meter has been charged since the start, unrounded fen (meter billing reconciles it)
        self.charged = np.zeros(len(self.meters))
        self.row_of = {m.twin: i for i, m in enumerate(self.meters)}
        #: UTC end of the last interval accrued (what a posting covers)
        self.accrued_until = 0
        #: prepaid accounts billed here (the ones policies watch)
        self.accounts = sorted({m.account for m in self.meters if m.account in prepaid_accounts})
        self.accrued: dict[tuple[str, str], float] = defaultdict(float)
        self.prepaid = prepaid_accounts
        #: postpaid accounts' charges by (site-local month, account, utility): posted at each
        #: tick with the reference usage:<month>, which the month close bills
        self.accrued_postpaid: dict[tuple[str, str, str], float] = defaultdict(float)
        self._day: tuple[int, PriceTables] | None = None  # (local midnight UTC, that day's tables)
        self._last_period = np.full(len(self.tariffs), -1, dtype=np.int64)

    def _tables(self, start_utc: int) -> tuple[PriceTables, int]:
        local = datetime.fromtimestamp(start_utc, tz=self.tz)
        midnight = int(local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp())
        if self._day is None or self._day[0] != midnight:
            day_end = int((local.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)).timestamp())
            n = max(1, (day_end - midnight) // self.interval_s)
            self._day = (midnight, price_tables(self.tariffs, midnight, n, self.interval_s, str(self.tz)))
        return self._day[1], (start_utc - midnight) // self.interval_s

    def on_interval(self, start_utc: int, reported: np.ndarray) -> None:
        """Charge one closed interval of every billed meter and accrue it."""
        self.accrued_until = max(self.accrued_until, start_utc + self.interval_s)
        if not self.meters:
            return
        day, i = self._tables(start_utc)
        tables = slice_tables(day, i)
        period = tables.period[:, 0].astype(np.int64)
        changed = np.flatnonzero(period != self._last_period)
        if changed.size:  # a new billing period (or the first interval): tier counters start again
            reset = np.isin(self.tariff_of, changed) & (self._last_period[self.tariff_of] >= 0)
            self.used[reset] = 0.0
            self._last_period[changed] = period[changed]
        energy = reported[self.columns].astype(np.float32)[:, None]
        out = bill_fleet(energy, self.tariff_of, self.used, tables)
        self.used = out["used_end"]
        self.charged += out["charge_fen"]
        month = datetime.fromtimestamp(start_utc, tz=self.tz).strftime("%Y-%m")
        for meter, fen in zip(self.meters, out["charge_fen"].tolist(), strict=True):
            if fen:
                if meter.account in self.prepaid:
                    self.accrued[meter.account, meter.utility] += fen
                else:
                    self.accrued_postpaid[month, meter.account, meter.utility] += fen

    def available_fen(self, account: str) -> int:
        """Posted balance minus the charge accrued since the last posting (fen)."""
        accrued = sum(v for (a, _), v in self.accrued.items() if a == account)
        return self.ledger.balance(account) - int(np.floor(accrued + 0.5))

    def available_many(self, accounts: list[str | None]) -> np.ndarray:
        """Available balances of many accounts (0 for None), fen."""
        by_account: dict[str, float] = defaultdict(float)
        for (a, _), v in self.accrued.items():
            by_account[a] += v
        posted = self.ledger.balances()
        return np.array([0 if a is None else posted.get(a, 0) - int(np.floor(by_account[a] + 0.5))
                         for a in accounts], dtype=np.int64)

    def post(self, now: float) -> int:
        """The billing tick: post what accrued, per utility, and start accruing afresh."""
        made = 0
        by_utility: dict[str, dict[str, float]] = defaultdict(dict)
        for (account, utility), fen in self.accrued.items():
            by_utility[utility][account] = fen
        for utility, charges in sorted(by_utility.items()):
            made += self.ledger.post_charges(charges, utility, at=now, ref=f"tick:{int(now)}")
        self.accrued.clear()
        by_month: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        for (month, account, utility), fen in self.accrued_postpaid.items():
            by_month[month, utility][account] = fen
        for (month, utility), charges in sorted(by_month.items()):
            made += self.ledger.post_charges(charges, utility, at=now, ref=f"usage:{month}")
        self.accrued_postpaid.clear()
        return made
