"""Commands against the live simulated world: confirmation, failure, restart."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from control.commands import CommandBook, CommandError, CommandState
from control.store import Store
from devices.sim.world import World
from scenarios.schema import Injection, When
from twin.model import Kind

START = datetime(2026, 3, 2)


class Rig:
    """A live world, a store and a command book, stepped by hand."""

    def __init__(self, scenario, path, injections_ok: bool = True) -> None:
        self.world = World(scenario, days=2, live=True, start=START)
        self.world.begin(lambda day: None)
        self.store = Store(path)
        self.problems = []
        valves = {t.id: t.valve_of for t in scenario.site.twins if t.kind is Kind.VALVE}
        self.book = CommandBook(self.store, self.world.state, self.world, valves, self.world.interval_s,
                                self.problems.append)

    def now(self) -> float:
        return self.world.start_utc + self.world.now_s

    def run_for(self, seconds: float, check_every: float = 60.0) -> None:
        end = self.world.now_s + seconds
        while self.world.now_s < end:
            self.world.advance_to(min(self.world.now_s + check_every, end))
            self.book.check(self.now())


@pytest.fixture
def rig(scenario_factory, tmp_path):
    def make(injections=None):
        return Rig(scenario_factory(injections=injections, buildings=1), tmp_path / "control.sqlite")
    return make


def test_a_trip_is_confirmed_when_the_relay_opens_and_power_drops(rig):
    """A relay trip goes created -> sent -> confirmed once the meter reports the relay
    open and its power has dropped; each step is recorded with who and when."""
    r = rig()
    r.run_for(19 * 3600)
    twin = "B01-02-03.em"
    assert r.world.state.twin(twin).reported["power_w"] > 0
    command = r.book.create(twin, "relay_open", by="alice", source="operator", now=r.now())
    assert command.state is CommandState.SENT
    assert r.world.state.twin(twin).desired["relay_closed"] == 0
    r.run_for(180)
    done = r.book.get(command.id)
    assert done.state is CommandState.CONFIRMED
    assert [e["state"] for e in done.events] == ["created", "sent", "confirmed"]
    assert done.events[0]["by"] == "alice"
    assert r.problems == []


def test_a_valve_stuck_open_fails_at_its_deadline_with_an_alarm(rig):
    """A valve that reports closed while water still flows (here a leak behind a valve
    stuck open) fails at the deadline, with the reason, and raises the problem once."""
    stuck = Injection("B01-01-02.wm", "valve_stuck_open", When(offset=timedelta(0)))
    leak = Injection("B01-01-02.wm", "leak", When(offset=timedelta(0)), None, {"flow_lph": 20.0})
    r = rig([stuck, leak])
    r.run_for(8 * 3600)
    command = r.book.create("B01-01-02.vl", "valve_close", by="bob", source="operator", now=r.now(),
                            deadline_s=3600)
    healthy = r.book.create("B01-01-03.vl", "valve_close", by="bob", source="operator", now=r.now(),
                            deadline_s=3600)
    r.run_for(3700)
    failed = r.book.get(command.id)
    assert failed.state is CommandState.FAILED
    assert "flow continues" in failed.reason
    assert r.book.get(healthy.id).state is CommandState.CONFIRMED
    assert [p.id for p in r.problems] == [command.id]


def test_an_unreachable_meter_never_confirms(rig):
    """A meter that lost its comms never gets the write: the command fails at its
    deadline saying what the device still reports."""
    offline = Injection("B01-03-01.em", "offline", When(offset=timedelta(0)))
    r = rig([offline])
    r.run_for(3600)
    command = r.book.create("B01-03-01.em", "relay_open", by="carol", source="operator", now=r.now(),
                            deadline_s=600)
    r.run_for(700)
    failed = r.book.get(command.id)
    assert failed.state is CommandState.FAILED
    assert "reports relay_closed=1" in failed.reason
    assert r.problems and r.problems[0].id == command.id


def test_a_newer_command_supersedes_an_open_one(rig):
    """Asking again on the same point expires the older command (no alarm)."""
    r = rig()
    first = r.book.create("B01-01-01.em", "relay_open", by="a", source="operator", now=r.now())
    second = r.book.create("B01-01-01.em", "relay_close", by="b", source="operator", now=r.now())
    old = r.book.get(first.id)
    assert old.state is CommandState.EXPIRED and old.reason == f"superseded by {second.id}"
    assert r.problems == []


def test_commands_survive_a_restart(rig, tmp_path):
    """Open commands are read back after a restart: sent again before their deadline,
    expired with the reason after it."""
    r = rig()
    keep = r.book.create("B01-01-01.em", "relay_open", by="a", source="operator", now=r.now(), deadline_s=600)
    late = r.book.create("B01-01-02.em", "relay_open", by="a", source="operator", now=r.now(), deadline_s=60)
    r.store.close()
    r2 = rig()
    assert set(r2.book.open) == {keep.id, late.id}
    r2.book.resume(r.now() + 120)
    assert r2.book.get(late.id).state is CommandState.EXPIRED
    assert "while the platform was down" in r2.book.get(late.id).reason
    resent = r2.book.get(keep.id)
    assert resent.state is CommandState.SENT and [e["state"] for e in resent.events][-1] == "sent"
    assert r2.world.state.twin("B01-01-01.em").reported["relay_closed"] == 0


def test_bad_requests_say_what_is_wrong(rig):
    """Unknown actions, unknown twins and actions on the wrong kind of twin are refused."""
    r = rig()
    with pytest.raises(CommandError, match="unknown action 'explode'"):
        r.book.create("B01-01-01.em", "explode", by="a", source="operator", now=r.now())
    with pytest.raises(CommandError, match="no twin 'B09-01-01.em'"):
        r.book.create("B09-01-01.em", "relay_open", by="a", source="operator", now=r.now())
    with pytest.raises(CommandError, match="applies to valve twins"):
        r.book.create("B01-01-01.em", "valve_close", by="a", source="operator", now=r.now())


def test_a_deadline_waits_for_a_reading_taken_after_it(rig):
    """Past its deadline a command fails only once the devices were read after it: while
    the collector is behind (a fast clock on a loaded machine), the trip that the device
    carries out is confirmed by the late reading, not failed; with no reading at all it
    fails once as much time again has passed, saying so."""
    r = rig()
    r.run_for(19 * 3600)
    read_after: list[float] = [float("inf")]  # platform time from which the "collector" has read
    r.book.read_since = lambda t: read_after[0] <= t
    slow = r.book.create("B01-02-03.em", "relay_open", by="a", source="operator", now=r.now(), deadline_s=60)
    r.book.check(r.now() + 120)  # the clock is past the deadline, but nothing was read since it was sent
    assert r.book.get(slow.id).state is CommandState.SENT
    r.world.advance_to(r.world.now_s + 120)  # the late poll: the relay open, the power dropped
    read_after[0] = 0.0
    r.book.check(r.now())
    assert r.book.get(slow.id).state is CommandState.CONFIRMED
    assert r.problems == []
    offline = Injection("B01-03-01.em", "offline", When(offset=timedelta(0)))
    r2 = rig([offline])
    r2.run_for(3600)
    r2.book.read_since = lambda t: False  # the collector never completes a cycle
    never = r2.book.create("B01-03-01.em", "relay_open", by="a", source="operator", now=r2.now(), deadline_s=600)
    r2.run_for(900)
    assert r2.book.get(never.id).state is CommandState.SENT
    r2.run_for(400)  # past twice the deadline's window
    failed = r2.book.get(never.id)
    assert failed.state is CommandState.FAILED and "no poll of the devices completed" in failed.reason
