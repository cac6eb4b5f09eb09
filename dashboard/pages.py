"""The dashboard's pages: overview, room grid, twin, alarms, reports, tasks, simulation.

Each page is a layout function (built per request, for the signed-in role: a viewer's
page has no control buttons) and callbacks registered once. Live parts take the global
timer (`tick`) as input; what they show is computed on the server (`dashboard.data`)
under the platform lock. Callbacks that act (commands, top-ups, acknowledging, tasks,
injections, speed) start with `require_operator()`, and write outputs named in
`session.CONTROL_OUTPUTS`, which the sign-in guard also refuses to a viewer.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from dash import ALL, Input, Output, Patch, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from control.auth import Role
from control.batch import Selector, TaskError
from control.commands import OPERATOR_ACTIONS, CommandError
from control.energy_report import NoReadings, energy_report
from control.energy_report import to_csv as energy_csv
from control.reports import income, orders, to_csv
from dashboard import data
from dashboard.session import require_operator
from devices.sim.injections import check_target
from scenarios.schema import FAULT_KINDS, THEFT_KINDS
from twin.model import Kind

if TYPE_CHECKING:
    import dash

    from dashboard.app import Dashboard

INJECT_KINDS = (*FAULT_KINDS, *THEFT_KINDS)
#: A horizontal legend above a chart's top left corner (clear of the title and the tool bar).
LEGEND_TOP_LEFT = {"orientation": "h", "x": 0, "xanchor": "left", "y": 1.02, "yanchor": "bottom"}
#: The unit of each twin kind's interval readings.
TWIN_UNITS = {Kind.ELECTRIC_METER: "kWh", Kind.WATER_METER: "m³", Kind.ELEVATOR: "kWh", Kind.SHARED_CIRCUIT: "kWh"}
BUTTONS = (("btn-trip", "relay_open", "Trip relay"), ("btn-close", "relay_close", "Close relay"),
           ("btn-valve-close", "valve_close", "Close valve"), ("btn-valve-open", "valve_open", "Open valve"))


def _local(platform: Any, t: float | None) -> str:
    if not t:
        return ""
    return f"{datetime.fromtimestamp(t, tz=platform.world.tz):%m-%d %H:%M}"


def _yuan(fen: float | None) -> str:
    return "–" if fen is None else f"{fen / 100:,.2f} yuan"


def _no_data(text: str) -> dict[str, Any]:
    """A chart's note in the middle of its plot when it has nothing to draw."""
    return {"text": text, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
            "font": {"size": 16, "color": "#5a6776"}}


def _loading(height: int) -> dict[str, Any]:
    """A chart's figure until its first update arrives (not plotly's empty -1..6 axes)."""
    return {"data": [], "layout": {"height": height, "xaxis": {"visible": False}, "yaxis": {"visible": False},
                                   "annotations": [_no_data("loading…")]}}


def _graph(graph_id: str, height: int) -> dcc.Graph:
    """A chart that says it is loading until its first figure arrives."""
    return dcc.Graph(id=graph_id, figure=_loading(height), config={"displaylogo": False})


def _card(label: str, value: Any, card_id: str) -> html.Div:
    return html.Div(className="card", children=[html.Div(label, className="label"),
                                                html.Div(value, className="value", id=card_id)])


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None, limit: int = 200,
           table_id: str | None = None) -> html.Table:
    columns = columns or (list(rows[0]) if rows else [])
    head = html.Tr([html.Th(c) for c in columns])
    body = [html.Tr([html.Td("–" if r.get(c) is None else str(r.get(c))) for c in columns]) for r in rows[:limit]]
    table = html.Table([html.Thead(head), html.Tbody(body)], className="grid-table")
    if table_id:
        table.id = table_id  # type: ignore[attr-defined]
    return table


def layout_for(board: Dashboard, path: str, role: Role) -> Any:
    """The page at `path` for a user of `role`."""
    if path.startswith("/twin/"):
        return twin_layout(board, path[len("/twin/"):], role)
    pages = {"/": overview_layout, "/grid": grid_layout, "/alarms": alarms_layout, "/reports": reports_layout,
             "/tasks": tasks_layout, "/sim": sim_layout}
    page = pages.get(path.rstrip("/") or "/")
    if page is None:
        return html.Div([html.H2("No such page"), html.P(f"{path} is not a page; try the links above.")])
    return page(board, role)


# -- overview --------------------------------------------------------------------------------


def overview_layout(board: Dashboard, role: Role) -> Any:
    return html.Div([
        html.H2("Overview"),
        html.Div(className="cards", children=[
            _card("Meters online", "…", "ov-online"), _card("Alarms open", "…", "ov-alarms"),
            _card("Energy today", "…", "ov-energy"), _card("Water today", "…", "ov-water"),
            _card("Income today", "…", "ov-income"), _card("Commands open", "…", "ov-commands")]),
        html.Div(className="panel", children=[_graph("ov-load", 320)]),
        html.Div(className="panel", children=[_graph("ov-states", 280)]),
    ])


