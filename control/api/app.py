"""The FastAPI application: the API under /api (OpenAPI at /api/docs) and a health page
at /health. The dashboard mounts at / beside it in the same server (`Platform.serve`)."""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from control.api import (
    accounts,
    alarms,
    commands,
    consumption,
    cost,
    energy,
    errors,
    history,
    keys,
    overview,
    simulation,
    site,
    tariffs,
    tasks,
    twins,
)

if TYPE_CHECKING:
    from control.runtime import Platform

log = logging.getLogger("metertwin.api")


def create_app(platform: Platform) -> FastAPI:
    """The HTTP application around a running platform."""
    app = FastAPI(title="MeterTwin API", version="0.1.0", docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json",
                  description="Twins with live state, commands, alarms and access. Authenticate with "
                              "`Authorization: Bearer mt_...` (an API key) or HTTP Basic (a user).")
    app.state.platform = platform
    for module in (site, overview, twins, history, cost, accounts, commands, alarms, tasks, tariffs, energy,
                   consumption, simulation, keys):
        app.include_router(module.router)
    errors.install(app)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}; the platform logged it"}, 500)

    @app.get("/api/health", tags=["health"], summary="Is the platform up, and where is its clock")
    async def health() -> dict[str, Any]:
        """No credentials needed: the site, simulated time, speed, open alarms and commands."""
        return platform.health()

    @app.get("/health", response_class=HTMLResponse, include_in_schema=False)
    async def health_page() -> str:
        h = platform.health()
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in h.items() if k != "tasks")
        tasks = "".join(f"<li>{html.escape(t['name'])}: every {t['every_s']:.0f}s, {t['runs']} runs"  # type: ignore[index]
                        f"{' — ' + html.escape(str(t['last_error'])) if t['last_error'] else ''}</li>"  # type: ignore[index]
                        for t in h["tasks"])  # type: ignore[attr-defined]
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>MeterTwin — {html.escape(str(h['name']))}"
                "</title><meta http-equiv='refresh' content='5'></head><body style='font-family:sans-serif'>"
                f"<h1>MeterTwin: {html.escape(str(h['name']))}</h1><table>{rows}</table>"
                f"<h2>Periodic tasks</h2><ul>{tasks}</ul>"
                "<p>API: <a href='/api/docs'>/api/docs</a></p></body></html>")

    return app
