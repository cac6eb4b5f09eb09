"""Alarm records: deduplication and lifecycle."""

from __future__ import annotations

import pytest

from twin.alarms import AlarmBook, AlarmState, Severity


def test_raising_again_while_open_only_counts():
    """An alarm raised again on the same subject while open is the same alarm, counted,
    with the latest evidence and the worst severity."""
    book = AlarmBook()
    a, new = book.raise_("offline", twin="B01-01-01.em", at=100.0, evidence={"silent_s": 900})
    b, again = book.raise_("offline", twin="B01-01-01.em", at=200.0, severity=Severity.MAJOR,
                           evidence={"silent_s": 1800})
    assert new and not again and a is b
    assert (b.count, b.last_seen, b.evidence, b.severity) == (2, 200.0, {"silent_s": 1800}, Severity.MAJOR)
    other, new_other = book.raise_("offline", twin="B01-01-02.em", at=200.0)
    assert new_other and other.id != a.id


def test_lifecycle_records_who_and_when_and_a_cleared_alarm_reopens_new():
    """Raised -> acknowledged -> cleared, each with who and when; after clearing, the
    same condition opens a new alarm; acknowledging a cleared alarm is refused."""
    book = AlarmBook()
    a, _ = book.raise_("low_balance_1", account="A-1", at=10.0)
    book.acknowledge(a.id, by="alice", at=20.0)
    assert a.state is AlarmState.ACKNOWLEDGED
    book.clear_subject("low_balance_1", account="A-1", at=30.0)
    assert a.state is AlarmState.CLEARED
    assert [h[0] for h in a.history] == ["raised", "acknowledged", "cleared"]
    assert a.history[1][1:] == (20.0, "alice")
    with pytest.raises(ValueError, match="is cleared"):
        book.acknowledge(a.id, by="alice", at=40.0)
    b, new = book.raise_("low_balance_1", account="A-1", at=50.0)
    assert new and b.id != a.id
    assert [x.id for x in book.open_alarms()] == [b.id]


def test_an_alarm_names_its_subject():
    """An alarm about nothing is refused."""
    with pytest.raises(ValueError, match="name a twin or an account"):
        AlarmBook().raise_("odd", at=1.0)
