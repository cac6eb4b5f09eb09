"""`metertwin run` keeping twins in sync from an OPC UA device (`[[opcua]]` sources), over
real sockets: a second asyncua server started by the test stands in for a meter gateway,
beside the Modbus gateways of the platform's own world."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

import numpy as np
from asyncua import Server, ua

from control.modbus_link import GatewayAddress, ModbusLink
from devices.modbus.layout import layout
from scenarios.loader import load_scenario_text
from tests.control.test_run_http import Running, make_key
from tests.support import free_tcp_port
from twin.history import open_history
from twin.state import FleetState

SCENARIO = """\
[site]
id = "U1"
name = "OPC UA sources test"

[[buildings]]
id = "B01"
floors = 2
rooms_per_floor = 2
electric = {}
water = { valve = true }

[[opcua]]
twin = "B01-01-01.em"
url = "opc.tcp://127.0.0.1:PORT"
nodes = { energy_kwh = "ns=2;s=Meter1.Energy", power_w = "ns=2;s=Meter1.Power", relay_closed = "ns=2;s=Meter1.Relay" }

[opcua.methods]
relay_open = ["ns=2;s=Meter1", "ns=2;s=Meter1.Trip"]
relay_close = ["ns=2;s=Meter1", "ns=2;s=Meter1.Stuck"]

