"""Meter billing: the meter holds the credit, the platform sells it and keeps watch.

In meter billing a prepaid meter deducts locally and trips its own relay at zero credit.
Residents pay the platform (app, counter, payment provider); the ledger records the
top-up as in platform billing, and the platform pushes the credit to the meter with a
`credit_push` command that writes the meter's new purchase total (购电总额): the meter
credits the difference once, so a resent or superseded push never credits twice, and a
push confirms when the meter reports that total or more. A push that failed (meter
offline past the deadline) is sent again by the next reconciliation.

The platform keeps billing the meter's energy under the site's tariffs (live billing,
posted to the ledger as usual) and reconciles: the credit it expects on the meter is the
meter's purchase total less what the platform charged for it; past a tolerance the twin
gets a `meter_balance_mismatch` alarm with both figures (a meter with a stale price
table, a meter deducting at one averaged price under a time-of-use tariff, tampering).
The alarm clears when the figures agree again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from control.billing import LiveBilling
from control.store import Store
from twin.kernels.billing import reconcile
from twin.state import FleetState

META_KEY = "meter_purchased"
CHARGED_KEY = "meter_charged"


@dataclass(frozen=True, slots=True)
class Tolerance:
    """How far the meter's credit may stray from the platform's figure before an alarm.
    Example: ``Tolerance(fen=500, ratio=0.02)``: 5 yuan plus 2% of what was charged."""

    fen: float = 500.0  #: absolute part, fen
    ratio: float = 0.02  #: part proportional to the charge so far


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One meter's reconciliation: the platform's figure against the meter's."""

    twin: str  #: the meter
    account: str  #: its account
    expected_fen: int  #: purchase total less the platform's charge
    meter_fen: int  #: the credit the meter reports
    gap_fen: int  #: meter less expected
    charged_fen: int  #: the platform's charge for this meter so far
    over: bool  #: past the tolerance

    def evidence(self) -> dict[str, int]:
        """The figures an alarm carries."""
        return {"expected_fen": self.expected_fen, "meter_fen": self.meter_fen, "gap_fen": self.gap_fen,
                "charged_fen": self.charged_fen}


class MeterBilling:
    """Push targets per meter and the reconciliation of every meter-billed meter.

    `meters` maps each prepaid meter to its account and opening purchase total, in the
    world's order; the first prepaid electric meter of an account takes its credit."""

    def __init__(self, store: Store, billing: LiveBilling, meters: list[tuple[str, str, int]],
                 tolerance: Tolerance = Tolerance()) -> None:
        self.store = store
        self.billing = billing
        self.tolerance = tolerance
        self.target_of: dict[str, str] = {}
        self.account_of: dict[str, str] = {}
        for twin, account, _ in meters:
            self.target_of.setdefault(account, twin)
            self.account_of[twin] = account
        saved = store.get_meta(META_KEY)
        #: the purchase total each meter should reach (opening credit plus pushes)
        self.purchased: dict[str, int] = json.loads(saved) if saved else {t: int(p) for t, _, p in meters}
        self.twins = [t for t, _, _ in meters if t in billing.row_of]
        charged = store.get_meta(CHARGED_KEY)
        if charged:  # what was charged up to the last posting; later intervals are billed again on replay
            for twin, fen in json.loads(charged).items():
                if twin in billing.row_of:
                    billing.charged[billing.row_of[twin]] = float(fen)

    def posted(self) -> None:
        """At the billing tick: keep each meter's charge so far, for a restart."""
        self.store.set_meta(CHARGED_KEY, json.dumps({t: float(self.billing.charged[self.billing.row_of[t]])
                                                     for t in self.twins}))

    def paid(self, account: str, fen: int) -> tuple[str, int] | None:
        """A payment reached the ledger: raise the account's meter's target; returns the
        (meter, new purchase total) to push, or None when the account has no prepaid meter."""
        twin = self.target_of.get(account)
        if twin is None or fen <= 0:
            return None
        self.purchased[twin] = self.purchased.get(twin, 0) + int(fen)
        self.store.set_meta(META_KEY, json.dumps(self.purchased))
        return twin, self.purchased[twin]

    def unpushed(self, fleet: FleetState) -> list[tuple[str, int]]:
        """Meters whose reported purchase total is below the target: (meter, target)."""
        out = []
        for twin, target in self.purchased.items():
            if int(fleet.twin(twin).reported["purchased_fen"]) < target:
                out.append((twin, target))
        return out

    def reconcile(self, fleet: FleetState, fresh_after: float) -> list[Mismatch]:
        """Every meter-billed meter that reported since `fresh_after` (offline and stale
        meters are left for the offline check), reconciled."""
        twins = [t for t in self.twins if fleet.twin(t).stamp("reported") >= fresh_after
                 and fleet.twin(t).reported["online"]]
        if not twins:
            return []
        views = [fleet.twin(t).reported for t in twins]
        purchased = np.array([v["purchased_fen"] for v in views], dtype=np.float64)
        credit = np.array([v["credit_fen"] for v in views], dtype=np.float64)
        charged = self.billing.charged[[self.billing.row_of[t] for t in twins]].astype(np.float64)
        expected, gap, over = np.empty(len(twins)), np.empty(len(twins)), np.zeros(len(twins), dtype=np.bool_)
        reconcile(purchased, credit, charged, self.tolerance.fen, self.tolerance.ratio, expected, gap, over)
        return [Mismatch(t, self.account_of[t], int(np.floor(e + 0.5)), int(c), int(np.floor(g + 0.5)),
                         int(np.floor(ch + 0.5)), bool(o))
                for t, e, c, g, ch, o in zip(twins, expected.tolist(), credit.tolist(), gap.tolist(),
                                              charged.tolist(), over.tolist(), strict=True)]
