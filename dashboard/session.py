"""Sign-in for the dashboard: the control core's users, a signed session cookie.

`/login` takes a user name and password and checks them with `Auth.check_password` (the
same users as the API's HTTP Basic); the session cookie (Flask's, signed with a secret kept
in the data directory, HttpOnly, SameSite=Lax) then carries the name and role for 12 hours.
Every other dashboard path needs a session: pages redirect to /login, Dash's own requests
get 401. Control callbacks check the role again on the server (`require_operator`): a
callback sent by hand with a viewer's cookie is refused with 403, whatever the page showed.
"""

from __future__ import annotations

import html
import json
import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import flask

from control.auth import AuthError, Role

if TYPE_CHECKING:
    from control.runtime import Platform

#: Paths served without a session: the sign-in form and Dash's static bundles.
OPEN_PREFIXES = ("/login", "/logout", "/_dash-component-suites/", "/assets/", "/_favicon.ico")
#: Dash callback outputs that act on the world or the ledger: an operator's only.
CONTROL_OUTPUTS = ("control-result", "alarm-ack-result", "task-create-result", "sim-result")

LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>MeterTwin: sign in</title>
<style>body{{font-family:system-ui,sans-serif;background:#f4f6f8;display:flex;justify-content:center;
padding-top:10vh}}form{{background:white;padding:2em 2.5em;border-radius:8px;box-shadow:0 1px 4px #0002;
min-width:18em}}input{{display:block;width:100%;margin:.3em 0 1em;padding:.5em;box-sizing:border-box}}
button{{padding:.6em 1.4em}}.error{{color:#b00020}}</style></head><body>
<form method="post" action="/login"><h2>MeterTwin: {site}</h2>{error}
<label>User name<input id="username" name="username" autocomplete="username" autofocus></label>
<label>Password<input id="password" name="password" type="password" autocomplete="current-password"></label>
<input type="hidden" name="next" value="{next}"><button id="sign-in" type="submit">Sign in</button></form>
</body></html>"""


def secret_key(data: Path) -> bytes:
    """The key that signs session cookies: made once, kept in DIR/dashboard.secret (0600),
    so sessions survive a restart."""
    path = data / "dashboard.secret"
    if path.exists():
        return path.read_bytes()
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def current_role() -> Role | None:
    """The signed-in user's role, None without a session."""
    role = flask.session.get("role")
    return Role(role) if role in (1, 2, 3) else None


def current_user() -> str:
    """The signed-in user's name ('' without a session)."""
    return str(flask.session.get("user", ""))


def require_operator() -> str:
    """The operator's (or admin's) name; otherwise the request ends here with 403."""
    role = current_role()
    if role is None or role < Role.OPERATOR:
        flask.abort(403, description="this needs an operator; a viewer may only look")
    return current_user()


def _control_request() -> bool:
    """True when the request is a Dash callback writing a control output."""
    if flask.request.path != "/_dash-update-component":
        return False
    try:
        body = json.loads(flask.request.get_data(cache=True) or b"{}")
    except ValueError:
        return True  # unreadable: treat as the worst case
    output = str(body.get("output", "")) if isinstance(body, dict) else ""
    return any(name in output for name in CONTROL_OUTPUTS)


def install(server: flask.Flask, platform: Platform) -> None:
    """Add /login and /logout to the Flask server and guard everything else."""
    server.secret_key = secret_key(platform.data)
    server.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                         SESSION_COOKIE_NAME="metertwin_session", PERMANENT_SESSION_LIFETIME=timedelta(hours=12))
    site = html.escape(platform.scenario.site.name or platform.scenario.site.id)

    @server.before_request
    def guard() -> Any:
        path = flask.request.path
        if path == "/api" or path.startswith("/api/"):  # the API's routes come first: what reaches here is none
            return flask.jsonify({"detail": f"no API route {flask.request.method} {path}; see /api/docs"}), 404
        if path.startswith(OPEN_PREFIXES):
            return None
        role = current_role()
        if role is None:
            if path.startswith("/_dash-") or flask.request.method != "GET":
                return flask.jsonify({"detail": "sign in first: POST /login"}), 401
            return flask.redirect(f"/login?next={flask.request.full_path.rstrip('?')}")
        if role < Role.OPERATOR and _control_request():
            return flask.jsonify({"detail": f"{current_user()} is a viewer; control needs an operator"}), 403
        return None

    @server.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        target = flask.request.values.get("next", "/")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        if flask.request.method == "GET":
            return LOGIN_PAGE.format(site=site, error="", next=html.escape(target))
        name = flask.request.form.get("username", "")
        password = flask.request.form.get("password", "")
        try:
            who = platform.auth.check_password(name, password)
        except AuthError:
            page = LOGIN_PAGE.format(site=site, error="<p class='error'>Wrong user name or password.</p>",
                                     next=html.escape(target))
            return page, 401
        flask.session.clear()
        flask.session.permanent = True
        flask.session["user"] = who.name
        flask.session["role"] = int(who.role)
        return flask.redirect(target)

    @server.route("/logout")
    def logout() -> Any:
        flask.session.clear()
        return flask.redirect("/login")