def _overview(board: Dashboard) -> tuple[Any, ...]:
    platform = board.platform
    index = board.grid(None)

    def read() -> tuple[dict[str, Any], np.ndarray]:
        return data.overview(platform), data.room_states(platform, index)[0]

    ov, states = board.bridge.locked(read)
    times = [datetime.fromtimestamp(int(t), tz=platform.world.tz).isoformat() for t in ov["times"]]
    load: dict[str, Any] = {
        "data": [{"type": "bar", "x": times, "y": ov["load_kwh"].round(3).tolist(), "name": "electricity, kWh"},
                 {"type": "scatter", "x": times, "y": ov["water_m3"].round(4).tolist(), "name": "water, m³",
                  "yaxis": "y2"}],
        "layout": {"title": {"text": "Today, per interval"}, "height": 320, "margin": {"t": 40, "b": 40},
                   "xaxis": {"tickformat": "%H:%M"}, "uirevision": "load",
                   "yaxis": {"title": {"text": "kWh per interval"}, "rangemode": "tozero"},
                   "yaxis2": {"title": {"text": "m³ per interval"}, "overlaying": "y", "side": "right",
                              "rangemode": "tozero", "showgrid": False, "tickmode": "auto", "nticks": 6},
                   "legend": LEGEND_TOP_LEFT}}
    if not times:
        load["layout"]["annotations"] = [_no_data("no interval has closed yet today")]
    counts = data.state_counts(states)
    bars = {"data": [{"type": "bar", "x": list(counts), "y": list(counts.values()), "text": list(counts.values()),
                      "textposition": "outside", "cliponaxis": False, "marker": {"color": list(data.COLOURS)},
                      "hovertemplate": "%{x}: %{y} rooms<extra></extra>"}],
            "layout": {"title": {"text": "Rooms by state"}, "height": 280, "margin": {"t": 40, "b": 40},
                       "yaxis": {"title": {"text": "rooms"}, "rangemode": "tozero"}, "uirevision": "states"}}
    return (f"{ov['meters_online']:,} / {ov['meters']:,}", f"{ov['alarms_open']:,}",
            f"{ov['energy_kwh_today']:,.1f} kWh", f"{ov['water_m3_today']:,.2f} m³",
            _yuan(ov["income_fen_today"]), f"{ov['open_commands']:,}", load, bars)


# -- room grid -------------------------------------------------------------------------------


def grid_layout(board: Dashboard, role: Role) -> Any:
    site = board.platform.scenario.site
    buildings = [{"label": b.name or b.id, "value": b.id} for b in site.buildings]
    whole = board.grid(None)
    if whole.width * whole.height <= data.MAX_POINTS:  # a site too big for one figure is shown a building at a time
        buildings.insert(0, {"label": "All buildings", "value": ""})
    legend = [html.Span([html.I(style={"background": c}), s]) for s, c in zip(data.STATES, data.COLOURS, strict=True)]
    return html.Div([
        html.H2("Room grid"),
        html.Div(className="panel form", children=[
            html.Label(["Building ", dcc.Dropdown(id="grid-building", options=buildings,
                                                 value=buildings[0]["value"] if buildings else "",
                                                 clearable=False,
                                                 style={"width": "16em", "display": "inline-block"})]),
            html.Label(["Room or twin ", dcc.Input(id="grid-search", placeholder="B01-02-03", debounce=True,
                                                          style={"width": "10em"})]),
            html.Button("Open", id="grid-open"), html.Span(id="grid-search-error", className="error"),
            html.Div(className="legend", children=legend),
            html.Div(id="grid-counts"),
        ]),
        html.Div(className="panel", children=[
            dcc.Store(id="grid-drawn"), dcc.Graph(id="grid-graph", figure=_loading(360),
                                                config={"displaylogo": False, "scrollZoom": True}),
            html.P("Each cell is a room: floors are rows (ground floor at the bottom), rooms are columns. "
                   "Click a room to open its twin.", style={"fontSize": ".85em", "color": "#5a6776"})]),
    ])


def _grid(board: Dashboard, building: str, patch_only: bool) -> tuple[Any, Any]:
    index = board.grid(building or None)
    state, balance = board.states(building)
    counts = " · ".join(f"{k}: {v:,}" for k, v in data.state_counts(state).items() if v)
    if patch_only:
        parts = data.grid_figure(index, state, balance, full=False)
        patch = Patch()
        patch["data"][0]["z"] = parts["z"]
        patch["data"][0]["text"] = parts["text"]
        return patch, counts
    return data.grid_figure(index, state, balance), counts


def _find_twin(board: Dashboard, text: str) -> str | None:
    text = text.strip()
    specs = board.platform.twin_specs
    if text in specs:
        return text
    for suffix in (".em", ".wm", ".vl"):
        if text + suffix in specs:
            return text + suffix
    return None


# -- twin ------------------------------------------------------------------------------------


def twin_layout(board: Dashboard, twin_id: str, role: Role) -> Any:
    spec = board.platform.twin_specs.get(twin_id)
    if spec is None:
        return html.Div([html.H2("No such twin"), html.P(f"{twin_id!r} is not a twin of this site.")])
    room = next((r for r in board.platform.scenario.site.rooms if r.id == spec.room), None)
    siblings = [dcc.Link(t, href=f"/twin/{t}", style={"marginRight": "1em"}) for t in (room.twins if room else [])
                if t != twin_id]
    children: list[Any] = [
        dcc.Store(id="twin-id", data=twin_id), dcc.Store(id="pending-action"), dcc.Store(id="watch-command"),
        html.H2(f"Twin {twin_id}"),
        html.P([f"{spec.kind.value.replace('_', ' ')} · building {spec.building} · room {spec.room or '–'} · "
                f"account {spec.account or '–'} · tariff {spec.tariff or '–'}  ", *siblings]),
        html.Div(className="cards", id="twin-cards"),
    ]
    if role >= Role.OPERATOR:
        # every control is in the page (a callback fires only when all its inputs exist); the
        # ones that do not apply to this room are hidden
        kinds = _kinds_of_room(board, spec)
        buttons: list[Any] = [html.Button(label, id=bid, style={} if OPERATOR_ACTIONS[action].kind in kinds
                                          else {"display": "none"}) for bid, action, label in BUTTONS]
        buttons.append(html.Span(style={} if spec.account else {"display": "none"}, children=[
            html.Span(" Top up "), dcc.Input(id="topup-yuan", type="number", value=100, min=0.01, step=0.01,
                                             style={"width": "10em"}), html.Span(" yuan "),
            dcc.Checklist(id="topup-restore", options=[{"label": "restore supply once in credit",
                                                        "value": "restore"}], value=["restore"],
                          inline=True, style={"display": "inline-block"}),
            html.Button("Top up", id="btn-topup")]))
        children += [html.Div(className="panel controls", id="twin-controls", children=[
            html.H3("Control"), *buttons,
            html.Div(id="confirm-box", className="confirm", style={"display": "none"}, children=[
                html.Span(id="confirm-text"), " ", html.Button("Confirm", id="btn-confirm"),
                html.Button("Cancel", id="btn-cancel")]),
            html.Div(id="control-result")])]
    children += [
        html.Div(className="panel", children=[html.H3("Commands"), html.Div(id="twin-commands")]),
        html.Div(className="panel", children=[_graph("twin-trend", 300)]),
        html.Div(className="panel", children=[html.H3("Today by tariff band"), html.Div(id="twin-bands")]),
        html.Div(className="panel", children=[html.H3("Open alarms"), html.Div(id="twin-alarms")]),
    ]
    return html.Div(children)


