"""/api/tasks: batch and scheduled tasks, and each item's outcome."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from control.api.deps import Operator, Viewer, get_platform
from control.auth import Principal
from control.batch import Selector, TaskError

router = APIRouter(prefix="/api/tasks", tags=["tasks"])


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


@router.post("", status_code=201, summary="Create a batch or scheduled task")
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


@router.get("", dependencies=[Viewer], summary="Tasks, newest first")
async def list_tasks(request: Request) -> list[dict[str, Any]]:
    """Each with its schedule and number of runs."""
    return get_platform(request).batch.list()


@router.get("/{task_id}", dependencies=[Viewer], summary="A task, its runs and each item's outcome")
async def get_task(request: Request, task_id: str) -> dict[str, Any]:
    """An item's outcome is its command's state: sent, confirmed, failed or expired."""
    platform = get_platform(request)
    async with platform.lock:
        try:
            return platform.batch.get(task_id)
        except KeyError:
            raise HTTPException(404, f"no task {task_id!r}") from None


@router.delete("/{task_id}", summary="Cancel a task")
async def cancel_task(request: Request, task_id: str, who: Principal = Operator) -> dict[str, Any]:
    """It will not run again; commands already sent go on."""
    platform = get_platform(request)
    async with platform.lock:
        try:
            platform.batch.cancel(task_id)
        except KeyError:
            raise HTTPException(404, f"no task {task_id!r}") from None
    return {"cancelled": task_id, "by": who.name}
