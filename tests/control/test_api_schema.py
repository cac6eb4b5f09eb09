"""The served OpenAPI, checked by schemathesis against a running `metertwin run`, once per
role (no key, viewer, operator, admin): no 5xx, every status, content type and body as
the schema says, and no 2xx for a call the role may not make (ROLES below is the rule,
written here on its own, not read from the code). A table drift (a route added without
its role here) fails too. Example counts are kept small so the file runs in about a
minute on a shared machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import free_tcp_port

SCENARIO = """\
[site]
id = "S1"
name = "Schema test"

[tariffs.res-power]
kind = "time_of_use"
bands = [{ name = "peak", price_yuan = 0.94, hours = ["08:00-22:00"] },
         { name = "valley", price_yuan = 0.31, hours = ["22:00-08:00"] }]

[tariffs.res-water]
utility = "water"
kind = "tiered"
period = "year"
thresholds_m3 = [180, 300]
prices_yuan = [3.8, 4.7, 6.5]

[[fee_items]]
name = "property fee"
basis = "area"
yuan_per_m2_month = 1.8
charge = "balance"

[[buildings]]
id = "B01"
floors = 2
rooms_per_floor = 2
electric = { tariff = "res-power" }
water = { tariff = "res-water", valve = true }
master = { electric = true, water = true }

[residents]
billing = "platform"
"""

#: The least role each operation needs: "public" needs none, "signed" only a provider's
#: signature (so no test role may get a 2xx from it).
ROLES: dict[tuple[str, str], str] = {
    ("GET", "/api/health"): "public",
    ("POST", "/api/payments/{provider}"): "signed",
    **{("GET", path): "viewer" for path in (
        "/api/site", "/api/site/history", "/api/overview", "/api/buildings", "/api/buildings/{building_id}",
        "/api/buildings/{building_id}/history",
        "/api/rooms", "/api/rooms/{room_id}", "/api/twins", "/api/twins/{twin_id}", "/api/twins/{twin_id}/history",
        "/api/twins/{twin_id}/day",
        "/api/accounts", "/api/accounts/{account_id}", "/api/accounts/{account_id}/access", "/api/arrears",
        "/api/commands", "/api/commands/{command_id}", "/api/alarms", "/api/alarms/{alarm_id}", "/api/tasks",
        "/api/tasks/{task_id}", "/api/tariffs", "/api/tariffs/{name}", "/api/fee-items", "/api/reports/energy",
        "/api/reports/consumption", "/api/reports/income", "/api/reports/orders", "/api/simulation",
        "/api/simulation/injections", "/api/analytics/buildings", "/api/analytics/buildings/{building_id}")},
    **{("POST", path): "operator" for path in (
        "/api/commands", "/api/commands/batch", "/api/alarms/{alarm_id}/acknowledge", "/api/alarms/{alarm_id}/clear",
        "/api/accounts/{account_id}/topups", "/api/accounts/{account_id}/refunds",
        "/api/accounts/{account_id}/bill-payments", "/api/tasks", "/api/simulation/injections")},
    ("DELETE", "/api/tasks/{task_id}"): "operator",
    ("PUT", "/api/simulation/speed"): "operator",
    ("GET", "/api/keys"): "admin", ("POST", "/api/keys"): "admin", ("DELETE", "/api/keys/{key_id}"): "admin",
    ("GET", "/api/users"): "admin", ("POST", "/api/users"): "admin",
}
RANK = {"none": 0, "viewer": 1, "operator": 2, "admin": 3}
MAX_EXAMPLES = int(os.environ.get("METERTWIN_SCHEMA_EXAMPLES", "4"))


def allowed(role: str, method: str, path: str) -> bool:
    """May `role` ('none' for no key) get a 2xx from this operation?"""
    need = ROLES[(method.upper(), path)]
    if need == "public":
        return True
    if need == "signed":
        return False
    return RANK[role] >= RANK[need]


def test_role_table_rule():
    """The rule itself: roles include the ones below them; public is open, signed closed."""
    assert allowed("none", "GET", "/api/health") and not allowed("admin", "POST", "/api/payments/{provider}")
    assert allowed("viewer", "GET", "/api/twins") and not allowed("none", "GET", "/api/twins")
    assert not allowed("viewer", "POST", "/api/commands") and allowed("admin", "POST", "/api/commands")
    assert not allowed("operator", "POST", "/api/keys") and allowed("admin", "POST", "/api/keys")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`metertwin run` of a small site on a free loopback port, with a key per role."""
    tmp = tmp_path_factory.mktemp("api-schema")
    scenario, data = tmp / "schema.toml", tmp / "data"
    scenario.write_text(SCENARIO)
    port = free_tcp_port()
    helptext = subprocess.run([sys.executable, "-m", "control.cli", "run", "--help"], capture_output=True,
                              text=True, check=True).stdout
    extra = [flag for flag in ("--no-opcua", "--no-modbus") if flag in helptext]  # not what is tested here
    log = (tmp / "run.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "control.cli", "run", str(scenario), "--data", str(data),
                             "--port", str(port), "--speed", "600", "--start", "2026-03-02T00:00", *extra],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            if proc.poll() is not None:
                raise AssertionError(f"metertwin run exited ({proc.returncode}): {(tmp / 'run.log').read_text()}")
            try:
                if httpx.get(url + "/api/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        keys = {"none": None, "admin": (data / "admin.key").read_text().strip()}
        for role in ("viewer", "operator"):
            made = httpx.post(url + "/api/keys", json={"name": f"schema-{role}", "role": role},
                              headers={"Authorization": f"Bearer {keys['admin']}"}, timeout=10)
            assert made.status_code == 201, made.text
            keys[role] = made.json()["key"]
        yield url, keys
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def test_every_operation_has_a_role(server):
    """The role table and the served schema name the same operations."""
    url, _ = server
    served = httpx.get(url + "/api/openapi.json", timeout=10).json()["paths"]
    operations = {(method.upper(), path) for path, methods in served.items() for method in methods}
    assert operations == set(ROLES), (f"missing from ROLES: {sorted(operations - set(ROLES))}; "
                                      f"not served: {sorted(set(ROLES) - operations)}")


def role_check(role: str):
    """A schemathesis check: a 2xx only for a call `role` may make."""

    def no_2xx_beyond_role(ctx, response, case) -> None:
        if 200 <= response.status_code < 300:
            assert allowed(role, case.method, case.path), (
                f"{role} got {response.status_code} from {case.method} {case.path}, which needs "
                f"{ROLES[(case.method.upper(), case.path)]}")

    return no_2xx_beyond_role


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def exercise(case, server, role: str) -> None:
    """Send one generated case with the role's key and run the checks on the answer."""
    url, keys = server
    headers = {"Authorization": f"Bearer {keys[role]}"} if keys[role] else {}
    if case.headers:  # a generated Authorization or X-API-Key would stand in for the role's
        for name in [h for h in case.headers if h.lower() in ("authorization", "x-api-key")]:
            del case.headers[name]
    case.call_and_validate(base_url=url, headers=headers, checks=[*CHECKS, role_check(role)], timeout=30)
    if case.path == "/api/simulation/speed":  # keep the world slow for the rest of the run
        httpx.put(url + "/api/simulation/speed", json={"speed": 600}, timeout=10,
                  headers={"Authorization": f"Bearer {keys['admin']}"})


def strategy(operation) -> st.SearchStrategy:
    """Cases that fit the schema, cases that break it, and the schema's own examples."""
    parts = [operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)]
    return st.one_of(*parts, *operation.get_strategies_from_examples())