def _kinds_of_room(board: Dashboard, spec: Any) -> set[Kind]:
    """The command kinds a twin's page offers: its own, and its room's meter and valve."""
    kinds = {spec.kind}
    if spec.room:
        kinds |= {board.platform.twin_specs[t].kind for t in board.platform.twin_specs
                  if board.platform.twin_specs[t].room == spec.room and board.platform.twin_specs[t].role == "sub"}
    return kinds


def _room_target(board: Dashboard, twin_id: str, kind: Kind) -> str | None:
    """The twin of `kind` in the same room as `twin_id` (itself if it is of that kind)."""
    spec = board.platform.twin_specs[twin_id]
    if spec.kind is kind:
        return twin_id
    for t, other in board.platform.twin_specs.items():
        if other.room and other.room == spec.room and other.kind is kind and other.role == "sub":
            return t
    return None


def _twin_live(board: Dashboard, twin_id: str) -> tuple[Any, ...]:
    platform = board.platform
    spec = platform.twin_specs[twin_id]
    index = board.grid(spec.building)

    def read() -> tuple[dict[str, Any], str | None]:
        day = data.twin_day(platform, twin_id)
        if spec.room not in index.ids:
            return day, None
        state, _ = data.room_states(platform, index)
        return day, data.STATES[int(state[index.ids.index(spec.room)])]

    day, room_state = board.bridge.locked(read)
    rep = day["state"]["reported"]
    desired = {k: v for k, v in day["state"]["desired"].items() if v != -1}
    cards = []
    if room_state is not None:
        cards.append(_card("Room state", room_state, "twin-room-state"))
    if "relay_closed" in rep:
        cards.append(_card("Relay", "closed" if rep["relay_closed"] else "OPEN (cut off)", "twin-relay"))
    if "open" in rep:
        cards.append(_card("Valve", "open" if rep["open"] else "CLOSED", "twin-valve"))
    if "power_w" in rep:
        cards.append(_card("Power", f"{rep['power_w']:,.0f} W", "twin-power"))
    if "flow_m3h" in rep:
        cards.append(_card("Flow", f"{rep['flow_m3h']:.3f} m³/h", "twin-flow"))
    for register, unit in (("energy_kwh", "kWh"), ("volume_m3", "m³")):
        if register in rep:
            cards.append(_card("Register", f"{rep[register]:,.2f} {unit}", "twin-register"))
    cards.append(_card("Online", "yes" if rep.get("online", 1) else "NO", "twin-online"))
    if "today_units" in day:
        cards.append(_card("Today", f"{day['today_units']:,.3f} {TWIN_UNITS.get(spec.kind, '')}", "twin-today"))
    if "available_fen" in day:
        cards.append(_card("Available balance", _yuan(day["available_fen"]), "twin-balance"))
        cards.append(_card("Posted balance", _yuan(day["balance_fen"]), "twin-posted"))
        cards.append(_card("Low-balance level", f"{day['low_level']} of 3" if day["low_level"] else "none",
                           "twin-low"))
    if desired:
        cards.append(_card("Asked, not yet confirmed", ", ".join(f"{k}={v}" for k, v in desired.items()),
                           "twin-desired"))
    t, v = data.downsample(day["times"], day["values"])
    unit = TWIN_UNITS.get(spec.kind, "")
    trend: dict[str, Any] = {
        "data": [{"type": "scatter", "mode": "lines", "line": {"shape": "hv"}, "name": unit,
                  "x": [datetime.fromtimestamp(int(x), tz=platform.world.tz).isoformat() for x in t],
                  "y": [None if np.isnan(y) else round(float(y), 5) for y in v],
                  "hovertemplate": f"%{{x|%m-%d %H:%M}}: %{{y}} {unit}<extra></extra>"}],
        "layout": {"title": {"text": "Last 24 hours, per interval (as reported)"}, "height": 300,
                   "margin": {"t": 40, "b": 40}, "uirevision": twin_id,
                   "yaxis": {"title": {"text": f"{unit} per interval" if unit else ""}, "rangemode": "tozero"}}}
    if not len(t):
        trend["layout"]["annotations"] = [_no_data("no reading in the last 24 hours yet")]
    bands: Any = _table([{"band": b["band"], "units": f"{b['units']:.3f}", "cost": _yuan(b["fen"])}
                    for b in day["bands"]]) if day["bands"] else html.P("No tariff, or no reading today yet.")
    if day["bands"]:
        bands = html.Div([bands, html.P(f"Tier surcharge: {_yuan(day.get('surcharge_fen', 0.0))} "
                                        "(counted from zero today; the ledger posts the exact figure).")])
    commands = _commands_view(platform, day["commands"])
    alarms = _table([{"id": a.id, "kind": a.kind, "severity": a.severity.name.lower(), "state": a.state.value,
                      "since": _local(platform, a.start)} for a in day["alarms"]]) if day["alarms"] else "none"
    return cards, trend, bands, commands, alarms


