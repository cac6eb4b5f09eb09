"""Batch and scheduled tasks: one action on a set of twins, now, at a time, or repeated.

A task picks its twins by list, or by building (and floor) and kind, when it runs, so a
repeated task follows the site as it is. Each run is keyed by the time it was scheduled
for: the run's row is written before any of its items, so a run happens at most once for
that time, even across a crash; a run cut short by a crash is finished on restart, item
by item, without repeating an item (each item is keyed by run and twin). Each item
records the command it made; the command's lifecycle is the item's outcome.

Actions are the command actions (relay and valve) on twins, and actions on accounts that
other parts register with `register_account_action` (billing registers top-ups and tariff
changes); an account task selects accounts by list, or by the rooms of a building and
floor.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from control.commands import OPERATOR_ACTIONS, CommandBook, CommandError
from control.store import Store, as_dict
from twin.model import Kind, Site

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, action TEXT NOT NULL, selector TEXT NOT NULL,
    first_run REAL NOT NULL, repeat_s REAL, next_run REAL, created_by TEXT NOT NULL, created REAL NOT NULL,
    state TEXT NOT NULL, deadline_s REAL NOT NULL, params TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS task_runs (
    task TEXT NOT NULL, run_for REAL NOT NULL, started REAL NOT NULL, finished REAL, items INTEGER,
    PRIMARY KEY (task, run_for)
);
CREATE TABLE IF NOT EXISTS task_items (
    task TEXT NOT NULL, run_for REAL NOT NULL, twin TEXT NOT NULL, command TEXT, error TEXT, outcome TEXT,
    PRIMARY KEY (task, run_for, twin)
);
"""


class TaskError(ValueError):
    """A task that cannot be made; the message says why."""


@dataclass(frozen=True, slots=True)
class Selector:
    """Which twins (or accounts) a task acts on. Example: ``Selector(building="B01", floor=3,
    kind="valve")``; for an account action ``Selector(accounts=("A-B01-03-01",))``."""

    twins: tuple[str, ...] = ()  #: explicit twin ids; if given, the rest is ignored
    building: str | None = None  #: every twin of this building ...
    floor: int | None = None  #: ... on this floor
    kind: str | None = None  #: ... of this kind
    accounts: tuple[str, ...] = ()  #: explicit account ids, for account actions

    def resolve_accounts(self, site: Site) -> list[str]:
        """The account ids this selects now: the list, or the accounts of the rooms of
        the building and floor, in site order."""
        if self.accounts:
            return list(self.accounts)
        seen: dict[str, None] = {}
        for room in site.rooms:
            if room.account and (self.building is None or room.building == self.building) and (
                    self.floor is None or room.floor == self.floor):
                seen[room.account] = None
        return list(seen)

    def resolve(self, site: Site, known: dict[str, Any]) -> list[str]:
        """The twin ids this selects now, in site order."""
        if self.twins:
            return list(self.twins)
        return [t.id for t in site.twins
                if (self.building is None or t.building == self.building)
                and (self.floor is None or t.floor == self.floor)
                and (self.kind is None or t.kind.value == self.kind) and t.role == "sub"]


AccountActionRun = Callable[[str, dict[str, Any], float, str], str]
#: ^ (account id, the task's params, now, who) -> outcome text; raises ValueError to refuse


