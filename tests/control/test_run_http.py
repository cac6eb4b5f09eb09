"""`metertwin run` over real HTTP: roles, a command confirmed by the world, and a
SIGKILL in the middle of pending commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.support import Receiver, free_tcp_port

SCENARIO = """\
[site]
id = "H1"
name = "HTTP test"

[[buildings]]
id = "B01"
floors = 3
rooms_per_floor = 2
electric = {}
water = { valve = true }
master = { electric = true, water = true }

[[inject]]
twin = "B01-03-02.em"
kind = "offline"
start = "0d"
"""


class Running:
    """A `metertwin run` subprocess on a free loopback port."""

    def __init__(self, scenario: Path, data: Path, *extra: str) -> None:
        self.port = free_tcp_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (data.parent / f"run-{self.port}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "control.cli", "run", str(scenario), "--data", str(data), "--port", str(self.port),
             "--speed", "300", "--start", "2026-03-02T18:00", "--no-opcua", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.wait_until(lambda: self.get("/api/health").status_code == 200, "the server to answer")

    def get(self, path: str, key: str | None = None) -> httpx.Response:
        try:
            return httpx.get(self.url + path, headers=_auth(key), timeout=10)
        except httpx.TransportError:
            return httpx.Response(599)

    def post(self, path: str, body: dict, key: str | None = None) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=_auth(key), timeout=10)

    def wait_until(self, condition, what: str, bound_s: float = 400.0) -> None:
        """Poll until `condition()`; the bound only stops a broken run from hanging CI (it
        is wide: on a loaded machine the world falls behind its speed)."""
        end = time.monotonic() + bound_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"metertwin run exited ({self.proc.returncode}) waiting for {what}")
            if condition():
                return
            time.sleep(0.1)
        raise AssertionError(f"gave up waiting for {what}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.log.close()
        return code


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


@pytest.fixture
def scenario(tmp_path) -> Path:
    path = tmp_path / "http.toml"
    path.write_text(SCENARIO)
    return path


def make_key(data: Path, role: str) -> str:
    out = subprocess.run([sys.executable, "-m", "control.cli", "keys", "create", "--role", role, "--data", str(data)],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_roles_and_a_trip_confirmed_over_http(scenario, tmp_path):
    """Without a key: 401. A viewer reads but may not command: 403. An operator trips a
    relay and sees the command go from created to confirmed as the world reports it;
    errors are 4xx JSON saying what was wrong. SIGTERM stops the platform cleanly."""
    data = tmp_path / "data"
    run = Running(scenario, data)
    try:
        admin = (data / "admin.key").read_text().strip()
        viewer = make_key(data, "viewer")
        operator = make_key(data, "operator")
        assert run.get("/api/twins").status_code == 401
        assert run.get("/api/twins?kind=electric_meter", viewer).json()["total"] == 7
        body = {"twin": "B01-02-01.em", "action": "relay_open"}
        denied = run.post("/api/commands", body, viewer)
        assert denied.status_code == 403 and "needs operator" in denied.json()["detail"]
        created = run.post("/api/commands", body, operator)
        assert created.status_code == 201, created.text
        command_id = created.json()["id"]
        run.wait_until(lambda: run.get(f"/api/commands/{command_id}", viewer).json()["state"] == "confirmed",
                       "the trip to be confirmed")
        states = [e["state"] for e in run.get(f"/api/commands/{command_id}", viewer).json()["events"]]
        assert states == ["created", "sent", "confirmed"]
        twin = run.get("/api/twins/B01-02-01.em", viewer).json()
        assert twin["reported"]["relay_closed"] == 0 and twin["reported"]["power_w"] == 0
        bad = run.post("/api/commands", {"twin": "B01-02-01.em", "action": "valve_close"}, operator)
        assert bad.status_code == 400 and "applies to valve twins" in bad.json()["detail"]
        assert run.get("/api/twins/B09-01-01.em", viewer).status_code == 404
        assert run.post("/api/keys", {"name": "x", "role": "viewer"}, operator).status_code == 403
        assert run.post("/api/keys", {"name": "x", "role": "viewer"}, admin).status_code == 201
        assert "/api/commands" in run.get("/api/openapi.json").json()["paths"]
        # malformed requests get 4xx JSON saying what was wrong, never a 500
        raw = httpx.post(run.url + "/api/commands", content=b"{not json", timeout=10,
                         headers={"Authorization": f"Bearer {operator}", "content-type": "application/json"})
        assert raw.status_code == 422 and "detail" in raw.json()
        typed = run.post("/api/commands", {"twin": 5, "action": None, "deadline_s": -1}, operator)
        assert typed.status_code == 422 and {e["loc"][-1] for e in typed.json()["detail"]} >= {"action", "deadline_s"}
        assert run.get("/api/twins?limit=0", viewer).status_code == 422
        assert run.get("/api/commands/c-nope", viewer).status_code == 404
        assert run.post("/api/alarms/999/acknowledge", {}, operator).status_code == 404
        nowhere = {"name": "x", "action": "valve_close", "building": "B09"}
        assert run.post("/api/tasks", nowhere, operator).status_code == 400
    finally:
        code = run.stop(signal.SIGTERM)
    assert code == 0
    assert "stopped cleanly" in (tmp_path / f"run-{run.port}.log").read_text()


def test_sigkill_with_pending_commands_then_restart(scenario, tmp_path):
    """Killed with SIGKILL while a command waits on an unreachable meter, the platform
    restarts with the world where it was, resends the open command, fails it at its
    deadline and raises an alarm; a confirmed trip stays tripped after the restart."""
    data = tmp_path / "data"
    run = Running(scenario, data)
    admin = (data / "admin.key").read_text().strip()
    trip = run.post("/api/commands", {"twin": "B01-01-01.em", "action": "relay_open"}, admin).json()
    run.wait_until(lambda: run.get(f"/api/commands/{trip['id']}", admin).json()["state"] == "confirmed", "the trip")
    stuck = run.post("/api/commands", {"twin": "B01-03-02.em", "action": "relay_open", "deadline_s": 1800},
                     admin).json()
    sim_now = datetime.fromisoformat(run.get("/api/health").json()["sim_time"])
    later = (sim_now + timedelta(minutes=40)).replace(tzinfo=None).isoformat()
    task = run.post("/api/tasks", {"name": "close B01-01 valves", "action": "valve_close", "building": "B01",
                                   "floor": 1, "run_at": later}, admin)
    assert task.status_code == 201, task.text
    time.sleep(2.5)  # past one save of the world's time (saved every 2 s)
    run.stop(signal.SIGKILL)

    hook_port = free_tcp_port()
    again = Running(scenario, data, "--webhook", f"http://127.0.0.1:{hook_port}/alarms")
    receiver = None
    try:
        resumed_at = datetime.fromisoformat(again.get("/api/health").json()["sim_time"]).timestamp()
        assert resumed_at >= stuck["created"]  # the world went on from its last save, not from the start
        resumed = again.get(f"/api/commands/{stuck['id']}", admin).json()
        assert resumed["state"] in ("sent", "failed")
        assert [e["state"] for e in resumed["events"]].count("sent") == 2
        assert again.get("/api/twins/B01-01-01.em", admin).json()["reported"]["relay_closed"] == 0
        again.wait_until(lambda: again.get(f"/api/commands/{stuck['id']}", admin).json()["state"] == "failed",
                         "the unreachable meter's command to fail")
        failed = again.get(f"/api/commands/{stuck['id']}", admin).json()
        assert "reports relay_closed=1" in failed["reason"]
        alarms = again.get("/api/alarms", admin).json()
        assert any(a["kind"] == "command_failed" and a["twin"] == "B01-03-02.em" for a in alarms)
        # the webhook receiver was down when the alarm was raised; it gets it once it is up
        assert again.get("/api/health").json()["webhooks"][0]["queued"] >= 1
        receiver = Receiver(hook_port)
        again.wait_until(lambda: any(m["kind"] == "command_failed" for m in receiver.received),
                         "the webhook receiver to get the alarm")
        message = next(m for m in receiver.received if m["kind"] == "command_failed")
        assert message["twin"] == "B01-03-02.em" and message["event"] == "raised"
        # the task scheduled before the kill runs once, for its time, after the restart
        task_id = task.json()["id"]
        again.wait_until(lambda: len(again.get(f"/api/tasks/{task_id}", admin).json()["runs"]) == 1, "the task")
        time.sleep(1.0)
        runs = again.get(f"/api/tasks/{task_id}", admin).json()["runs"]
        assert len(runs) == 1 and [i["twin"] for i in runs[0]["items"]] == ["B01-01-01.vl", "B01-01-02.vl"]
    finally:
        assert again.stop() == 0
        if receiver is not None:
            receiver.close()


PREPAID = """\
[site]
id = "P1"