def _commands_view(platform: Any, commands: list[dict[str, Any]]) -> Any:
    if not commands:
        return html.P("No command yet.")
    rows = []
    for c in commands:
        steps = " → ".join(f"{e['state']} {_local(platform, e['at'])}" for e in c["events"])
        rows.append(html.Tr([html.Td(c["id"]), html.Td(c["action"]), html.Td(c["twin"]), html.Td(c["requested_by"]),
                             html.Td(c["state"], className=f"state-{c['state']}", id=f"cmd-state-{c['id']}"),
                             html.Td(steps), html.Td(c["reason"] or "")]))
    head = html.Tr([html.Th(h) for h in ("command", "action", "twin", "by", "state", "progress", "reason")])
    return html.Table([html.Thead(head), html.Tbody(rows)], className="grid-table", id="commands-table")


def _act(board: Dashboard, who: str, twin_id: str, pending: dict[str, Any]) -> tuple[str, str | None]:
    """Carry out a confirmed control action; (message, command id to watch)."""
    platform = board.platform
    if pending["action"] in OPERATOR_ACTIONS:
        target = _room_target(board, twin_id, OPERATOR_ACTIONS[pending["action"]].kind)
        if target is None:
            return f"{pending['action']} does not apply to this room", None

        def create() -> Any:
            return platform.commands.create(target, pending["action"], by=who, source="operator", now=platform.now())

        try:
            command = board.bridge.locked(create)
        except CommandError as err:
            return f"refused: {err}", None
        return (f"{command.action} on {target}: command {command.id} {command.state.value}; "
                "its progress shows under Commands"), command.id
    account = platform.twin_specs[twin_id].account
    fen = int(round(float(pending["yuan"]) * 100))
    if not account or fen <= 0:
        return "a top-up needs an account and an amount above zero", None
    payment = f"dash-{who}-{uuid.uuid4().hex[:12]}"
    if platform.topups is not None:
        result = board.bridge.wait(platform.topups.submit(payment, account, fen))
    else:
        result = board.bridge.locked(lambda: platform.ledger.top_up(payment, account, fen, at=platform.now()))

    def after() -> list[Any]:
        made = []
        push = platform.push_credit(account, fen, by=who)
        if push is not None:
            made.append(push)
        if pending.get("restore") and data.available_fen(platform, [account])[0] > 0:
            for twin in platform.account_twins.get(account, []):
                kind, row = platform.state.locate(twin)
                reported = platform.state.tables[kind].faces["reported"]
                if kind is Kind.ELECTRIC_METER and reported["relay_closed"][row] == 0:
                    made.append(platform.commands.create(twin, "relay_close", by=who, source="operator",
                                                         now=platform.now()))
                elif kind is Kind.VALVE and reported["open"][row] == 0:
                    made.append(platform.commands.create(twin, "valve_open", by=who, source="operator",
                                                         now=platform.now()))
        return made

    made = board.bridge.locked(after)
    follow = "; ".join(f"{c.action} {c.twin}: {c.id}" for c in made)
    return (f"topped up {account} by {_yuan(fen)} (transfer {result.transfer}, balance {_yuan(result.balance_fen)})"
            + (f"; {follow}" if follow else "")), (made[-1].id if made else None)


# -- alarms ----------------------------------------------------------------------------------


def alarms_layout(board: Dashboard, role: Role) -> Any:
    return html.Div([
        html.H2("Alarms"),
        html.Div(className="panel form", children=[
            dcc.Checklist(id="alarms-cleared", options=[{"label": "show cleared alarms too", "value": "all"}],
                          value=[], inline=True),
            html.Div(id="alarm-ack-result")]),
        html.Div(className="panel", children=[html.Div(id="alarms-table")]),
    ])


def _evidence(evidence: dict[str, Any], limit: int = 90) -> str:
    """An alarm's evidence in a line: money in yuan, numbers rounded, long ones cut."""
    parts = []
    for key, value in evidence.items():
        if key.endswith("_fen") and isinstance(value, int | float):
            parts.append(f"{key[:-4].replace('_', ' ')} {value / 100:,.2f} yuan")
        elif isinstance(value, float):
            parts.append(f"{key.replace('_', ' ')} {value:.4g}")
        else:
            parts.append(f"{key.replace('_', ' ')} {value}")
    text = ", ".join(parts)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _alarms_view(board: Dashboard, include_cleared: bool, role: Role) -> Any:
    platform = board.platform
    book = platform.alarms
    alarms = sorted(book.alarms.values(), key=lambda a: -a.id) if include_cleared else book.open_alarms()
    head = ["id", "kind", "twin", "account", "evidence", "severity", "since", "last seen", "count", "state", ""]
    rows = []
    for a in alarms[:500]:
        action: Any = ""
        if role >= Role.OPERATOR and a.state.value == "raised":
            action = html.Button("Acknowledge", id={"type": "ack", "alarm": a.id})
        twin = dcc.Link(a.twin, href=f"/twin/{a.twin}") if a.twin else ""
        account_twins = platform.account_twins.get(a.account, []) if a.account else []
        account: Any = dcc.Link(a.account, href=f"/twin/{account_twins[0]}") if account_twins else (a.account or "")
        rows.append(html.Tr([html.Td(a.id), html.Td(a.kind), html.Td(twin), html.Td(account),
                             html.Td(_evidence(a.evidence), className="evidence"),
                             html.Td(a.severity.name.lower()), html.Td(_local(platform, a.start)),
                             html.Td(_local(platform, a.last_seen)), html.Td(a.count),
                             html.Td(a.state.value, id=f"alarm-state-{a.id}"), html.Td(action)]))
    return html.Div([html.P(f"{len(alarms):,} alarms" + (" (first 500 shown)" if len(alarms) > 500 else "")),
                     html.Table([html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(rows)],
                                className="grid-table alarms")])


# -- reports ---------------------------------------------------------------------------------

REPORTS = {"energy": "Energy and water, with last year", "income": "Income", "orders": "Orders",
           "bands": "Energy and cost by band, per building (one month)"}


