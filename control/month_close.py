"""Month close: fee items, common-area apportionment (公摊) and postpaid bills.

When the billing tick has posted every interval of a site-local month, that month is
closed, once (restarts included), in this order:
1. fee items (twin/fees.py): monthly items for every account, one-off items at the first
   close, from the balance or billed (receivable);
2. apportionment: each `[[apportion]]` source's energy (or volume) over the month, a
   shared circuit's readings or a master meter's gap (its reading less everything it
   feeds; a negative gap apportions nothing), priced at its `price_yuan`, rounded half-up
   to the fen once and split exactly over the building's accounts by floor area, their
   own use that month, or equally (largest remainder);
3. postpaid bills: the charges posted to each postpaid account for the month's intervals
   (reference usage:YYYY-MM) move to its receivable, where the arrears list finds them
   until they are paid.
Each step is one ledger transaction, idempotent on its reference (`fees:YYYY-MM`,
`apportion:YYYY-MM`, `bill:YYYY-MM`). What the month's intervals add up to is kept per
month and saved at each billing tick, so a restart (which replays the unposted intervals)
neither loses nor double-counts them.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from control.store import Store
from scenarios.schema import Scenario
from twin.fees import Apportionment, apportion, fees_due, parse_apportionments, parse_fee_items
from twin.ledger import Ledger, round_half_up

log = logging.getLogger("metertwin")

USAGE_KEY = "month_usage"
CLOSED_KEY = "month_closed"
FIRST_KEY = "month_first"


@dataclass
class Closed:
    """What one month close did, for the log and the API."""

    month: str  #: YYYY-MM
    fees: int  #: fee transfers made
    apportioned: dict[str, int]  #: fen apportioned per apportionment name
    bills: dict[str, int]  #: fen billed per postpaid account

    def as_dict(self) -> dict[str, object]:
        """Plain data."""
        return {"month": self.month, "fees": self.fees, "apportioned": self.apportioned, "bills": self.bills}


class MonthClose:
    """Example (the runtime does this)::

        close = MonthClose(scenario, world.column_of, ledger, store, start_utc)
        close.on_interval(start_utc, reported)        # each closed interval
        close.tick(billing.accrued_until, now)        # at each billing tick, after posting
    """

    def __init__(self, scenario: Scenario, column_of: dict[str, int], ledger: Ledger, store: Store,
                 start_utc: int) -> None:
        self.site = scenario.site
        self.ledger = ledger
        self.store = store
        self.tz = ZoneInfo(scenario.site.timezone)
        self.items = parse_fee_items(scenario.fee_items)
        self.shares = parse_apportionments(scenario.apportion, scenario.site)
        self.postpaid = [a.id for a in scenario.site.accounts if not a.prepaid]
        twins = scenario.site.twins
        # per apportionment: the columns that make its source, with signs (+master, -what it feeds)
        self._source: list[tuple[np.ndarray, np.ndarray]] = []
        for share in self.shares:
            if share.gap:
                fed = [t.id for t in twins if t.master == share.source and t.id in column_of]
                cols = [column_of[share.source], *(column_of[t] for t in fed)]
                signs = [1.0] + [-1.0] * len(fed)
            else:
                cols, signs = [column_of[share.source]], [1.0]
            self._source.append((np.array(cols, dtype=np.int64), np.array(signs)))
        # each account's own use per utility (the usage basis)
        pairs = [(t.account, t.utility, column_of[t.id]) for t in twins
                 if t.account and t.utility and t.role == "sub" and t.id in column_of]
        self.use_keys = sorted({(a, u) for a, u, _ in pairs})
        index = {k: i for i, k in enumerate(self.use_keys)}
        self._use_idx = np.array([index[(a, u)] for a, u, _ in pairs], dtype=np.int64)
        self._use_cols = np.array([c for _, _, c in pairs], dtype=np.int64)
        self.needs_usage = any(s.basis == "usage" for s in self.shares)
        saved = store.get_meta(USAGE_KEY)
        #: month -> key -> units accrued: "src:<name>" per apportionment, "use:<account>:<utility>"
        self.months: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for month, values in (json.loads(saved) if saved else {}).items():
            self.months[month].update(values)
        self.closed = store.get_meta(CLOSED_KEY) or ""
        self.first = store.get_meta(FIRST_KEY) or self.month_of(start_utc)
        store.set_meta(FIRST_KEY, self.first)

    def month_of(self, utc: float) -> str:
        """The site-local month of a UTC instant, YYYY-MM."""
        return datetime.fromtimestamp(utc, tz=self.tz).strftime("%Y-%m")

    def _next_start(self, month: str) -> int:
        year, m = int(month[:4]), int(month[5:])
        return int(datetime(year + (m == 12), m % 12 + 1, 1, tzinfo=self.tz).timestamp())

    def on_interval(self, start_utc: int, reported: np.ndarray) -> None:
        """Add one closed interval to its month."""
        if not self.shares:
            return
        acc = self.months[self.month_of(start_utc)]
        values = np.nan_to_num(reported.astype(np.float64))
        for share, (cols, signs) in zip(self.shares, self._source, strict=True):
            acc[f"src:{share.name}"] += float(values[cols] @ signs)
        if self.needs_usage and len(self._use_cols):
            use = np.bincount(self._use_idx, weights=values[self._use_cols], minlength=len(self.use_keys))
            for (account, utility), units in zip(self.use_keys, use.tolist(), strict=True):
                if units:
                    acc[f"use:{account}:{utility}"] += units

    def save(self) -> None:
        """Keep the open months' sums (at the billing tick, with the posting)."""
        self.store.set_meta(USAGE_KEY, json.dumps({m: dict(v) for m, v in self.months.items()}))

    def tick(self, accrued_until: float, now: float) -> list[Closed]:
        """Close every month whose intervals are all posted and that is not closed yet."""
        done = []
        month = self.first
        while self._next_start(month) <= accrued_until:
            if month > self.closed:
                done.append(self.close(month, now))
                self.closed = month
                self.store.set_meta(CLOSED_KEY, month)
                self.months.pop(month, None)
            month = self.month_of(self._next_start(month))
        self.save()
        return done

    def close(self, month: str, at: float) -> Closed:
        """Close one month (idempotent in the ledger: running it again charges nothing)."""
        fees = [(account, item.name, fen, item.charge == "bill")
                for account, item, fen in fees_due(self.site, self.items, first_month=month == self.first)]
        made = self.ledger.charge_once(fees, at=at, ref=f"fees:{month}")
        sums = self.months.get(month, {})
        apportioned: dict[str, int] = {}
        rows: list[tuple[str, str, int, bool]] = []
        for share in self.shares:
            units = sums.get(f"src:{share.name}", 0.0)
            total = round_half_up(units * share.price_fen) if units > 0 else 0
            weights = self._weights(share, sums) if total > 0 else {}
            if not weights:
                if units < 0:
                    log.warning("apportion %s %s: negative gap (%.2f), nothing apportioned", share.name, month, units)
                apportioned[share.name] = 0
                continue
            for account, fen in apportion(total, weights).items():
                rows.append((account, share.name, fen, share.charge == "bill"))
            apportioned[share.name] = total
        self.ledger.charge_once(rows, at=at, ref=f"apportion:{month}")
        bills = self.ledger.issue_bills(self.postpaid, f"usage:{month}", at=at, ref=f"bill:{month}")
        closed = Closed(month, made, apportioned, bills)
        log.info("month %s closed: %d fees, apportioned %s, %d postpaid bills", month, made, apportioned, len(bills))
        return closed

    def _weights(self, share: Apportionment, sums: dict[str, float]) -> dict[str, float]:
        """The building's accounts and their weights for one apportionment (none at 0)."""
        area: dict[str, float] = defaultdict(float)
        for room in self.site.rooms:
            if room.account and room.building == share.building:
                area[room.account] += room.area_m2
        if share.basis == "equal":
            return {a: 1.0 for a in area}
        if share.basis == "usage":
            use = {a: sums.get(f"use:{a}:{share.utility}", 0.0) for a in area}
            if sum(use.values()) > 0:
                return {a: u for a, u in use.items() if u > 0}
            log.warning("apportion %s: nobody used %s; shared by floor area", share.name, share.utility)
        return {a: w for a, w in area.items() if w > 0}