[tariffs.dear]
kind = "flat"
price_yuan = 50.0

[[buildings]]
id = "B01"
floors = 1
rooms_per_floor = 2
electric = { tariff = "dear" }
water = { valve = true }

[residents]
billing = "platform"
opening_yuan = [1, 1]
topup_below_yuan = [0, 0]
topup_delay_hours = 10000
"""


def test_prepaid_top_ups_cut_off_restore_and_payment_callbacks(tmp_path):
    """Platform billing over HTTP: an account that runs out of credit outside protected
    hours is cut off by the policy (its relay trips, confirmed) and loses its access
    flag; an operator's top-up (idempotent, refused when the id is reused for another
    amount) restores it; refunds never exceed the balance; a signed payment callback
    credits once and a forged one credits nothing; a viewer cannot top up."""
    import hashlib
    import hmac
    import json as _json

    scenario = tmp_path / "prepaid.toml"
    scenario.write_text(PREPAID)
    data = tmp_path / "data"
    data.mkdir()
    (data / "payment_providers.json").write_text('{"wxpay": "wx-secret"}')
    run = Running(scenario, data, "--speed", "600", "--start", "2026-03-02T08:00")
    try:
        admin = (data / "admin.key").read_text().strip()
        viewer = make_key(data, "viewer")
        account = "A-B01-01-01"

        def cut_command():
            commands = run.get("/api/commands?twin=B01-01-01.em", viewer).json()
            return next((c for c in commands if c["source"] == "policy" and c["action"] == "relay_open"), None)

        run.wait_until(lambda: (c := cut_command()) is not None and c["state"] == "confirmed", "the cut-off")
        state = run.get(f"/api/accounts/{account}", viewer).json()
        assert state["cut_off"] and state["available_fen"] <= -1000
        assert run.get(f"/api/accounts/{account}/access", viewer).json()["access"] is False
        assert run.post(f"/api/accounts/{account}/topups", {"payment_id": "p1", "amount_fen": 500000},
                        viewer).status_code == 403
        first = run.post(f"/api/accounts/{account}/topups", {"payment_id": "p1", "amount_fen": 500000}, admin)
        assert first.status_code == 201 and not first.json()["replay"]
        again = run.post(f"/api/accounts/{account}/topups", {"payment_id": "p1", "amount_fen": 500000}, admin)
        assert again.json()["replay"] and again.json()["transfer"] == first.json()["transfer"]
        assert run.post(f"/api/accounts/{account}/topups", {"payment_id": "p1", "amount_fen": 1},
                        admin).status_code == 409
        run.wait_until(lambda: any(c["source"] == "policy" and c["action"] == "relay_close"
                                   for c in run.get("/api/commands?twin=B01-01-01.em", viewer).json()), "the restore")
        assert run.get(f"/api/accounts/{account}/access", viewer).json()["access"] is True
        balance = run.get(f"/api/accounts/{account}", viewer).json()["balance_fen"]
        assert run.post(f"/api/accounts/{account}/refunds", {"amount_fen": balance + 1, "reason": "x"},
                        admin).status_code == 409
        body = _json.dumps({"transaction_id": "wx-77", "account": "A-B01-01-02", "amount_fen": 12345}).encode()
        ts = str(int(time.time()))
        sig = hmac.new(b"wx-secret", ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers = {"X-MeterTwin-Timestamp": ts, "X-MeterTwin-Signature": sig, "content-type": "application/json"}
        ok = httpx.post(run.url + "/api/payments/wxpay", content=body, headers=headers, timeout=10)
        assert ok.status_code == 200 and ok.json()["credited"]
        replay = httpx.post(run.url + "/api/payments/wxpay", content=body, headers=headers, timeout=10)
        assert replay.json()["replay"] and replay.json()["transfer"] == ok.json()["transfer"]
        report = run.get("/api/reports/orders?format=csv", viewer)
        assert report.headers["content-type"].startswith("text/csv") and "wxpay:wx-77" in report.text
        income = run.get("/api/reports/income?period=day", viewer).json()
        assert sum(row.get("paid_in_fen", 0) for row in income) >= 500000 + 12345
        forged = httpx.post(run.url + "/api/payments/wxpay", content=body,
                            headers={**headers, "X-MeterTwin-Signature": "00" * 32}, timeout=10)
        assert forged.status_code == 400 and "bad signature" in forged.json()["detail"]
    finally:
        assert run.stop() == 0