def reports_layout(board: Dashboard, role: Role) -> Any:
    return html.Div([
        html.H2("Reports"),
        html.Div(className="panel form", children=[
            html.Div(["Report ", dcc.RadioItems(id="report-kind", value="energy", inline=True,
                                               options=[{"label": v, "value": k} for k, v in REPORTS.items()])]),
            html.Label(["Period ", dcc.RadioItems(id="report-period", value="day", inline=True,
                                                 options=["day", "month", "year"])]),
            html.Label(["Month ", dcc.Input(id="report-month", placeholder="YYYY-MM (bands)",
                                            style={"width": "11em"})]),
            html.Button("Download CSV", id="report-download-btn"), dcc.Download(id="report-download"),
            html.Span(id="report-error", className="error")]),
        html.Div(className="panel", children=[_graph("report-graph", 320)]),
        html.Div(className="panel", children=[html.Div(id="report-table")]),
    ])


def report_rows(board: Dashboard, kind: str, period: str, month: str | None) -> list[dict[str, Any]]:
    """The rows of a report (what the CSV holds)."""
    platform = board.platform
    tz = platform.scenario.site.timezone
    if kind == "energy":
        days = board.bridge.locked(lambda: board.energy_days.table(platform))
        return data.energy_by_period(days, period)
    if kind == "income":
        return income(platform.ledger, tz, period)
    if kind == "orders":
        return orders(platform.ledger, tz, None, 5000)
    if kind == "bands":
        board.bridge.locked(platform.history.flush)
        return energy_report(platform.scenario, platform.data / "history", month or None, "building")
    raise ValueError(f"unknown report {kind!r}")


