"""The FastAPI application: the API under /api (OpenAPI at /api/docs, its Swagger UI served
from a package, so it works without internet) and a health page at
/health. The dashboard mounts at / beside it in the same server (`Platform.serve`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from control.api import (
    accounts,
    alarms,
    analytics,
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
from control.api.health_page import render_health

if TYPE_CHECKING:
    from control.runtime import Platform

log = logging.getLogger("metertwin.api")
#: where Swagger UI's own JS, CSS and icon are served (under /api, so the dashboard at / never shadows it)
DOCS_STATIC = "/api/docs-static"


def swagger_ui_dir() -> Path:
    """Swagger UI 5's files (swagger-ui-bundle.js, swagger-ui.css, favicon-32x32.png), kept in
    this package (static/swagger-ui/README.md says which version and how to update). Missing
    files cost the docs page, never the platform: a warning, and errors under /api/docs-static."""
    found = Path(__file__).parent / "static" / "swagger-ui"
    if not (found / "swagger-ui-bundle.js").is_file():
        log.warning("no Swagger UI files at %s: /api/docs will be blank", found)
    return found


def create_app(platform: Platform) -> FastAPI:
    """The HTTP application around a running platform."""
    app = FastAPI(title="MeterTwin API", version="0.1.0", docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json",
                  description="Twins with live state, commands, alarms and access. Authenticate with "
                              "`Authorization: Bearer mt_...` (an API key) or HTTP Basic (a user).")
    app.state.platform = platform
    for module in (site, overview, twins, history, cost, accounts, commands, alarms, tasks, tariffs, energy,
                   consumption, simulation, analytics, keys):
        app.include_router(module.router)
    errors.install(app)
    app.mount(DOCS_STATIC, StaticFiles(directory=swagger_ui_dir(), check_dir=False), name="docs-static")

    @app.get("/api/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        """Swagger UI, every file of it from this server: sites often run without internet."""
        return get_swagger_ui_html(openapi_url="/api/openapi.json", title=f"{app.title} — docs",
                                   swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_STATIC}/favicon-32x32.png",
                                   # no badge from the online validator, whose image would come from the internet
                                   swagger_ui_parameters={"validatorUrl": None})

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
        """The same as /api/health, laid out for a person (control/api/health_page.py)."""
        return render_health(platform.health(), platform.world.tz)

    return app