@pytest.mark.parametrize("role", ["none", "viewer", "operator", "admin"])
def test_api_per_role(server, role):
    """Every operation of the served schema, fed generated and example requests with the
    role's key (none: no key): no 5xx, no answer off the schema, no 2xx beyond the role."""
    url, _ = server
    loaded = schemathesis.openapi.from_url(url + "/api/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in loaded.get_all_operations():
        operation = result.ok()
        operations += 1

        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=strategy(operation))
        def run(case) -> None:
            exercise(case, server, role)

        try:
            run()
        except (Exception, BaseExceptionGroup) as err:  # noqa: BLE001 - gathered, reported below
            causes = "".join(f"\n    {type(e).__name__}: {e}" for e in getattr(err, "exceptions", ()))
            failures.append(f"{operation.method.upper()} {operation.path}: {err}{causes}")
    assert operations == len(ROLES)
    assert not failures, f"{len(failures)} of {operations} operations failed as {role}:\n" + "\n\n".join(failures)


def test_served_docs_have_examples(server):
    """Every operation has a summary, and every response model in the schema an example."""
    url, _ = server
    served = httpx.get(url + "/api/openapi.json", timeout=10).json()
    for path, methods in served["paths"].items():
        for method, op in methods.items():
            assert op.get("summary"), f"{method.upper()} {path} has no summary"
    bare = [name for name, model in served["components"]["schemas"].items()
            if name.endswith("Out") and "examples" not in model]
    assert not bare, f"response models without an example: {bare}"
    assert httpx.get(url + "/api/docs", timeout=10).status_code == 200


def test_errors_name_what_was_wrong(server):
    """A bad id is 404 naming it; a viewer calling an operator action is 403 naming the
    role needed; a malformed body is 422 saying which field."""
    url, keys = server
    viewer = {"Authorization": f"Bearer {keys['viewer']}"}
    missing = httpx.get(url + "/api/twins/B09-01-01.em", headers=viewer, timeout=10)
    assert missing.status_code == 404 and "B09-01-01.em" in missing.json()["detail"]
    building = httpx.get(url + "/api/buildings/B77/history", headers=viewer, timeout=10)
    assert building.status_code == 404 and "B77" in building.json()["detail"]
    denied = httpx.post(url + "/api/accounts/A-B01-01-01/topups", json={"payment_id": "p1", "amount_fen": 100},
                        headers=viewer, timeout=10)
    assert denied.status_code == 403 and "needs operator" in denied.json()["detail"]
    bad = httpx.put(url + "/api/simulation/speed", json={"speed": -1}, timeout=10,
                    headers={"Authorization": f"Bearer {keys['operator']}"})
    assert bad.status_code == 422 and "body.speed" in bad.json()["message"]
    valve = httpx.get(url + "/api/twins/B01-01-01.vl/history", headers=viewer, timeout=10)
    assert valve.status_code == 400 and "valve" in valve.json()["detail"]
