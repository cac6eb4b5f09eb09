"""Error answers of the API: every refusal is a 4xx JSON body whose `detail` says what was
wrong, and the OpenAPI documents each one a route can give.

    HTTPException (raised by routes) ........ its status, {"detail": "..."}
    RequestValidationError (FastAPI) ......... 422, {"detail": [{loc, msg, type}], "message": "..."}
    domain errors that reach the app:
      LedgerError ........................... 409 (a rule of the ledger refused it)
      NoReadings ............................ 404 (the history holds nothing of that span)
      CommandError, TaskError, TariffError,
      FeeError, HistoryError ................ 400 (the request asks for something impossible)
    anything else ........................... 500, logged (a bug: none is expected)
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from control.batch import TaskError
from control.commands import CommandError
from control.energy_report import NoReadings
from twin.fees import FeeError
from twin.history import HistoryError
from twin.ledger import LedgerError
from twin.tariffs import TariffError


class ErrorBody(BaseModel):
    """What went wrong, in words a person can act on."""

    detail: str = Field(examples=["no twin 'B09-01-01.em'; ids look like B01-02-03.em"])


#: What each refusal means, for the OpenAPI.
MEANING = {
    400: ("The request asks for something that cannot be done (an unknown action, a twin of the "
          "wrong kind, a range that does not fit), or its body is not JSON",
          "'B01-02-01.em' is not a valve twin of this site"),
    401: ("No credentials, or ones that do not let anyone in", "credentials needed: an API key as "
          "'Authorization: Bearer mt_...'"),
    403: ("The caller's role is too low for this call; the message names the role needed",
          "key:1a2b3c4d is a viewer; this needs operator"),
    404: ("The id in the path names nothing of this site; the message names it", "no twin 'B09-01-01.em'; "
          "ids look like B01-02-03.em"),
    409: ("A rule of the ledger or of the object's state refused it",
          "refund of 90000 fen exceeds the balance of 1200 fen"),
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that may answer with these codes."""
    return {code: {"model": ErrorBody, "description": MEANING[code][0],
                   "content": {"application/json": {"example": {"detail": MEANING[code][1]}}}}
            for code in codes}


#: Every route behind a key: no credentials (401), a role too low (403).
AUTH = errors(401, 403)

_DOMAIN: tuple[tuple[type[Exception], int], ...] = (
    (NoReadings, 404), (LedgerError, 409),
    (CommandError, 400), (TaskError, 400), (TariffError, 400), (FeeError, 400), (HistoryError, 400),
)


def _where(error: dict[str, Any]) -> str:
    return ".".join(str(part) for part in error.get("loc", ()))


def install(app: FastAPI) -> None:
    """Register the handlers that turn validation and domain errors into 4xx JSON."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        message = "; ".join(f"{_where(e)}: {e.get('msg', 'invalid')}" for e in problems[:10])
        return JSONResponse({"detail": jsonable_encoder(problems), "message": message}, 422)

    for kind, status in _DOMAIN:
        async def handler(request: Request, exc: Exception, status: int = status) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status)

        app.add_exception_handler(kind, handler)