class TaskBook:
    """Tasks in the store, and running the ones that are due."""

    def __init__(self, store: Store, site: Site, commands: CommandBook) -> None:
        self.store = store
        self.site = site
        self.known = {t.id: t for t in site.twins}
        self.commands = commands
        self.account_actions: dict[str, AccountActionRun] = {}
        self.accounts = {a.id for a in site.accounts}
        store.db.executescript(SCHEMA)

    def register_account_action(self, name: str, run: AccountActionRun) -> None:
        """Let tasks run `name` on accounts (billing: top-up, tariff change)."""
        if name in OPERATOR_ACTIONS:
            raise ValueError(f"{name!r} is a command action")
        self.account_actions[name] = run

    def create(self, name: str, action: str, selector: Selector, *, by: str, now: float,
               run_at: float | None = None, repeat_s: float | None = None, deadline_s: float = 1200.0,
               params: dict[str, Any] | None = None) -> str:
        """Record a task; TaskError names what is wrong. Returns the task id."""
        if repeat_s is not None and not repeat_s >= 60:
            raise TaskError("repeat_s must be at least 60 seconds")
        if action in self.account_actions:
            accounts = selector.resolve_accounts(self.site)
            if not accounts:
                raise TaskError("the selection holds no account: check the accounts, building and floor")
            unknown = [a for a in accounts if a not in self.accounts]
            if unknown:
                raise TaskError(f"{unknown[0]!r} is not an account of this site")
            return self._insert(name, action, {"accounts": accounts, "building": selector.building,
                                               "floor": selector.floor}, by, now, run_at, repeat_s, deadline_s, params)
        spec = OPERATOR_ACTIONS.get(action)
        if spec is None:
            known = ", ".join([*OPERATOR_ACTIONS, *self.account_actions])
            raise TaskError(f"unknown action {action!r}; use one of {known}")
        kind = selector.kind or spec.kind.value
        if kind != spec.kind.value:
            raise TaskError(f"{action} acts on {spec.kind.value} twins, not {kind}")
        selector = Selector(selector.twins, selector.building, selector.floor, kind)
        twins = selector.resolve(self.site, self.known)
        if not twins:
            raise TaskError("the selection holds no twin: check the building, floor and kind")
        for twin in twins:
            t = self.known.get(twin)
            if t is None or t.kind is not Kind(kind):
                raise TaskError(f"{twin!r} is not a {kind} twin of this site")
        return self._insert(name, action, {"twins": list(selector.twins), "building": selector.building,
                                           "floor": selector.floor, "kind": kind},
                            by, now, run_at, repeat_s, deadline_s, params)

    def _insert(self, name: str, action: str, selector: dict[str, Any], by: str, now: float, run_at: float | None,
                repeat_s: float | None, deadline_s: float, params: dict[str, Any] | None) -> str:
        first = now if run_at is None else run_at
        task_id = f"t-{uuid.uuid4().hex[:10]}"
        with self.store.write() as db:
            db.execute("INSERT INTO tasks(id, name, action, selector, first_run, repeat_s, next_run, created_by,"
                       " created, state, deadline_s, params) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'scheduled', ?, ?)",
                       (task_id, name, action, json.dumps(selector), first, repeat_s, first, by, now, deadline_s,
                        json.dumps(params or {})))
        return task_id

    def cancel(self, task_id: str) -> None:
        """Stop a task from running again; KeyError if unknown."""
        with self.store.write() as db:
            cancelled = db.execute("UPDATE tasks SET state = 'cancelled', next_run = NULL WHERE id = ?", (task_id,))
            if cancelled.rowcount == 0:
                raise KeyError(f"no task {task_id!r}")

    def run_due(self, now: float) -> int:
        """Finish runs a crash cut short, then start every run that is due; returns the
        number of items acted on."""
        done = 0
        for row in self.store.db.execute("SELECT task, run_for FROM task_runs WHERE finished IS NULL").fetchall():
            done += self._run(row["task"], row["run_for"], now)
        for row in self.store.db.execute("SELECT id, next_run, repeat_s FROM tasks WHERE state = 'scheduled'"
                                         " AND next_run <= ?", (now,)).fetchall():
            run_for = row["next_run"]
            with self.store.write() as db:
                fresh = db.execute("INSERT OR IGNORE INTO task_runs(task, run_for, started) VALUES (?, ?, ?)",
                                   (row["id"], run_for, now)).rowcount == 1
                if row["repeat_s"]:
                    behind = max(0.0, now - run_for)  # skip the runs missed while down; run once for now
                    steps = int(behind // row["repeat_s"]) + 1
                    db.execute("UPDATE tasks SET next_run = ? WHERE id = ?",
                               (run_for + steps * row["repeat_s"], row["id"]))
                else:
                    db.execute("UPDATE tasks SET state = 'done', next_run = NULL WHERE id = ?", (row["id"],))
            if fresh:
                done += self._run(row["id"], run_for, now)
        return done

    def _run(self, task_id: str, run_for: float, now: float) -> int:
        task = as_dict(self.store.db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone())
        sel = json.loads(task["selector"])
        account_action = self.account_actions.get(task["action"])
        if "accounts" in sel:
            targets = sel["accounts"]
        else:
            targets = Selector(tuple(sel["twins"]), sel["building"], sel["floor"], sel["kind"]).resolve(
                self.site, self.known)
        have = {r["twin"] for r in self.store.db.execute(
            "SELECT twin FROM task_items WHERE task = ? AND run_for = ?", (task_id, run_for))}
        acted = 0
        params = json.loads(task["params"])
        for target in targets:
            if target in have:
                continue
            command_id, error, outcome = None, None, None
            try:
                if "accounts" in sel:
                    if account_action is None:
                        raise ValueError(f"action {task['action']!r} is not available in this platform")
                    outcome = account_action(target, params, now, f"task:{task_id}")
                else:
                    command = self.commands.create(target, task["action"], by=f"task:{task_id}", source="batch",
                                                   now=now, deadline_s=task["deadline_s"], batch=task_id)
                    command_id = command.id
            except (CommandError, ValueError) as err:
                error = str(err)
            with self.store.write() as db:
                db.execute("INSERT INTO task_items(task, run_for, twin, command, error, outcome)"
                           " VALUES (?, ?, ?, ?, ?, ?)", (task_id, run_for, target, command_id, error, outcome))
            acted += 1
        with self.store.write() as db:
            db.execute("UPDATE task_runs SET finished = ?, items = ? WHERE task = ? AND run_for = ?",
                       (now, len(targets), task_id, run_for))
        return acted

    def get(self, task_id: str) -> dict[str, Any]:
        """A task with its runs and each item's outcome (the state of its command)."""
        row = self.store.db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise KeyError(f"no task {task_id!r}")
        task = as_dict(row)
        task["selector"] = json.loads(task["selector"])
        task["params"] = json.loads(task["params"])
        runs = []
        for run in self.store.db.execute("SELECT * FROM task_runs WHERE task = ? ORDER BY run_for", (task_id,)):
            items = []
            rows = self.store.db.execute("SELECT twin, command, error, outcome FROM task_items WHERE task = ?"
                                         " AND run_for = ? ORDER BY rowid", (task_id, run["run_for"])).fetchall()
            for item in rows:
                outcome = item["outcome"] or (item["error"] and "refused")
                if item["command"]:
                    command = self.commands.get(item["command"])
                    outcome = command.state.value
                items.append({"twin": item["twin"], "command": item["command"], "outcome": outcome,
                              "error": item["error"]})
            runs.append({**as_dict(run), "items": items})
        task["runs"] = runs
        return task

    def list(self) -> list[dict[str, Any]]:
        """Every task, newest first, without items."""
        rows = self.store.db.execute("SELECT * FROM tasks ORDER BY created DESC").fetchall()
        out = []
        for row in rows:
            task = as_dict(row)
            task["selector"] = json.loads(task["selector"])
            count = self.store.db.execute("SELECT COUNT(*) FROM task_runs WHERE task = ?", (row["id"],)).fetchone()
            task["runs"] = count[0]
            out.append(task)
        return out
