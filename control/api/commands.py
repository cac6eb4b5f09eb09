"""/api/commands: remote relay and valve commands, one or a batch, and their progress."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from control.api.deps import Operator, Viewer, get_platform
from control.api.errors import AUTH, errors
from control.auth import Principal
from control.commands import DEFAULT_DEADLINE_S, OPERATOR_ACTIONS, CommandError

router = APIRouter(prefix="/api/commands", tags=["commands"], responses=AUTH)

State = Literal["created", "sent", "confirmed", "failed", "expired"]
COMMAND_EXAMPLE: dict[str, Any] = {
    "id": "c-1a2b3c4d5e6f", "twin": "B01-02-03.em", "action": "relay_open", "field": "relay_closed", "value": 0,
    "requested_by": "alice", "source": "operator", "created": 1772445600.0, "deadline": 1772446800.0,
    "state": "confirmed", "reason": None, "sent": 1772445600.0, "done": 1772445660.0, "batch": None,
    "events": [{"state": "created", "at": 1772445600.0, "by": "alice", "reason": None},
               {"state": "sent", "at": 1772445600.0, "by": "platform", "reason": None},
               {"state": "confirmed", "at": 1772445660.0, "by": "device", "reason": None}]}


class CommandEvent(BaseModel):
    """One transition of a command."""

    state: State
    at: float
    by: str
    reason: str | None = None


class CommandOut(BaseModel):
    """A command: what was asked of which twin, by whom, and where it is now (created,
    sent, confirmed, failed or expired), with every transition. Times are UTC epoch
    seconds of the platform clock."""

    model_config = ConfigDict(json_schema_extra={"examples": [COMMAND_EXAMPLE]})

    id: str
    twin: str
    action: str
    field: str
    value: int
    requested_by: str
    source: str = Field(description="operator, policy, batch, platform or protocol")
    created: float
    deadline: float
    state: State
    reason: str | None
    sent: float | None
    done: float | None
    batch: str | None
    events: list[CommandEvent]


class BatchOut(BaseModel):
    """The commands of a batch, one per twin."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"batch": "b-1772445600-2-alice", "commands": [COMMAND_EXAMPLE]}]})

    batch: str
    commands: list[CommandOut]


class CommandRequest(BaseModel):
    """Ask a twin to do something: relay_open (trip), relay_close, valve_close, valve_open."""

    twin: str = Field(examples=["B01-02-03.em"])
    action: str = Field(examples=["relay_open"], description=f"one of {', '.join(OPERATOR_ACTIONS)}")
    deadline_s: float = Field(DEFAULT_DEADLINE_S, gt=0, le=86400,
                              description="platform seconds the device has to confirm")


class BatchRequest(BaseModel):
    """The same action on many twins, each its own command."""

    twins: list[str] = Field(min_length=1, max_length=10000, examples=[["B01-01-01.vl", "B01-01-02.vl"]])
    action: str = Field(examples=["valve_close"])
    deadline_s: float = Field(DEFAULT_DEADLINE_S, gt=0, le=86400)


@router.post("", status_code=201, summary="Send one command (operator)", response_model=CommandOut,
             responses=errors(400))
async def create_command(request: Request, body: CommandRequest, who: Principal = Operator) -> dict[str, Any]:
    """Writes the twin's desired state and the device's control point; the command then
    goes from `sent` to `confirmed` when the device reports it, or `failed` at its
    deadline. Example body: `{"twin": "B01-02-03.em", "action": "relay_open"}`."""
    platform = get_platform(request)
    async with platform.lock:
        try:
            command = platform.commands.create(body.twin, body.action, by=who.name, source="operator",
                                               now=platform.now(), deadline_s=body.deadline_s)
        except CommandError as err:
            raise HTTPException(400, str(err)) from None
    return command.as_dict()


@router.post("/batch", status_code=201, summary="Send one action to many twins (operator)", response_model=BatchOut,
             responses=errors(400))
async def create_batch(request: Request, body: BatchRequest, who: Principal = Operator) -> dict[str, Any]:
    """Every twin is checked first: one bad twin refuses the whole batch, naming it.
    Example body: `{"twins": ["B01-01-01.vl", "B01-01-02.vl"], "action": "valve_close"}`."""
    platform = get_platform(request)
    spec = OPERATOR_ACTIONS.get(body.action)
    if spec is None:
        raise HTTPException(400, f"unknown action {body.action!r}; use one of {', '.join(OPERATOR_ACTIONS)}")
    for twin in body.twins:
        known = platform.twin_specs.get(twin)
        if known is None or known.kind is not spec.kind:
            raise HTTPException(400, f"{twin!r} is not a {spec.kind.value} twin of this site")
    async with platform.lock:
        now = platform.now()
        batch = f"b-{int(now)}-{len(body.twins)}-{who.name}"
        made = [platform.commands.create(t, body.action, by=who.name, source="batch", now=now,
                                         deadline_s=body.deadline_s, batch=batch) for t in body.twins]
    return {"batch": batch, "commands": [c.as_dict() for c in made]}


@router.get("", dependencies=[Viewer], summary="Recent commands", response_model=list[CommandOut])
async def list_commands(request: Request, twin: str | None = Query(None, examples=["B01-02-03.em"]),
                        state: State | None = None, batch: str | None = None,
                        limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """Newest first, filtered by twin, state and batch (among the latest 5,000).
    Example: `GET /api/commands?twin=B01-02-03.em`, `GET /api/commands?state=failed`."""
    platform = get_platform(request)
    async with platform.lock:  # the tick thread writes the same store
        recent = platform.commands.recent(limit if state is None and batch is None else 5000, twin)
        chosen = [c for c in recent
                  if (state is None or c.state.value == state) and (batch is None or c.batch == batch)]
        return [c.as_dict() for c in chosen[:limit]]


@router.get("/{command_id}", dependencies=[Viewer], summary="One command and its progress", response_model=CommandOut,
            responses=errors(404))
async def get_command(request: Request, command_id: str) -> dict[str, Any]:
    """Its state and every transition with when and who. Example: `GET /api/commands/c-1a2b3c4d5e6f`."""
    platform = get_platform(request)
    async with platform.lock:
        try:
            return platform.commands.get(command_id).as_dict()
        except KeyError:
            raise HTTPException(404, f"no command {command_id!r}") from None
