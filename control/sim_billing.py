"""Platform billing for a headless simulation: the same ledger, live billing and prepaid
policy as `metertwin run`, attached to a `World` without the runtime, so a simulated
month or year shows balances, top-ups, arrears, cut-offs and restores.

Cut-offs and restores act on the world directly (relays of the account's electric meters
and its valves), recorded in the world's events with source "policy"; the live platform
sends the same actions through the command path. The policy runs every `policy_every`
intervals over all accounts at once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from control.billing import LiveBilling
from control.policies import KeepSupply, PolicySettings, PrepaidPolicy
from devices.sim.world import World
from twin.ledger import Ledger
from twin.model import Kind


@dataclass
class BillingFigures:
    """What a billed simulation adds to its summary."""

    revenue_fen: dict[str, int] = field(default_factory=dict)  #: posted charges by utility
    topups: int = 0  #: residents' top-ups
    topup_fen: int = 0  #: their total
    cutoffs: int = 0  #: accounts cut off
    restores: int = 0  #: accounts restored
    cutoffs_protected: int = 0  #: cut-offs inside protected hours (must stay 0)
    cutoffs_keep_supply: int = 0  #: cut-offs of keep-supply accounts (must stay 0)
    emergency_uses: int = 0  #: times an account went into emergency credit
    emergency_recovered: int = 0  #: of those top-ups, the ones that repaid the emergency credit used
    emergency_topups: int = 0  #: top-ups that found emergency credit in use
    access_cleared: int = 0  #: times an account lost its access flag
    access_restored: int = 0  #: times it got it back
    arrears_without_flag_cleared: int = 0  #: checks where an account in arrears kept access (must stay 0)


class SimBilling:
    """Ledger, live billing and the prepaid policy wired to a headless world."""

    def __init__(self, world: World, ledger_path: Path, *, policy_every: int = 4,
                 settings: PolicySettings | None = None, keep_supply: dict[str, float] | None = None) -> None:
        self.world = world
        self.ledger = Ledger(ledger_path)
        scenario = world.scenario
        self.billing = LiveBilling(scenario, world.column_of, self.ledger, world.interval_s)
        self.policy = PrepaidPolicy(settings or PolicySettings(timezone=scenario.site.timezone))
        self.keep_until = keep_supply or {}
        self.figures = BillingFigures()
        self.policy_every = policy_every
        self._intervals = 0
        self.accounts = list(self.billing.accounts)
        self.twins: dict[str, list[str]] = defaultdict(list)
        for twin in scenario.site.twins:
            if twin.account and twin.kind in (Kind.ELECTRIC_METER, Kind.VALVE):
                self.twins[twin.account].append(twin.id)
        self.in_emergency: set[str] = set()
        self.tz = ZoneInfo(scenario.site.timezone)
        world.on_interval = self._on_interval
        world.balance_of = self.billing.available_many
        world.on_payment = self._payment
        if world.prepaid is not None:  # opening balances as the residents' meters draw them, once per account
            opened: set[str] = set()
            for account, credit in zip(world.prepaid.accounts, world.prepaid.credit_fen.tolist(), strict=True):
                if account and account not in opened and int(credit) > 0:
                    self.ledger.top_up(f"opening:{account}", account, int(credit), at=float(world.start_utc))
                    opened.add(account)

    def _now(self) -> float:
        return self.world.start_utc + self.world.now_s

    def _payment(self, account: str, fen: int, payment_id: str) -> None:
        before = self.billing.available_fen(account)
        self.ledger.top_up(payment_id, account, fen, at=self._now())
        self.figures.topups += 1
        self.figures.topup_fen += fen
        if before < 0:  # emergency credit in use: the top-up repays it first (it is the newest debt)
            self.figures.emergency_topups += 1
            if fen >= min(-before, self.policy.settings.emergency_fen):
                self.figures.emergency_recovered += 1

    def _on_interval(self, start_utc: int, reported: np.ndarray) -> None:
        self.billing.on_interval(start_utc, reported)
        self._intervals += 1
        if self._intervals % (86400 // self.world.interval_s) == 0:
            for utility, charges in self._by_utility().items():
                self.figures.revenue_fen[utility] = self.figures.revenue_fen.get(utility, 0) + int(
                    round(sum(charges.values())))
            self.billing.post(float(start_utc + self.world.interval_s))
        if self._intervals % self.policy_every == 0:
            self._policies(float(start_utc + self.world.interval_s))

    def _by_utility(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = defaultdict(dict)
        for (account, utility), fen in self.billing.accrued.items():
            out[utility][account] = fen
        return out

    def _policies(self, now: float) -> None:
        balances = self.billing.available_many(list(self.accounts)).tolist()
        protected = self.policy.settings.protected.covers(datetime.fromtimestamp(now, tz=self.tz))
        for account, available in zip(self.accounts, balances, strict=True):
            state_before = self.policy.states.get(account)
            had_access = state_before.access if state_before else True
            keep = self.keep_until.get(account, 0.0) > now
            if keep:
                self.policy.keep(KeepSupply(account, "simulated keep-supply", self.keep_until[account], "sim"))
            decision = self.policy.decide(account, int(available), now)
            if available < 0 and account not in self.in_emergency:
                self.in_emergency.add(account)
                self.figures.emergency_uses += 1
            elif available >= 0:
                self.in_emergency.discard(account)
            if had_access and not decision.access:
                self.figures.access_cleared += 1
            if not had_access and decision.access:
                self.figures.access_restored += 1
            if available < 0 and decision.access:
                self.figures.arrears_without_flag_cleared += 1
            if decision.cut:
                self.figures.cutoffs += 1
                self.figures.cutoffs_protected += protected
                self.figures.cutoffs_keep_supply += keep
            if decision.restore:
                self.figures.restores += 1
            if decision.cut or decision.restore:
                for twin in self.twins.get(account, []):
                    if twin.endswith(".vl"):
                        self.world.set_valve(twin, decision.restore, source="policy")
                    else:
                        self.world.set_relay(twin, decision.restore, source="policy")

    def close(self) -> None:
        """Post what is still accrued, check the ledger, close it."""
        for utility, charges in self._by_utility().items():
            self.figures.revenue_fen[utility] = self.figures.revenue_fen.get(utility, 0) + int(
                round(sum(charges.values())))
        self.billing.post(self._now())
        self.ledger.check()
        self.ledger.close()
