"""/api/tasks: batch and scheduled tasks, and each item's outcome."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from control.api.deps import Operator, Viewer, get_platform
from control.api.errors import AUTH, errors
from control.auth import Principal
from control.batch import Selector, TaskError

router = APIRouter(prefix="/api/tasks", tags=["tasks"], responses=AUTH)

TASK_EXAMPLE: dict[str, Any] = {
    "id": "t-5f3a9c2b", "name": "close B01 floor 3 valves", "action": "valve_close",
    "selector": {"twins": [], "building": "B01", "floor": 3, "kind": "valve"}, "first_run": 1772445600.0,
    "repeat_s": None, "next_run": None, "created_by": "alice", "created": 1772445600.0, "state": "done",
    "deadline_s": 1200.0, "params": {},
    "runs": [{"task": "t-5f3a9c2b", "run_for": 1772445600.0, "started": 1772445600.0, "finished": 1772445600.0,
              "items": [{"twin": "B01-03-01.vl", "command": "c-1a2b3c4d5e6f", "outcome": "confirmed",
                         "error": None}]}]}


class TaskItem(BaseModel):
    """One twin (or account) of a run: its command and outcome (the command's state:
    sent, confirmed, failed, expired; refused; or an account action's result)."""

    twin: str
    command: str | None
    outcome: str | None
    error: str | None


class TaskRun(BaseModel):
    """One run of a task and its items."""

    task: str
    run_for: float = Field(description="the scheduled time it ran for (UTC epoch seconds)")
    started: float
    finished: float | None
    items: list[TaskItem]


class TaskOut(BaseModel):
    """A batch or scheduled task: what it does to which selection, its schedule (UTC
    epoch seconds of the platform clock) and its runs: a count in the list, each run
    with its items in `GET /api/tasks/{id}`."""

    model_config = ConfigDict(json_schema_extra={"examples": [TASK_EXAMPLE]})

    id: str
    name: str
    action: str
    selector: dict[str, Any]
    first_run: float
    repeat_s: float | None
    next_run: float | None
    created_by: str
    created: float
    state: str
    deadline_s: float
    params: dict[str, Any]
    runs: int | list[TaskRun]


class CancelOut(BaseModel):
    """A cancelled task."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"cancelled": "t-5f3a9c2b", "by": "alice"}]})

    cancelled: str
    by: str


class TaskRequest(BaseModel):
    """One action on a set of twins: by list, or by building, floor and kind; now, at a
    site-local time, or repeated."""

    name: str = Field(min_length=1, max_length=120, examples=["close B01 floor 3 valves"])
    action: str = Field(examples=["valve_close"])
    twins: list[str] = Field(default_factory=list, max_length=100000)
    building: str | None = Field(None, examples=["B01"])
    floor: int | None = Field(None, examples=[3])
    kind: str | None = Field(None, examples=["valve"])
    accounts: list[str] = Field(default_factory=list, max_length=100000, description="for account actions")
    params: dict[str, Any] = Field(default_factory=dict, description="the action's parameters, e.g. an amount")
    run_at: datetime | None = Field(None, description="site-local time; omit to run now",
                                    examples=["2026-03-02T23:00:00"])
    repeat_s: float | None = Field(None, ge=60, description="run again every this many platform seconds")
    deadline_s: float = Field(1200.0, gt=0, le=86400)


@router.post("", status_code=201, summary="Create a batch or scheduled task (operator)", response_model=TaskOut,
             responses=errors(400))
async def create_task(request: Request, body: TaskRequest, who: Principal = Operator) -> dict[str, Any]:
    """Example body: `{"name": "night cut", "action": "relay_open", "building": "B02", "floor": 5}`."""
    platform = get_platform(request)
    run_at = None
    if body.run_at is not None:
        local = body.run_at.replace(tzinfo=platform.world.tz) if body.run_at.tzinfo is None else body.run_at
        run_at = local.timestamp()
    async with platform.lock:
        try:
            task_id = platform.batch.create(
                body.name, body.action,
                Selector(tuple(body.twins), body.building, body.floor, body.kind, tuple(body.accounts)),
                by=who.name, now=platform.now(), run_at=run_at, repeat_s=body.repeat_s, deadline_s=body.deadline_s,
                params=body.params)
        except TaskError as err:
            raise HTTPException(400, str(err)) from None
        return platform.batch.get(task_id)


@router.get("", dependencies=[Viewer], summary="Tasks, newest first", response_model=list[TaskOut])
async def list_tasks(request: Request) -> list[dict[str, Any]]:
    """Each with its schedule and number of runs."""
    platform = get_platform(request)
    async with platform.lock:
        return platform.batch.list()


@router.get("/{task_id}", dependencies=[Viewer], summary="A task, its runs and each item's outcome",
            response_model=TaskOut, responses=errors(404))
async def get_task(request: Request, task_id: str) -> dict[str, Any]:
    """An item's outcome is its command's state: sent, confirmed, failed or expired."""
    platform = get_platform(request)
    async with platform.lock:
        try:
            return platform.batch.get(task_id)
        except KeyError:
            raise HTTPException(404, f"no task {task_id!r}") from None


@router.delete("/{task_id}", summary="Cancel a task (operator)", response_model=CancelOut, responses=errors(404))
async def cancel_task(request: Request, task_id: str, who: Principal = Operator) -> dict[str, Any]:
    """It will not run again; commands already sent go on."""
    platform = get_platform(request)
    async with platform.lock:
        try:
            platform.batch.cancel(task_id)
        except KeyError:
            raise HTTPException(404, f"no task {task_id!r}") from None
    return {"cancelled": task_id, "by": who.name}