[[opcua]]
twin = "B01-01-02.em"
url = "opc.tcp://127.0.0.1:PORT"
nodes = { energy_kwh = "ns=2;s=Meter2.Energy", relay_closed = "ns=2;s=Meter2.Relay" }
"""
M1, M2 = "B01-01-01.em", "B01-01-02.em"


class Gateway:
    """An asyncua server on an event loop of its own (in a thread), standing in for a meter
    gateway: Meter1 with energy, power, a relay and two methods (Trip opens the relay and
    the power falls to 0; Stuck does nothing), and Meter2 with energy and a writable relay."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test gateway", daemon=True)
        self.thread.start()
        self.server: Server | None = None
        self.nodes: dict[str, ua.NodeId] = {}

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on the gateway's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def start(self, energy1: float, energy2: float) -> None:
        """Start serving (again), Meter1's relay closed and drawing 1.5 kW."""
        self.run(self._start(energy1, energy2))

    async def _start(self, energy1: float, energy2: float) -> None:
        server = self.server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        assert await server.register_namespace("urn:test:gateway") == 2
        meter1 = await server.nodes.objects.add_object(ua.NodeId("Meter1", 2), "Meter1")
        meter2 = await server.nodes.objects.add_object(ua.NodeId("Meter2", 2), "Meter2")
        number = ua.NodeId(ua.ObjectIds.Number)  # Meter1's energy: an abstract type, so a firmware bug can send text
        for name, parent, value, vtype, dtype in (
                ("Meter1.Energy", meter1, energy1, ua.VariantType.Double, number),
                ("Meter1.Power", meter1, 1500.0, ua.VariantType.Double, None),
                ("Meter1.Relay", meter1, True, ua.VariantType.Boolean, None),
                ("Meter2.Energy", meter2, energy2, ua.VariantType.Double, None),
                ("Meter2.Relay", meter2, True, ua.VariantType.Boolean, None)):
            node = await parent.add_variable(ua.NodeId(name, 2), name.split(".")[1], value, vtype, datatype=dtype)
            await node.set_writable()
            self.nodes[name] = node.nodeid

        async def trip(parent: ua.NodeId) -> list[ua.Variant]:
            await server.write_attribute_value(self.nodes["Meter1.Relay"], ua.DataValue(ua.Variant(False)))
            await server.write_attribute_value(self.nodes["Meter1.Power"], ua.DataValue(ua.Variant(0.0)))
            return []

        async def stuck(parent: ua.NodeId) -> list[ua.Variant]:
            return []

        await meter1.add_method(ua.NodeId("Meter1.Trip", 2), "Trip", trip, [], [])
        await meter1.add_method(ua.NodeId("Meter1.Stuck", 2), "Stuck", stuck, [], [])
        await server.start()

    def set(self, name: str, value: Any, status: int | None = None) -> None:
        """Change a node as the device would, with a status code when given."""
        datavalue = ua.DataValue(ua.Variant(value))
        if status is not None:
            datavalue = ua.DataValue(ua.Variant(value), StatusCode=ua.StatusCode(status))
        assert self.server is not None
        self.run(self.server.write_attribute_value(self.nodes[name], datavalue))

    def count(self, name: str, values: list[float]) -> None:
        """Write `values` to a node one after the other, as fast as the server takes them."""
        async def burst() -> None:
            assert self.server is not None
            for value in values:
                await self.server.write_attribute_value(self.nodes[name], ua.DataValue(ua.Variant(value)))
        self.run(burst())

    def value(self, name: str) -> Any:
        """A node's value as the device holds it."""
        assert self.server is not None
        return self.run(self.server.get_node(self.nodes[name]).read_value())

    def stop(self) -> None:
        """Stop serving (the platform loses the connection)."""
        if self.server is not None:
            self.run(self.server.stop())
            self.server = None

    def close(self) -> None:
        self.stop()

        async def settle() -> None:  # what the stopped servers left running
            current = asyncio.current_task()
            left = [t for t in asyncio.all_tasks() if t is not current]
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        self.run(settle())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def test_run_keeps_opcua_twins_in_sync_through_a_device_restart(tmp_path):
    """Twins sourced from an OPC UA device follow its values in state and history, beside
    the Modbus-polled world; a Bad status, a wrong type and a counter going backwards each
    raise `bad_reading` naming the twin and never reach the twin or the history; when the
    device stops, its twins go offline with an alarm, and after it restarts they come back,
    the alarm cleared, and every change after the resubscription arrives; a trip reaches
    the device's Trip method and is confirmed by read-back, a relay write to the other
    meter's node too, a command the device never shows fails with the device's reason,
    and a Modbus twin's trip still goes through its gateway."""
    port = free_tcp_port()
    gateway = Gateway(port)
    gateway.start(energy1=100.0, energy2=50.0)
    scenario = tmp_path / "opcua-sources.toml"
    scenario.write_text(SCENARIO.replace("PORT", str(port)))
    data = tmp_path / "data"
    run = None
    try:
        run = Running(scenario, data, "--poll", "0.5")
        admin = (data / "admin.key").read_text().strip()
        operator = make_key(data, "operator")

        def reported(twin: str) -> dict[str, Any]:
            return run.get(f"/api/twins/{twin}", admin).json()["reported"]

        def alarm(kind: str, twin: str, cleared: bool = False) -> dict[str, Any] | None:
            found = run.get(f"/api/alarms?kind={kind}&twin={twin}&include_cleared={str(cleared).lower()}",
                            admin).json()
            return found[0] if found else None

        def now() -> float:
            return float(run.get("/api/simulation", admin).json()["now"])

        def sources() -> dict[str, Any]:
            return run.get("/api/health", admin).json()["opcua_sources"]

        # in sync from the first subscription, beside the world's Modbus twins
        run.wait_until(lambda: reported(M1)["energy_kwh"] == 100.0 and reported(M2)["energy_kwh"] == 50.0,
                       "the OPC UA meters' values in their twins")
        assert reported(M1)["power_w"] == 1500.0 and reported(M1)["relay_closed"] == 1
        run.wait_until(lambda: run.get("/api/health", admin).json()["modbus"]["last_cycle"] is not None,
                       "a Modbus poll cycle")
        cycle = run.get("/api/health", admin).json()["modbus"]["last_cycle"]
        assert cycle["units_ok"] == 6 and cycle["units_failed"] == 0, cycle  # 8 units less the 2 OPC UA meters
        since = now()  # the interval of a meter's first reading only sets its reference: let one close
        run.wait_until(lambda: now() // 900 > since // 900, "the first interval boundary")
        for step in range(1, 13):  # the device counts; the twin follows over several intervals
            gateway.set("Meter1.Energy", 100.0 + 0.5 * step)
            run.wait_until(lambda s=step: reported(M1)["energy_kwh"] == 100.0 + 0.5 * s, f"energy step {step}")
            since = now()
            run.wait_until(lambda t=since: now() >= t + 300, "five minutes of platform time")

        # bad values: alarmed, never in the twin
        for value, status, reason in ((1.0e6, ua.StatusCodes.BadSensorFailure, "BadSensorFailure"),
                                      ("garbage", None, "not a number"),  # a Number node takes any type after a Bad
                                      (1.0e6, ua.StatusCodes.BadCommunicationError, "BadCommunicationError"),
                                      (10.0, None, "went backwards")):
            gateway.set("Meter1.Energy", value, status)
            run.wait_until(lambda r=reason: (a := alarm("bad_reading", M1)) is not None
                           and r in a["evidence"]["reason"], f"a bad_reading alarm saying {reason!r}")
            assert alarm("bad_reading", M1)["evidence"]["point"] == "energy_kwh"
            assert reported(M1)["energy_kwh"] == 106.0
        gateway.set("Meter1.Energy", 106.5)
        run.wait_until(lambda: reported(M1)["energy_kwh"] == 106.5, "a good value after the bad ones")
        assert sources()["refused"] == 4 and alarm("bad_reading", M1)["count"] == 4

        # the device goes away, and comes back having counted meanwhile
        before = sources()["values"]
        gateway.stop()
        run.wait_until(lambda: reported(M1)["online"] == 0 and reported(M2)["online"] == 0, "the twins offline")
        run.wait_until(lambda: alarm("offline", M1) is not None and alarm("offline", M2) is not None,
                       "offline alarms for both meters")
        raised = {twin: alarm("offline", twin)["id"] for twin in (M1, M2)}
        since = now()  # the periodic offline check (every two intervals) runs twice: the same alarms stay open
        run.wait_until(lambda: now() >= since + 4 * 900, "two offline checks")
        for twin in (M1, M2):
            offline = run.get(f"/api/alarms?kind=offline&twin={twin}&include_cleared=true", admin).json()
            assert [(a["id"], a["state"]) for a in offline] == [(raised[twin], "raised")], offline
        assert reported(M1)["online"] == 0
        gateway.start(energy1=120.0, energy2=55.0)
        run.wait_until(lambda: reported(M1)["online"] == 1 and reported(M1)["energy_kwh"] == 120.0
                       and reported(M2)["energy_kwh"] == 55.0, "the twins back after the resubscription")
        run.wait_until(lambda: alarm("offline", M1) is None and alarm("offline", M2) is None,
                       "the offline alarms cleared")
        assert alarm("offline", M1, cleared=True)["state"] == "cleared"
        links = sources()["links"]
        assert links[0]["connected"] and links[0]["generation"] >= 2, links

        # no change lost after the resubscription: a burst of 100 values, every one taken
        run.wait_until(lambda: sources()["values"] >= before + 5, "the five nodes' values on resubscribing")
        base = sources()["values"]
        assert base == before + 5  # each node's current value, once
        gateway.count("Meter1.Energy", [120.0 + n for n in range(1, 101)])
        run.wait_until(lambda: reported(M1)["energy_kwh"] == 220.0, "the burst's last value")
        run.wait_until(lambda: sources()["values"] >= base + 100, "every value of the burst")
        after = sources()
        assert after["values"] == base + 100 and after["links"][0]["values"] == base + 100  # one server: all its

        # commands: a method trip and a node write confirmed by read-back; a stuck one fails
        trip = run.post("/api/commands", {"twin": M1, "action": "relay_open"}, operator)
        assert trip.status_code == 201, trip.text
        write = run.post("/api/commands", {"twin": M2, "action": "relay_open"}, operator).json()
        world = run.post("/api/commands", {"twin": "B01-02-01.em", "action": "relay_open"}, operator).json()
        for command, what in ((trip.json(), "the trip by method"), (write, "the trip by node write"),
                              (world, "the Modbus twin's trip")):
            run.wait_until(lambda c=command: run.get(f"/api/commands/{c['id']}", admin).json()["state"] != "sent",
                           what)
            assert run.get(f"/api/commands/{command['id']}", admin).json()["state"] == "confirmed", what
        assert gateway.value("Meter1.Relay") is False and gateway.value("Meter1.Power") == 0.0
        assert gateway.value("Meter2.Relay") is False
        assert reported(M1)["relay_closed"] == 0 and reported(M1)["power_w"] == 0.0
        stuck = run.post("/api/commands", {"twin": M1, "action": "relay_close", "deadline_s": 86400},
                         operator).json()
        run.wait_until(lambda: run.get(f"/api/commands/{stuck['id']}", admin).json()["state"] != "sent",
                       "the stuck close to end")
        ended = run.get(f"/api/commands/{stuck['id']}", admin).json()
        assert ended["state"] == "failed" and "not confirmed by read-back" in ended["reason"], ended
        assert gateway.value("Meter1.Relay") is False
        assert alarm("command_failed", M1)["evidence"]["command"] == stuck["id"]

        # two interval boundaries more, so the last values are in closed intervals
        for _ in range(2):
            since = now()
            run.wait_until(lambda t=since: now() // 900 > t // 900, "an interval boundary")
    finally:
        if run is not None:
            assert run.stop() == 0
        gateway.close()

    history = open_history(data / "history")
    block = history.read(history.start, history.end)
    columns = [c.id for c in history.topology.columns]
    m1, m2 = block[columns.index(M1)], block[columns.index(M2)]
    used1, used2 = m1[np.isfinite(m1)], m2[np.isfinite(m2)]
    print(f"\nOPC UA sources in run: {len(used1)} intervals of {M1}, {np.count_nonzero(used1 == 0)} without change, "
          f"{np.count_nonzero(~np.isfinite(m1))} missing")
    assert (used1 >= 0).all() and used1.max() <= 120.0  # no 1e6, no jump below the reference
    assert abs(float(used1.sum()) - (220.0 - 100.0)) < 1e-3  # every kWh the device counted, once
    assert abs(float(used2.sum()) - (55.0 - 50.0)) < 1e-3
    assert np.count_nonzero(used1 == 0) >= 2  # intervals without a change: 0, not missing


def test_twins_from_opcua_leave_the_modbus_layout_in_place():
    """Polling a separate emulate's gateways, the platform leaves out the units of OPC UA
    twins (and the valve of one, from its meter's unit) and polls every other unit at the
    gateway and unit id the emulator serves it on; a gateway left empty is not polled."""
    site = load_scenario_text(SCENARIO.replace("PORT", "4840"), "sources.toml").site
    full = layout(site, per_gateway=1)  # what `metertwin emulate --per-gateway 1` serves
    addresses = [GatewayAddress("127.0.0.1", 5020 + n) for n in range(len(full))]
    elsewhere = {M1, M2, "B01-02-01.vl"}
    link = ModbusLink(site, FleetState.from_site(site), [t.id for t in site.twins], 900, lambda: 0.0,
                      addresses=addresses, per_gateway=1, elsewhere=elsewhere)
    emulated = {u.twin: (g.name, u.unit_id, u.valve) for g in full for u in g.units}
    polled = {u.twin: (g.name, u.unit_id, u.valve) for g in link.gateways for u in g.units}
    assert polled == {twin: (name, unit, None if valve in elsewhere else valve)
                      for twin, (name, unit, valve) in emulated.items() if twin not in elsewhere}
    assert emulated["B01-02-01.wm"][2] == "B01-02-01.vl" and polled["B01-02-01.wm"][2] is None
    ports = {g.name: a.port for g, a in zip(full, addresses, strict=True)}
    assert [(t.gateway.name, t.port) for t in link.targets()] == [(g.name, ports[g.name]) for g in link.gateways]
    assert len(link.gateways) == len(full) - 2


def test_a_trip_asked_while_the_device_is_away_is_carried_out_after_a_platform_restart(tmp_path):
    """A trip on an OPC UA twin whose device is gone stays sent (the write waits for the
    link); the platform stops with it open; restarted once the device is back, it sends the
    command again, the Trip method runs and the read-back confirms it."""
    port = free_tcp_port()
    gateway = Gateway(port)
    gateway.start(energy1=10.0, energy2=5.0)
    scenario = tmp_path / "opcua-sources.toml"
    scenario.write_text(SCENARIO.replace("PORT", str(port)))
    data = tmp_path / "data"
    run = None
    try:
        run = Running(scenario, data, "--poll", "0.5")
        admin = (data / "admin.key").read_text().strip()
        run.wait_until(lambda: run.get(f"/api/twins/{M1}", admin).json()["reported"]["energy_kwh"] == 10.0,
                       "the meter in sync")
        gateway.stop()
        run.wait_until(lambda: run.get(f"/api/twins/{M1}", admin).json()["reported"]["online"] == 0,
                       "the meter offline")
        trip = run.post("/api/commands", {"twin": M1, "action": "relay_open", "deadline_s": 86400}, admin).json()
        assert run.get(f"/api/commands/{trip['id']}", admin).json()["state"] == "sent"
        assert run.stop() == 0
        run = None
        gateway.start(energy1=10.0, energy2=5.0)
        assert gateway.value("Meter1.Relay") is True
        run = Running(scenario, data, "--poll", "0.5")
        run.wait_until(lambda: run.get(f"/api/commands/{trip['id']}", admin).json()["state"] != "sent",
                       "the resumed trip to end")
        ended = run.get(f"/api/commands/{trip['id']}", admin).json()
        assert ended["state"] == "confirmed", ended
        assert [e["state"] for e in ended["events"]] == ["created", "sent", "sent", "confirmed"]
        assert gateway.value("Meter1.Relay") is False
    finally:
        if run is not None:
            assert run.stop() == 0
        gateway.close()
