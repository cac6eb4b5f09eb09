"""What every router depends on: the platform, and who is asking with which role.

Clients authenticate with an API key, as `Authorization: Bearer mt_...` or `X-API-Key:
mt_...`, or with a user name and password over HTTP Basic. No credentials: 401. A role too
low for the route: 403. The message never says which part of a credential was wrong.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from control.auth import AuthError, Principal, Role

if TYPE_CHECKING:
    from control.runtime import Platform


def get_platform(request: Request) -> Platform:
    """The running platform (tests may build the app around their own)."""
    return request.app.state.platform  # type: ignore[no-any-return]


async def _principal(request: Request) -> Principal:
    platform = get_platform(request)
    header = request.headers.get("authorization", "")
    key = request.headers.get("x-api-key")
    try:
        if header.lower().startswith("bearer "):
            return platform.auth.check_key(header[7:].strip())
        if key:
            return platform.auth.check_key(key.strip())
        if header.lower().startswith("basic "):
            try:
                name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise AuthError("malformed basic credentials") from None
            # scrypt takes tens of ms: off the event loop, or every request waits behind it
            return await run_in_threadpool(platform.auth.check_password, name, password)
    except AuthError as err:
        raise HTTPException(401, str(err), headers={"WWW-Authenticate": "Bearer"}) from None
    raise HTTPException(401, "credentials needed: an API key as 'Authorization: Bearer mt_...'",
                        headers={"WWW-Authenticate": "Bearer"})


def require(role: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency that lets through principals with at least `role`."""

    async def dependency(request: Request) -> Principal:
        principal = await _principal(request)
        if principal.role < role:
            raise HTTPException(403, f"{principal.name} is a {principal.role.name.lower()}; "
                                     f"this needs {role.name.lower()}")
        return principal

    return dependency


Viewer = Depends(require(Role.VIEWER))
Operator = Depends(require(Role.OPERATOR))
Admin = Depends(require(Role.ADMIN))
