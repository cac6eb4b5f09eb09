"""Batch and scheduled tasks: selection, once per scheduled time, repeats, crash repair."""

from __future__ import annotations

from datetime import datetime

import pytest

from control.batch import Selector, TaskBook, TaskError
from control.commands import CommandBook
from control.store import Store
from devices.sim.world import World
from twin.model import Kind


@pytest.fixture
def rig(scenario_factory, tmp_path):
    scenario = scenario_factory(buildings=2, floors=3, rooms=2)
    world = World(scenario, days=2, live=True, start=datetime(2026, 3, 2))
    world.begin(lambda day: None)
    store = Store(tmp_path / "control.sqlite")
    valves = {t.id: t.valve_of for t in scenario.site.twins if t.kind is Kind.VALVE}
    commands = CommandBook(store, world.state, world, valves, world.interval_s, lambda c: None)

    class Rig:
        def __init__(self) -> None:
            self.world, self.store, self.commands = world, store, commands
            self.tasks = TaskBook(store, scenario.site, commands)

        def now(self) -> float:
            return world.start_utc + world.now_s

    return Rig()


def test_a_task_acts_on_its_selection_and_records_each_outcome(rig):
    """A task on a building's floor closes each valve there; every item records its
    command, whose lifecycle is the item's outcome."""
    task_id = rig.tasks.create("close B01 floor 2", "valve_close", Selector(building="B01", floor=2),
                               by="alice", now=rig.now())
    assert rig.tasks.run_due(rig.now()) == 2
    rig.world.advance_to(rig.world.now_s + 3 * 900)
    rig.commands.check(rig.now())
    task = rig.tasks.get(task_id)
    items = task["runs"][0]["items"]
    assert [i["twin"] for i in items] == ["B01-02-01.vl", "B01-02-02.vl"]
    assert {i["outcome"] for i in items} <= {"confirmed", "sent"}
    assert task["state"] == "done"
    assert rig.world.state.twin("B01-02-01.vl").reported["open"] == 0
    assert rig.world.state.twin("B01-01-01.vl").reported["open"] == 1


def test_a_scheduled_task_runs_once_for_its_time(rig):
    """A task for a later time does not run before it, runs once at it, never again."""
    at = rig.now() + 3600
    task_id = rig.tasks.create("later", "relay_open", Selector(twins=("B02-03-02.em",)), by="a", now=rig.now(),
                               run_at=at)
    assert rig.tasks.run_due(at - 1) == 0
    assert rig.tasks.run_due(at) == 1
    assert rig.tasks.run_due(at + 60) == 0
    assert len(rig.tasks.get(task_id)["runs"]) == 1


def test_a_repeated_task_skips_what_it_missed_while_down(rig):
    """A repeated task runs at each period; after an outage it runs once, not once per
    missed period, and keeps its rhythm."""
    t0 = rig.now()
    task_id = rig.tasks.create("hourly", "relay_close", Selector(twins=("B01-01-01.em",)), by="a", now=t0,
                               repeat_s=3600)
    rig.tasks.run_due(t0)
    rig.tasks.run_due(t0 + 3600)
    rig.tasks.run_due(t0 + 5 * 3600 + 10)
    task = rig.tasks.get(task_id)
    assert [r["run_for"] - t0 for r in task["runs"]] == [0, 3600, 7200]
    assert task["next_run"] == t0 + 6 * 3600


def test_a_run_cut_short_is_finished_without_repeating_items(rig):
    """After a crash in the middle of a run, the next start finishes its items and
    repeats none."""
    t0 = rig.now()
    task_id = rig.tasks.create("cut", "valve_close", Selector(building="B02"), by="a", now=t0)
    with rig.store.write() as db:  # as if the process died after the run's first item
        db.execute("INSERT INTO task_runs(task, run_for, started) VALUES (?, ?, ?)", (task_id, t0, t0))
        db.execute("UPDATE tasks SET state = 'done', next_run = NULL WHERE id = ?", (task_id,))
        db.execute("INSERT INTO task_items(task, run_for, twin, command) VALUES (?, ?, ?, NULL)",
                   (task_id, t0, "B02-01-01.vl"))
    restarted = TaskBook(rig.store, rig.world.scenario.site, rig.commands)
    assert restarted.run_due(t0 + 5) == 5
    items = restarted.get(task_id)["runs"][0]["items"]
    assert sorted(i["twin"] for i in items) == sorted(f"B02-0{f}-0{r}.vl" for f in (1, 2, 3) for r in (1, 2))
    assert restarted.run_due(t0 + 10) == 0


def test_bad_tasks_are_refused(rig):
    """An unknown action, a selection with no twin and a twin of the wrong kind are refused."""
    with pytest.raises(TaskError, match="unknown action"):
        rig.tasks.create("x", "reboot", Selector(building="B01"), by="a", now=rig.now())
    with pytest.raises(TaskError, match="holds no twin"):
        rig.tasks.create("x", "valve_close", Selector(building="B09"), by="a", now=rig.now())
    with pytest.raises(TaskError, match="is not a valve twin"):
        rig.tasks.create("x", "valve_close", Selector(twins=("B01-01-01.em",)), by="a", now=rig.now())


def test_account_actions_registered_by_other_parts_run_per_account(rig):
    """An action another part registers (billing's top-up) runs once per selected
    account: by list, or the accounts of a building's floor; its text is the outcome,
    and a refusal is recorded per account."""
    calls = []

    def top_up(account: str, params: dict, now: float, by: str) -> str:
        if account.endswith("02"):
            raise ValueError("account closed")
        calls.append((account, params["amount_fen"], by))
        return f"credited {params['amount_fen']} fen"

    rig.tasks.register_account_action("topup", top_up)
    task_id = rig.tasks.create("gift", "topup", Selector(building="B01", floor=3), by="finance", now=rig.now(),
                               params={"amount_fen": 5000})
    rig.tasks.run_due(rig.now())
    items = rig.tasks.get(task_id)["runs"][0]["items"]
    assert [(i["twin"], i["outcome"]) for i in items] == [("A-B01-03-01", "credited 5000 fen"),
                                                         ("A-B01-03-02", "refused")]
    assert items[1]["error"] == "account closed"
    assert calls == [("A-B01-03-01", 5000, f"task:{task_id}")]
    with pytest.raises(TaskError, match="not an account"):
        rig.tasks.create("x", "topup", Selector(accounts=("A-NOPE",)), by="a", now=rig.now())
    with pytest.raises(TaskError, match="valve_open, topup"):
        rig.tasks.create("x", "refund", Selector(accounts=("A-B01-01-01",)), by="a", now=rig.now())
