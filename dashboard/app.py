"""The Dash dashboard, mounted in the platform's HTTP server at / beside the API.

`mount_dashboard(app, platform)` adds it to the FastAPI app after the API's routes (the
composition root in control/ calls it; nothing else imports this package). The pages live
in `dashboard.pages`; this module builds the Dash app: the top bar, the router from the
URL to a page, the timer that drives every live update (one `dcc.Interval`), sign-in.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dash
import numpy as np
from a2wsgi import WSGIMiddleware
from dash import Input, Output, dcc, html

from control.auth import Role
from dashboard import pages
from dashboard.bridge import Bridge
from dashboard.data import EnergyDays, RoomIndex, room_states
from dashboard.session import current_role, current_user, install

if TYPE_CHECKING:
    from fastapi import FastAPI

    from control.runtime import Platform

#: Milliseconds between live updates of the page on screen.
TICK_MS = 2000
#: Seconds a computed room grid is shared by every dashboard asking for it.
STATES_TTL_S = 0.5

NAV = (("/", "Overview"), ("/grid", "Room grid"), ("/alarms", "Alarms"), ("/reports", "Reports"),
       ("/tasks", "Tasks"), ("/sim", "Simulation"))


class Dashboard:
    """The live platform as the pages see it: the bridge to its loop, cached room grids and
    the closed days' energy."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.bridge = Bridge(platform)
        self.grids: dict[str, RoomIndex] = {}
        self.energy_days = EnergyDays()
        self._states: dict[str, tuple[float, tuple[np.ndarray, np.ndarray]]] = {}
        self._states_lock = threading.Lock()

    def states(self, building: str) -> tuple[np.ndarray, np.ndarray]:
        """Room states and balances of a grid, computed at most once per `STATES_TTL_S`
        however many dashboards ask (they all show the same site)."""
        with self._states_lock:
            cached = self._states.get(building)
            if cached is not None and time.monotonic() - cached[0] < STATES_TTL_S:
                return cached[1]
            index = self.grid(building or None)
            result = self.bridge.locked(lambda: room_states(self.platform, index))
            self._states[building] = (time.monotonic(), result)
            return result

    def grid(self, building: str | None) -> RoomIndex:
        """The room grid of one building or of the site ("" or None), built once."""
        key = building or ""
        if key not in self.grids:
            self.grids[key] = RoomIndex.build(self.platform, building or None)
        return self.grids[key]


def create_dash(platform: Platform) -> tuple[dash.Dash, Dashboard]:
    """The Dash app of a platform, with sign-in installed on its Flask server."""
    board = Dashboard(platform)
    site = platform.scenario.site
    app = dash.Dash(__name__, assets_folder=str(Path(__file__).parent / "assets"), title=f"MeterTwin: {site.name}",
                    suppress_callback_exceptions=True, update_title="", serve_locally=True)
    install(app.server, platform)
    app.layout = html.Div([
        dcc.Location(id="url", refresh="callback-nav"),
        dcc.Interval(id="tick", interval=TICK_MS),
        html.Div(className="topbar", children=[
            html.Span(f"MeterTwin · {site.name or site.id}", className="site"),
            *[dcc.Link(label, href=href, id=f"nav-{label.lower().replace(' ', '-')}") for href, label in NAV],
            html.Span(id="clock"),
            html.Span(className="who", children=[html.Span(id="who"), " · ", html.A("sign out", href="/logout")]),
        ]),
        html.Div(id="page", className="page"),
    ])

    @app.callback(Output("page", "children"), Output("who", "children"), Input("url", "pathname"))
    def route(path: str | None) -> tuple[Any, str]:
        role = current_role() or Role.VIEWER
        who = f"{current_user()} ({role.name.lower()})"
        return pages.layout_for(board, path or "/", role), who

    @app.callback(Output("clock", "children"), Input("tick", "n_intervals"))
    def clock(_: int | None) -> str:
        now = platform.now()
        return f"{datetime.fromtimestamp(now, tz=platform.world.tz):%Y-%m-%d %H:%M} · {platform.speed:g}x"

    pages.register(app, board)
    return app, board


def mount_dashboard(api: FastAPI, platform: Platform) -> Dashboard:
    """Mount the dashboard at / of the API's app (after its routes, which win)."""
    app, board = create_dash(platform)
    api.mount("/", board.bridge.asgi(WSGIMiddleware(app.server, workers=8)))
    return board
