"""/api/keys and /api/users: access management (admin)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from control.api.deps import Admin, get_platform
from control.api.errors import AUTH, errors
from control.auth import Role

router = APIRouter(prefix="/api", tags=["access"], dependencies=[Admin], responses=AUTH)


class KeyRequest(BaseModel):
    """A new API key for a system or a person."""

    name: str = Field(min_length=1, max_length=80, examples=["scada-gateway"])
    role: str = Field(examples=["viewer"], description="viewer, operator or admin")


class UserRequest(BaseModel):
    """A new user who signs in with a password."""

    name: str = Field(min_length=1, max_length=80, examples=["alice"])
    role: str = Field(examples=["operator"])
    password: str = Field(min_length=10, max_length=200)


class KeyOut(BaseModel):
    """An API key as stored: never its secret. Times are wall-clock UTC epoch seconds."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "1a2b3c4d", "name": "scada-gateway", "role": "viewer", "created": 1772445600.0, "revoked": None}]})

    id: str
    name: str
    role: Literal["viewer", "operator", "admin"]
    created: float
    revoked: float | None


class NewKey(BaseModel):
    """A new key, shown this once: keep `key`, only its hash is stored."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "scada-gateway", "role": "viewer", "key": "mt_1a2b3c4d_Zx9..."}]})

    name: str
    role: Literal["viewer", "operator", "admin"]
    key: str = Field(description="send as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")


class Revoked(BaseModel):
    """A revoked key."""

    revoked: str


class UserOut(BaseModel):
    """A user: never the password or its hash."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"name": "alice", "role": "operator", "created": 1772445600.0, "disabled": False}]})

    name: str
    role: Literal["viewer", "operator", "admin"]
    created: float
    disabled: bool


class NewUser(BaseModel):
    """A user just added."""

    name: str
    role: Literal["viewer", "operator", "admin"]


@router.get("/keys", summary="API keys, never their secrets (admin)", response_model=list[KeyOut])
async def list_keys(request: Request) -> list[dict[str, Any]]:
    """Every key with its name, role, creation and revocation time."""
    return get_platform(request).auth.keys()


@router.post("/keys", status_code=201, summary="Make an API key (admin)", response_model=NewKey,
             responses=errors(400))
async def create_key(request: Request, body: KeyRequest) -> dict[str, Any]:
    """Returns the key once; only its hash is kept. Example body: `{"name": "scada", "role": "viewer"}`."""
    try:
        role = Role.parse(body.role)
    except ValueError as err:
        raise HTTPException(400, str(err)) from None
    return {"name": body.name, "role": role.name.lower(), "key": get_platform(request).auth.create_key(body.name, role)}


@router.delete("/keys/{key_id}", summary="Revoke an API key (admin)", response_model=Revoked, responses=errors(404))
async def revoke_key(request: Request, key_id: str) -> dict[str, Any]:
    """The key stops working at once."""
    try:
        get_platform(request).auth.revoke_key(key_id)
    except KeyError as err:
        raise HTTPException(404, str(err.args[0])) from None
    return {"revoked": key_id}


@router.get("/users", summary="Users, never their passwords (admin)", response_model=list[UserOut])
async def list_users(request: Request) -> list[dict[str, Any]]:
    """Every user with role and state."""
    return get_platform(request).auth.users()


@router.post("/users", status_code=201, summary="Add a user (admin)", response_model=NewUser, responses=errors(400))
async def add_user(request: Request, body: UserRequest) -> dict[str, Any]:
    """Example body: `{"name": "alice", "role": "operator", "password": "a long passphrase"}`."""
    try:
        role = Role.parse(body.role)
        await run_in_threadpool(get_platform(request).auth.add_user, body.name, role, body.password)  # scrypt
    except ValueError as err:
        raise HTTPException(400, str(err)) from None
    return {"name": body.name, "role": role.name.lower()}
