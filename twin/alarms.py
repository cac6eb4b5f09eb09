"""Alarm records and their lifecycle. No I/O: the control core stores and sends them.

An alarm is about one twin or one account, of one kind (offline, low balance, command
failed, leak, ...). While its condition holds it is raised once: raising it again only
counts and refreshes the evidence (deduplication). Lifecycle: raised -> acknowledged
(someone has seen it) -> cleared (the condition is gone, or an operator cleared it); each
transition records who and when. A cleared alarm is history; the next raise of the same
kind on the same subject opens a new alarm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any


class Severity(IntEnum):
    """How urgent an alarm is; higher is worse."""

    INFO = 1
    WARNING = 2
    MAJOR = 3
    CRITICAL = 4


class AlarmState(StrEnum):
    """Where an alarm is in its life."""

    RAISED = "raised"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"


@dataclass
class Alarm:
    """One alarm. Example: ``Alarm(7, "command_failed", "B01-02-03.em", None, Severity.MAJOR,
    1767225600.0, {"command": "c-12", "reported_relay_closed": 1})``."""

    id: int  #: sequence number, unique in the store
    kind: str  #: what is wrong: offline, low_balance_1, command_failed, leak, ...
    twin: str | None  #: the twin it is about, if any
    account: str | None  #: the account it is about, if any
    severity: Severity  #: how urgent
    start: float  #: UTC epoch seconds it was first raised
    evidence: dict[str, Any] = field(default_factory=dict)  #: the figures that fired it
    state: AlarmState = AlarmState.RAISED  #: raised, acknowledged or cleared
    count: int = 1  #: how many times the condition was raised while open
    last_seen: float = 0.0  #: UTC epoch seconds of the latest raise
    history: list[tuple[str, float, str]] = field(default_factory=list)  #: (state, when, who)

    def __post_init__(self) -> None:
        if self.twin is None and self.account is None:
            raise ValueError(f"alarm {self.kind}: name a twin or an account")
        if not self.last_seen:
            self.last_seen = self.start
        if not self.history:
            self.history.append((AlarmState.RAISED.value, self.start, "platform"))

    @property
    def subject(self) -> tuple[str, str]:
        """What deduplication keys on: (kind, twin or account)."""
        return (self.kind, self.twin or f"account:{self.account}")

    @property
    def open(self) -> bool:
        """True until cleared."""
        return self.state is not AlarmState.CLEARED


class AlarmBook:
    """The open and past alarms, with deduplication. Example::

        book = AlarmBook()
        alarm, new = book.raise_("offline", twin="B01-01-01.em", severity=Severity.WARNING,
                                 at=now, evidence={"silent_s": 3600})
    """

    def __init__(self, alarms: list[Alarm] | None = None) -> None:
        self.alarms: dict[int, Alarm] = {a.id: a for a in alarms or []}
        self._open: dict[tuple[str, str], int] = {a.subject: a.id for a in self.alarms.values() if a.open}
        self._next = max(self.alarms, default=0) + 1

    def raise_(self, kind: str, *, at: float, severity: Severity = Severity.WARNING, twin: str | None = None,
               account: str | None = None, evidence: dict[str, Any] | None = None) -> tuple[Alarm, bool]:
        """Raise an alarm, or refresh the open one on the same subject. Returns the alarm
        and True when it is new."""
        subject = (kind, twin or f"account:{account}")
        existing = self._open.get(subject)
        if existing is not None:
            alarm = self.alarms[existing]
            alarm.count += 1
            alarm.last_seen = at
            alarm.evidence = dict(evidence or alarm.evidence)
            alarm.severity = max(alarm.severity, Severity(severity))
            return alarm, False
        alarm = Alarm(self._next, kind, twin, account, Severity(severity), at, dict(evidence or {}))
        self._next += 1
        self.alarms[alarm.id] = alarm
        self._open[subject] = alarm.id
        return alarm, True

    def acknowledge(self, alarm_id: int, *, by: str, at: float) -> Alarm:
        """Mark an alarm seen. Acknowledging a cleared alarm is refused."""
        alarm = self.get(alarm_id)
        if not alarm.open:
            raise ValueError(f"alarm {alarm_id} is cleared; nothing to acknowledge")
        if alarm.state is AlarmState.RAISED:
            alarm.state = AlarmState.ACKNOWLEDGED
            alarm.history.append((AlarmState.ACKNOWLEDGED.value, at, by))
        return alarm

    def clear(self, alarm_id: int, *, by: str, at: float) -> Alarm:
        """Close an alarm: its condition is gone (by='platform') or an operator says so."""
        alarm = self.get(alarm_id)
        if alarm.open:
            alarm.state = AlarmState.CLEARED
            alarm.history.append((AlarmState.CLEARED.value, at, by))
            self._open.pop(alarm.subject, None)
        return alarm

    def clear_subject(self, kind: str, *, at: float, twin: str | None = None,
                      account: str | None = None) -> Alarm | None:
        """Clear the open alarm of this kind on this subject, if any (the condition ended)."""
        alarm_id = self._open.get((kind, twin or f"account:{account}"))
        return None if alarm_id is None else self.clear(alarm_id, by="platform", at=at)

    def get(self, alarm_id: int) -> Alarm:
        """The alarm with this id; KeyError names it."""
        try:
            return self.alarms[alarm_id]
        except KeyError:
            raise KeyError(f"no alarm {alarm_id}") from None

    def open_alarms(self) -> list[Alarm]:
        """Alarms not cleared, worst first, then oldest first."""
        return sorted((a for a in self.alarms.values() if a.open), key=lambda a: (-a.severity, a.start, a.id))
