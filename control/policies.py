"""Prepaid policies: what to do about an account's available balance.

The available balance is the posted balance minus the charge accrued since the last
posting. For each account the policy decides, each time it runs:
- the low-balance level: 0 (fine), 1, 2 or 3 as the balance falls to each threshold
  (defaults 50, 20 and 5 yuan; overridable per account);
- emergency credit: below zero, supply goes on until the balance reaches minus the
  emergency credit (default 10 yuan); the next top-up recovers what was used (the
  ledger balance is negative meanwhile, so a top-up pays it back first);
- cut-off: once the emergency credit is used up, supply is cut (relay trip or valve
  close), except in protected hours (nights, weekends and holidays, configurable) and
  never for an account on the keep-supply list (保电: medical loads, disputes under
  review; set by an operator with a reason and an expiry);
- restore: a cut account whose balance is back above zero is restored;
- access (门禁): an account in arrears (below zero) loses its access flag; it is set
  again once the balance is back at zero or above.
The policy holds no I/O: the runtime turns decisions into alarms and commands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class Protected:
    """When supply is never cut. Example: ``Protected(((1080, 1440), (0, 480)), True, {date(2026, 10, 1)})``."""

    windows: tuple[tuple[int, int], ...] = ((1080, 1440), (0, 480))  #: local minutes: 18:00-08:00
    weekends: bool = True  #: Saturdays and Sundays are protected all day
    holidays: frozenset[date] = frozenset()  #: local dates protected all day

    def covers(self, local: datetime) -> bool:
        """True when a local time is protected."""
        if self.weekends and local.weekday() >= 5:
            return True
        if local.date() in self.holidays:
            return True
        minute = local.hour * 60 + local.minute
        return any(s <= minute < e for s, e in self.windows)


@dataclass(frozen=True, slots=True)
class KeepSupply:
    """An account on the keep-supply list (保电) until `until` (UTC epoch seconds)."""

    account: str  #: account id
    reason: str  #: why (medical load, dispute under review, ...)
    until: float  #: UTC epoch seconds the entry expires
    set_by: str  #: the operator who set it


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """Thresholds in fen. Example: ``PolicySettings(levels_fen=(5000, 2000, 500), emergency_fen=1000)``."""

    levels_fen: tuple[int, int, int] = (5000, 2000, 500)  #: low-balance levels 1, 2, 3
    emergency_fen: int = 1000  #: how far below zero supply goes on
    protected: Protected = Protected()  #: when supply is never cut
    timezone: str = "Asia/Shanghai"  #: the site's zone, for protected hours

    def __post_init__(self) -> None:
        a, b, c = self.levels_fen
        if not a >= b >= c >= 0:
            raise ValueError("levels_fen must fall: level 1 >= level 2 >= level 3 >= 0")
        if self.emergency_fen < 0:
            raise ValueError("emergency_fen must be >= 0")


@dataclass
class AccountPolicyState:
    """What the policy remembers about one account between runs."""

    level: int = 0  #: low-balance level alarmed now
    cut: bool = False  #: supply cut by the policy
    access: bool = True  #: the access-control flag
    emergency_low_fen: int = 0  #: the lowest balance reached below zero since the last top-up
    levels_fen: tuple[int, int, int] | None = None  #: per-account override of the levels


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do for one account now."""

    account: str  #: account id
    level: int  #: low-balance level now (0..3)
    level_changed: bool  #: raise or clear alarms
    cut: bool  #: send a cut-off now
    restore: bool  #: send a restore now
    access: bool  #: the access flag now
    held: str | None = None  #: why a due cut-off was held back (protected hours, keep-supply)
    emergency_fen: int = 0  #: emergency credit in use now (fen below zero)


@dataclass
class PrepaidPolicy:
    """Decides per account; keeps each account's state and the keep-supply list."""

    settings: PolicySettings = field(default_factory=PolicySettings)
    states: dict[str, AccountPolicyState] = field(default_factory=dict)
    keep_supply: dict[str, KeepSupply] = field(default_factory=dict)

    def keep(self, entry: KeepSupply) -> None:
        """Put an account on the keep-supply list (an operator, with a reason and an expiry)."""
        if not entry.reason.strip():
            raise ValueError("keep-supply needs a reason")
        self.keep_supply[entry.account] = entry

    def decide(self, account: str, available_fen: int, now: float) -> Decision:
        """The decision for an account whose available balance is `available_fen` at `now`."""
        state = self.states.setdefault(account, AccountPolicyState())
        levels = state.levels_fen or self.settings.levels_fen
        level = 3 if available_fen <= levels[2] else 2 if available_fen <= levels[1] else (
            1 if available_fen <= levels[0] else 0)
        level_changed = level != state.level
        state.level = level
        if available_fen < 0:
            state.emergency_low_fen = min(state.emergency_low_fen, available_fen)
        cut = restore = False
        held = None
        exhausted = available_fen <= -self.settings.emergency_fen
        if exhausted and not state.cut:
            keep = self.keep_supply.get(account)
            if keep is not None and keep.until > now:
                held = f"keep-supply: {keep.reason} (until {keep.until:.0f}, set by {keep.set_by})"
            elif self.settings.protected.covers(datetime.fromtimestamp(now, tz=ZoneInfo(self.settings.timezone))):
                held = "protected hours"
            else:
                cut = True
                state.cut = True
        elif state.cut and available_fen > 0:
            restore = True
            state.cut = False
        if available_fen >= 0:
            state.emergency_low_fen = 0
        state.access = available_fen >= 0
        emergency = -available_fen if available_fen < 0 else 0
        return Decision(account, level, level_changed, cut, restore, state.access, held, emergency)