def _report_figure(kind: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's chart: periods (or buildings) as categories, each axis with its unit;
    a last-year series only where the history holds last year."""
    axis_title = {"energy": "kWh", "income": "yuan", "orders": "yuan", "bands": "yuan"}.get(kind, "")
    extra: dict[str, Any] = {}
    traces: list[dict[str, Any]]
    if kind == "energy" and rows:
        x = [r["period"] for r in rows]
        traces = [{"type": "bar", "x": x, "y": [r["energy_kwh"] for r in rows], "name": "electricity, kWh"}]
        if any(r["energy_kwh_last_year"] is not None for r in rows):
            traces.append({"type": "bar", "x": x, "y": [r["energy_kwh_last_year"] for r in rows],
                           "name": "electricity last year, kWh"})
        traces.append({"type": "scatter", "mode": "lines+markers", "x": x, "y": [r["water_m3"] for r in rows],
                       "name": "water, m³", "yaxis": "y2"})
        if any(r["water_m3_last_year"] is not None for r in rows):
            traces.append({"type": "scatter", "mode": "lines+markers", "x": x, "line": {"dash": "dot"},
                           "y": [r["water_m3_last_year"] for r in rows], "name": "water last year, m³",
                           "yaxis": "y2"})
        extra["yaxis2"] = {"title": {"text": "m³"}, "overlaying": "y", "side": "right", "rangemode": "tozero",
                           "showgrid": False, "tickmode": "auto", "nticks": 6}
    elif kind == "income" and rows:
        x = [r["period"] for r in rows]
        traces = [{"type": "bar", "x": x, "y": [r.get("paid_in_fen", 0) / 100 for r in rows], "name": "paid in"},
                  {"type": "bar", "x": x, "y": [r.get("refunded_fen", 0) / 100 for r in rows], "name": "refunded"}]
    elif kind == "bands" and rows:
        x = [f"{r.get('building')} {r.get('utility')}" for r in rows]
        traces = [{"type": "bar", "x": x, "y": [r.get("fen", 0) / 100 for r in rows], "name": "this month"}]
        if any(r.get("last_year_fen") is not None for r in rows):
            traces.append({"type": "bar", "x": x, "y": [(r.get("last_year_fen") or 0) / 100 for r in rows],
                           "name": "same month last year"})
    elif kind == "orders" and rows:
        by: dict[str, dict[str, float]] = {}
        for r in rows:
            day = by.setdefault(str(r["kind"]), {})
            day[str(r["time"])[:10]] = day.get(str(r["time"])[:10], 0.0) + r["amount_fen"] / 100
        traces = [{"type": "bar", "x": list(days), "y": list(days.values()), "name": k} for k, days in by.items()]
    else:
        return {"data": [], "layout": {"height": 200, "xaxis": {"visible": False}, "yaxis": {"visible": False},
                                       "annotations": [_no_data("nothing to show yet")]}}
    return {"data": traces, "layout": {
        "barmode": "group", "height": 320, "margin": {"t": 30, "b": 60}, "showlegend": True,
        "xaxis": {"type": "category"}, "yaxis": {"title": {"text": axis_title}, "rangemode": "tozero"},
        "legend": LEGEND_TOP_LEFT, **extra}}


# -- tasks -----------------------------------------------------------------------------------


def tasks_layout(board: Dashboard, role: Role) -> Any:
    site = board.platform.scenario.site
    children: list[Any] = [html.H2("Batch and scheduled tasks")]
    if role >= Role.OPERATOR:
        children.append(html.Div(className="panel form", children=[
            html.H3("New task"),
            html.Label(["Name ", dcc.Input(id="task-name", value="", placeholder="close B01 floor 3 valves",
                                           style={"width": "16em"})]),
            html.Label(["Action ", dcc.Dropdown(id="task-action", value="relay_open", clearable=False,
                                               options=list(OPERATOR_ACTIONS),
                                               style={"width": "12em", "display": "inline-block"})]),
            html.Label(["Building ", dcc.Dropdown(id="task-building", options=[b.id for b in site.buildings],
                                                 value=site.buildings[0].id if site.buildings else None,
                                                 style={"width": "10em", "display": "inline-block"})]),
            html.Label(["Floor ", dcc.Input(id="task-floor", type="number", min=1, placeholder="all",
                                           style={"width": "5em"})]),
            html.Label(["Twins ", dcc.Input(id="task-twins", placeholder="ids, comma separated (optional)",
                                           style={"width": "18em"})]),
            html.Label(["Run at ", dcc.Input(id="task-at", placeholder="now, or 2026-03-02T23:00",
                                            style={"width": "14em"})]),
            html.Label(["Repeat every ", dcc.Input(id="task-repeat", type="number", min=1, placeholder="—",
                                                  style={"width": "5em"}), " minutes"]),
            html.Button("Create task", id="task-create")]))
    children += [html.Div(id="task-create-result"),
        html.Div(className="panel", children=[html.H3("Tasks"), html.Div(id="tasks-table")]),
        html.Div(className="panel form", children=[
            html.H3("Items of a task"),
            dcc.Store(id="task-watch"), dcc.Dropdown(id="task-pick", placeholder="pick a task",
                                                     style={"width": "30em"}),
            html.Div(id="task-items")]),
    ]
    return html.Div(children)


def _create_task(board: Dashboard, who: str, values: dict[str, Any]) -> str:
    platform = board.platform
    twins = tuple(t.strip() for t in (values["twins"] or "").split(",") if t.strip())
    run_at = None
    if values["at"] and values["at"].strip().lower() != "now":
        try:
            local = datetime.fromisoformat(values["at"].strip())
        except ValueError:
            return f"run at {values['at']!r}: use YYYY-MM-DDTHH:MM, site-local"
        run_at = (local.replace(tzinfo=platform.world.tz) if local.tzinfo is None else local).timestamp()
    repeat = float(values["repeat"]) * 60 if values["repeat"] else None
    floor = int(values["floor"]) if values["floor"] else None
    name = values["name"] or f"{values['action']} {values['building'] or ''} {floor or ''}".strip()

    def create() -> str:
        return platform.batch.create(name, values["action"], Selector(twins, None if twins else values["building"],
                                                                      None if twins else floor),
                                     by=who, now=platform.now(), run_at=run_at, repeat_s=repeat)

    try:
        task = board.bridge.locked(create)
    except TaskError as err:
        return f"refused: {err}"
    return f"task {task} created"


# -- simulation ------------------------------------------------------------------------------


def sim_layout(board: Dashboard, role: Role) -> Any:
    platform = board.platform
    children: list[Any] = [html.H2("Simulation"),
                           html.Div(className="cards", children=[
                               _card("Speed", f"{platform.speed:g}x", "sim-speed"),
                               _card("Twins", f"{len(platform.state):,}", "sim-twins"),
                               _card("CPU in kernels since start", "…", "sim-kernel")])]
    if role >= Role.OPERATOR:
        children.append(html.Div(className="panel form", children=[
            html.H3("Drive the world"),
            html.Label(["Speed ", dcc.Input(id="sim-speed-in", type="number", min=0, max=1_000_000,
                                           value=platform.speed, style={"width": "10em"}), "x "]),
            html.Button("Set speed", id="sim-set-speed"), html.Br(),
            html.Label(["Inject ", dcc.Dropdown(id="sim-kind", options=list(INJECT_KINDS), value="offline",
                                               clearable=False, style={"width": "12em", "display": "inline-block"})]),
            html.Label(["into twin ", dcc.Input(id="sim-twin", placeholder="B01-02-03.em", style={"width": "12em"})]),
            html.Label(["for ", dcc.Input(id="sim-hours", type="number", min=0.25, value=6, style={"width": "5em"}),
                        " simulated hours "]),
            html.Button("Inject", id="sim-inject")]))
    children += [html.Div(id="sim-result"),
        html.Div(className="panel", children=[html.H3("Injections in this world"), html.Div(id="sim-injections")]),
        html.Div(className="panel", children=[html.H3("What the detectors raised on those twins (newest first)"),
                                              html.Div(id="sim-alarms")]),
    ]
    return html.Div(children)


def _sim_view(board: Dashboard) -> tuple[Any, ...]:
    platform = board.platform

    def read() -> tuple[list[dict[str, Any]], list[Any], float]:
        world = platform.world
        rows = []
        for inj in world.injections[-200:]:
            start = world.start_utc + inj.start_step * world.step_s
            end = world.start_utc + inj.end_step * world.step_s
            if start > platform.now():
                continue
            rows.append({"twin": inj.twin, "kind": inj.kind, "from": _local(platform, start),
                         "until": _local(platform, end) if inj.end_step < world.run_steps else "end of run",
                         "live": "yes" if inj.extra.get("live") else "scenario",
                         "active": "yes" if start <= platform.now() < end else "no"})
        injected = {inj.twin for inj in world.injections}
        accounts = {platform.twin_specs[t].account for t in injected if t in platform.twin_specs} - {None}
        alarms = sorted((a for a in platform.alarms.alarms.values() if a.twin in injected or a.account in accounts),
                        key=lambda a: -a.id)[:100]
        return rows, alarms, world.kernel_seconds

    rows, alarms, kernel = board.bridge.locked(read)
    alarm_rows = [{"id": a.id, "kind": a.kind, "twin": a.twin or "", "account": a.account or "",
                   "since": _local(platform, a.start), "state": a.state.value} for a in alarms]
    return (f"{platform.speed:g}x", f"{kernel:.1f} s",
            _table(rows[::-1], ["twin", "kind", "from", "until", "live", "active"]) if rows else "none yet",
            _table(alarm_rows, table_id="sim-alarm-table") if alarm_rows else "none")


def _inject(board: Dashboard, who: str, twin: str, kind: str, hours: float) -> str:
    platform = board.platform
    spec = platform.twin_specs.get((twin or "").strip())
    if spec is None:
        return f"no twin {twin!r}; ids look like B01-02-03.em"
    if kind not in INJECT_KINDS:
        return f"unknown kind {kind!r}"
    try:
        check_target(kind, spec)
    except ValueError as err:
        return str(err)
    duration = int(max(float(hours or 0), 0.25) * 3600)
    # the world as hardware: recorded for replay after a restart, applied under the world's own lock
    board.bridge.locked(lambda: platform.source.write(spec.id, f"inject:{kind}", duration, f"operator:{who}"))
    return f"{kind} injected into {spec.id} for {duration / 3600:g} simulated hours"


def _set_speed(board: Dashboard, speed: float) -> str:
    platform = board.platform
    if not 0 <= speed <= 1_000_000:
        return "speed is between 0 (held) and 1,000,000 simulated seconds per second"
    board.bridge.locked(lambda: platform.set_speed(speed))
    return f"speed {speed:g}x" if speed else "clock held (speed 0)"


# -- callbacks -------------------------------------------------------------------------------


def register(app: dash.Dash, board: Dashboard) -> None:
    """Register every page's callbacks on the Dash app."""
    platform = board.platform
    from dashboard.session import current_role

    def role() -> Role:
        return current_role() or Role.VIEWER

    @app.callback(Output("ov-online", "children"), Output("ov-alarms", "children"), Output("ov-energy", "children"),
                  Output("ov-water", "children"), Output("ov-income", "children"), Output("ov-commands", "children"),
                  Output("ov-load", "figure"), Output("ov-states", "figure"), Input("tick", "n_intervals"))
    def overview_live(_: int | None) -> tuple[Any, ...]:
        return _overview(board)

    @app.callback(Output("grid-graph", "figure"), Output("grid-counts", "children"), Output("grid-drawn", "data"),
                  Input("grid-building", "value"), Input("tick", "n_intervals"), State("grid-drawn", "data"))
    def grid_live(building: str, _: int | None, drawn: str | None) -> tuple[Any, Any, str]:
        # the whole figure once per building; then only the states change (a Patch of z and text)
        building = building or ""
        figure, counts = _grid(board, building, patch_only=drawn == building)
        return figure, counts, building

    @app.callback(Output("url", "pathname", allow_duplicate=True), Output("grid-search-error", "children"),
                  Input("grid-graph", "clickData"), Input("grid-open", "n_clicks"), Input("grid-search", "value"),
                  prevent_initial_call=True)
    def open_twin(click: dict[str, Any] | None, _: int | None, search: str | None) -> tuple[Any, str]:
        if ctx.triggered_id == "grid-graph":
            twin = ((click or {}).get("points") or [{}])[0].get("customdata")
            if twin:
                return f"/twin/{twin}", ""
            raise PreventUpdate
        if not search:
            raise PreventUpdate
        found = _find_twin(board, search)
        if found is None:
            return no_update, f" no room or twin {search!r}"
        return f"/twin/{found}", ""

    @app.callback(Output("twin-cards", "children"), Output("twin-trend", "figure"), Output("twin-bands", "children"),
                  Output("twin-commands", "children"), Output("twin-alarms", "children"),
                  Input("tick", "n_intervals"), Input("watch-command", "data"), State("twin-id", "data"))
    def twin_live(_: int | None, __: Any, twin_id: str) -> tuple[Any, ...]:
        return _twin_live(board, twin_id)

    ask_inputs = [Input(bid, "n_clicks") for bid, _, _ in BUTTONS] + [Input("btn-topup", "n_clicks"),
                                                                        Input("btn-cancel", "n_clicks")]

    @app.callback(Output("pending-action", "data"), Output("confirm-box", "style"), Output("confirm-text", "children"),
                  *ask_inputs, State("topup-yuan", "value"), State("topup-restore", "value"), State("twin-id", "data"),
                  prevent_initial_call=True)
    def ask(*args: Any) -> tuple[Any, Any, Any]:
        yuan, restore, twin_id = args[-3:]
        pressed = ctx.triggered_id
        if pressed == "btn-cancel" or pressed is None:
            return None, {"display": "none"}, ""
        if pressed == "btn-topup":
            try:
                amount = float(yuan)
            except (TypeError, ValueError):
                return None, {"display": "block"}, "Enter an amount in yuan first."
            pending = {"action": "topup", "yuan": amount, "restore": bool(restore)}
            text = f"Top up the account of {twin_id} by {amount:,.2f} yuan" + (
                ", and restore its supply once in credit?" if restore else "?")
        else:
            action = next(a for b, a, _ in BUTTONS if b == pressed)
            label = next(lbl for b, _, lbl in BUTTONS if b == pressed)
            pending = {"action": action}
            text = f"{label} of room {platform.twin_specs[twin_id].room or twin_id}?"
        return pending, {"display": "block"}, text

    @app.callback(Output("control-result", "children"), Output("watch-command", "data"),
                  Output("confirm-box", "style", allow_duplicate=True), Input("btn-confirm", "n_clicks"),
                  State("pending-action", "data"), State("twin-id", "data"), prevent_initial_call=True)
    def act(n: int | None, pending: dict[str, Any] | None, twin_id: str) -> tuple[Any, Any, Any]:
        who = require_operator()
        if not n or not pending or twin_id not in platform.twin_specs:
            raise PreventUpdate
        message, command = _act(board, who, twin_id, pending)
        return html.Span(message, className="ok" if command or "topped up" in message else "error"), command, {
            "display": "none"}

    @app.callback(Output("alarms-table", "children"), Input("tick", "n_intervals"), Input("alarms-cleared", "value"),
                  Input("alarm-ack-result", "children"))
    def alarms_live(_: int | None, cleared: list[str] | None, __: Any) -> Any:
        include = bool(cleared)
        return _alarms_view(board, include, role())

    @app.callback(Output("alarm-ack-result", "children"), Input({"type": "ack", "alarm": ALL}, "n_clicks"),
                  prevent_initial_call=True)
    def acknowledge(clicks: list[int | None]) -> Any:
        who = require_operator()
        if not ctx.triggered_id or not any(clicks):
            raise PreventUpdate
        alarm_id = int(ctx.triggered_id["alarm"])

        def ack() -> Any:
            alarm = platform.alarms.acknowledge(alarm_id, by=who, at=platform.now())
            platform.alarm_changed(alarm, "acknowledged")
            return alarm

        try:
            alarm = board.bridge.locked(ack)
        except (KeyError, ValueError) as err:
            return html.Span(str(err), className="error")
        return html.Span(f"alarm {alarm.id} ({alarm.kind}) acknowledged by {who}", className="ok")

    @app.callback(Output("report-graph", "figure"), Output("report-table", "children"),
                  Output("report-error", "children"),
                  Input("report-kind", "value"), Input("report-period", "value"), Input("report-month", "value"),
                  Input("tick", "n_intervals"))
    def report_view(kind: str, period: str, month: str | None, _: int | None) -> tuple[Any, ...]:
        if ctx.triggered_id == "tick" and (kind in ("bands", "orders") or (_ or 0) % 15):
            raise PreventUpdate  # reports move slowly: every 30 s, the heavy ones when asked
        try:
            rows = report_rows(board, kind, period, month)
        except (NoReadings, ValueError) as err:
            return {"data": []}, "", str(err)
        shown = rows[-200:] if kind in ("energy", "income") else rows[:200]
        return _report_figure(kind, rows), _table(shown, table_id="report-rows"), ""

    @app.callback(Output("report-download", "data"), Input("report-download-btn", "n_clicks"),
                  State("report-kind", "value"), State("report-period", "value"), State("report-month", "value"),
                  prevent_initial_call=True)
    def download(_: int | None, kind: str, period: str, month: str | None) -> Any:
        try:
            rows = report_rows(board, kind, period, month)
        except (NoReadings, ValueError):
            raise PreventUpdate from None
        text = energy_csv(rows) if kind == "bands" else to_csv(rows)
        stamp = datetime.fromtimestamp(platform.now(), tz=platform.world.tz).strftime("%Y%m%d-%H%M")
        name = f"{platform.scenario.site.id}-{kind}{'' if kind in ('orders', 'bands') else '-' + period}-{stamp}.csv"
        return {"content": text, "filename": name, "type": "text/csv"}

    @app.callback(Output("tasks-table", "children"), Output("task-pick", "options"), Input("tick", "n_intervals"),
                  Input("task-create-result", "children"))
    def tasks_live(_: int | None, __: Any) -> tuple[Any, Any]:
        tasks = board.bridge.locked(platform.batch.list)
        rows = [{"id": t["id"], "name": t["name"], "action": t["action"], "state": t["state"],
                 "next run": _local(platform, t["next_run"]), "repeat (min)": (t["repeat_s"] or 0) / 60 or "",
                 "runs": t["runs"], "by": t["created_by"]} for t in tasks]
        return (_table(rows, table_id="tasks") if rows else "no task yet",
                [{"label": f"{t['id']} · {t['name']}", "value": t["id"]} for t in tasks])

    @app.callback(Output("task-items", "children"), Input("task-watch", "data"), Input("tick", "n_intervals"))
    def task_items(task_id: str | None, _: int | None) -> Any:
        if not task_id:
            return ""
        try:
            task = board.bridge.locked(lambda: platform.batch.get(task_id))
        except KeyError:
            return "no such task"
        parts: list[Any] = [html.H4(f"{task['id']} · {task['name']} · {task['action']} · {task['state']}")]
        for run in task["runs"][-5:]:
            counts: dict[str, int] = {}
            for item in run["items"]:
                counts[str(item["outcome"])] = counts.get(str(item["outcome"]), 0) + 1
            parts += [html.H4(f"run for {_local(platform, run['run_for'])}: " +
                              ", ".join(f"{k} {v}" for k, v in counts.items())),
                      _table(run["items"], ["twin", "command", "outcome", "error"], 300)]
        return parts if task["runs"] else [*parts, html.P("not run yet")]

    @app.callback(Output("task-watch", "data", allow_duplicate=True), Input("task-pick", "value"),
                  prevent_initial_call=True)
    def pick_task(task_id: str | None) -> Any:
        return task_id or no_update

    @app.callback(Output("task-create-result", "children"), Output("task-watch", "data"),
                  Output("task-pick", "value"), Input("task-create", "n_clicks"),
                  State("task-name", "value"), State("task-action", "value"), State("task-building", "value"),
                  State("task-floor", "value"), State("task-twins", "value"), State("task-at", "value"),
                  State("task-repeat", "value"), prevent_initial_call=True)
    def create_task(n: int | None, name: str, action: str, building: str, floor: Any, twins: str, at: str,
                    repeat: Any) -> Any:
        who = require_operator()
        if not n:
            raise PreventUpdate
        text = _create_task(board, who, {"name": name, "action": action, "building": building, "floor": floor,
                                         "twins": twins, "at": at, "repeat": repeat})
        if text.startswith(("refused", "run at")):
            return html.Span(text, className="error"), no_update, no_update
        task = text.split()[1]
        return html.Span(text, className="ok"), task, task  # watch the new task's items, picked in the list

    @app.callback(Output("sim-speed", "children"), Output("sim-kernel", "children"),
                  Output("sim-injections", "children"), Output("sim-alarms", "children"),
                  Input("tick", "n_intervals"), Input("sim-result", "children"))
    def sim_live(_: int | None, __: Any) -> tuple[Any, ...]:
        return _sim_view(board)

    @app.callback(Output("sim-result", "children"), Input("sim-inject", "n_clicks"), Input("sim-set-speed", "n_clicks"),
                  State("sim-twin", "value"), State("sim-kind", "value"), State("sim-hours", "value"),
                  State("sim-speed-in", "value"), prevent_initial_call=True)
    def sim_act(_: int | None, __: int | None, twin: str, kind: str, hours: float, speed: float) -> Any:
        who = require_operator()
        if ctx.triggered_id == "sim-set-speed":
            if speed is None:
                return html.Span("enter a speed first", className="error")
            text = _set_speed(board, float(speed))
        else:
            text = _inject(board, who, twin, kind, hours)
        return html.Span(f"{time.strftime('%H:%M:%S')} {text}")
