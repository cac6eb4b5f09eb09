"""Southbound OPC UA sync against a real asyncua server on a loopback port, restarted midway:
no change lost before the restart or after the resubscription, commands confirmed by read-back."""

from __future__ import annotations

import asyncio

import numpy as np
from asyncua import Server, ua

from devices.opcua.client import OpcUaSync
from scenarios.loader import load_scenario_text
from tests.support import free_tcp_port
from twin.state import FleetState

SITE = """\
[site]
id = "S1"

[[buildings]]
id = "B01"
floors = 1
rooms_per_floor = 1
electric = {}
water = { valve = true }

[[opcua]]
twin = "B01-01-01.em"
url = "opc.tcp://127.0.0.1:PORT"
nodes = { energy_kwh = "ns=2;s=Meter1.Energy", relay_closed = "ns=2;s=Meter1.Relay" }

[opcua.methods]
relay_open = ["ns=2;s=Meter1", "ns=2;s=Meter1.Trip"]
relay_close = ["ns=2;s=Meter1", "ns=2;s=Meter1.Stuck"]

[[opcua]]
twin = "B01-01-01.vl"
url = "opc.tcp://127.0.0.1:PORT"
nodes = { open = "ns=2;s=Valve1.Open" }
"""


class Device:
    """An asyncua server standing in for a meter gateway: a meter with an energy register,
    a relay and two methods (Trip opens the relay; Stuck does nothing), and a valve."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server = Server()

    async def start(self, energy: float, relay: bool = True) -> None:
        server = self.server
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace("urn:test:gateway")
        assert idx == 2
        meter = await server.nodes.objects.add_object(ua.NodeId("Meter1", 2), "Meter1")
        self.energy = await meter.add_variable(ua.NodeId("Meter1.Energy", 2), "Energy", energy, ua.VariantType.Double)
        self.relay = await meter.add_variable(ua.NodeId("Meter1.Relay", 2), "Relay", relay, ua.VariantType.Boolean)
        await self.relay.set_writable()

        async def trip(parent: ua.NodeId) -> list[ua.Variant]:
            tripped = ua.DataValue(ua.Variant(False, ua.VariantType.Boolean))
            await server.write_attribute_value(self.relay.nodeid, tripped)
            return []

        async def stuck(parent: ua.NodeId) -> list[ua.Variant]:
            return []

        await meter.add_method(ua.NodeId("Meter1.Trip", 2), "Trip", trip, [], [])
        await meter.add_method(ua.NodeId("Meter1.Stuck", 2), "Stuck", stuck, [], [])
        valve = await server.nodes.objects.add_object(ua.NodeId("Valve1", 2), "Valve1")
        self.valve = await valve.add_variable(ua.NodeId("Valve1.Open", 2), "Open", True, ua.VariantType.Boolean)
        await self.valve.set_writable()
        await server.start()

    async def count(self, first: int, last: int) -> None:
        """Write first..last to the energy register as fast as the server takes them."""
        for value in range(first, last + 1):
            await self.server.write_attribute_value(self.energy.nodeid, ua.DataValue(ua.Variant(float(value))))

    async def stop(self) -> None:
        await self.server.stop()


async def _wait(condition, what: str, bound_s: float = 60.0) -> None:
    """Poll until `condition()`; the bound only stops a broken run from hanging."""
    for _ in range(int(bound_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def test_sync_survives_a_server_restart_and_commands_are_read_back(monkeypatch) -> None:
    """Every value the device writes while subscribed arrives, in order, before and after a
    restart; the twin goes offline while the device is down; a method trip and a node write
    are confirmed by read-back, and a method that does nothing is not."""
    monkeypatch.setattr("devices.opcua.client.READBACK_S", 2.0)  # the stuck relay gives up sooner
    asyncio.run(_scenario())


async def _scenario() -> None:
    port = free_tcp_port()
    scenario = load_scenario_text(SITE.replace("PORT", str(port)), "s1.toml")
    fleet = FleetState.from_site(scenario.site)
    seen: list[float] = []
    readings: list[tuple[str, dict, float]] = []

    def reading(twin: str, fields: dict, at: float) -> None:  # the platform's collector seam
        readings.append((twin, fields, at))
        kind, row = fleet.locate(twin)
        fleet.report(kind, np.array([row]), int(at), online=1, **fields)

    sync = OpcUaSync(fleet, scenario.opcua, on_reading=reading,
                     on_change=lambda c: seen.append(c.value) if c.field == "energy_kwh" and c.good else None)
    url = f"opc.tcp://127.0.0.1:{port}"
    device = Device(port)
    await device.start(energy=0.0)
    await sync.start()
    try:
        await sync.wait_subscribed(url, 1)
        await device.count(1, 500)
        await _wait(lambda: seen and seen[-1] == 500.0, "the first 500 values")

        await device.stop()
        await _wait(lambda: fleet.twin("B01-01-01.em").reported["online"] == 0, "the twin to go offline")
        device = Device(port)
        await device.start(energy=500.0)
        await sync.wait_subscribed(url, 2)
        await device.count(501, 1000)
        await _wait(lambda: seen and seen[-1] == 1000.0, "the values after the restart")

        received = [int(v) for v in seen]
        print(f"\nOPC UA sync: {len(received)} notifications for 1000 values written, reconnects "
              f"{sync.status()[0]['reconnects']}")
        assert received == sorted(received), "values arrived out of order"
        assert set(received) == set(range(0, 1001)), f"lost: {sorted(set(range(0, 1001)) - set(received))[:10]}"
        meter = fleet.twin("B01-01-01.em")
        assert meter.reported["energy_kwh"] == 1000.0 and meter.reported["online"] == 1
        energies = [f["energy_kwh"] for t, f, _ in readings if "energy_kwh" in f]
        assert energies == [float(v) for v in received]  # every good value went through the seam, in order
        assert all(at > 1.7e9 for _, _, at in readings)  # stamped with the server's source time

        assert await sync.command("B01-01-01.em", "relay_closed", 0) is True  # the Trip method, read back
        assert fleet.twin("B01-01-01.em").reported["relay_closed"] == 0
        assert await sync.command("B01-01-01.vl", "open", 0) is True  # a node write, read back
        assert fleet.twin("B01-01-01.vl").reported["open"] == 0
        assert (await device.valve.read_value()) is False
        assert await sync.command("B01-01-01.em", "relay_closed", 1) is False  # Stuck: never reads back 1
        assert fleet.twin("B01-01-01.em").reported["relay_closed"] == 0
        assert [o[3] for o in sync.outcomes] == [True, True, False]
        assert np.all(fleet.tables[fleet.locate("B01-01-01.em")[0]].faces["reported"]["online"][:1] == 1)
    finally:
        await sync.stop()
        await device.stop()


SECURE_SITE = """\
[site]
id = "S2"

[[buildings]]
id = "B01"
floors = 1
rooms_per_floor = 1
electric = {}

[[opcua]]
twin = "B01-01-01.em"
url = "opc.tcp://127.0.0.1:PORT"
nodes = { energy_kwh = "ns=2;s=Meter1.Energy", relay_closed = "ns=2;s=Meter1.Relay" }
security = "sign_encrypt"
username = "gateway"
password_env = "MT_TEST_OPCUA_PASSWORD"
"""


class _OneUser:
    """The device's users: one name and password."""

    def get_user(self, iserver, username=None, password=None, certificate=None):
        from asyncua.crypto.permission_rules import User, UserRole

        return User(role=UserRole.User, name=username) if (username, password) == ("gateway", "s3cret-pass") else None


def test_sync_over_sign_and_encrypt_with_a_login(tmp_path, monkeypatch) -> None:
    """A device that offers only Basic256Sha256 SignAndEncrypt and a user name login: the
    sync logs in with the password from the environment and its own certificate, follows
    every value and writes the relay; with the wrong password it stays disconnected and
    says why."""
    monkeypatch.setenv("MT_TEST_OPCUA_PASSWORD", "s3cret-pass")
    asyncio.run(_secure(tmp_path, monkeypatch))


async def _secure(tmp_path, monkeypatch) -> None:
    from cryptography.hazmat.primitives import serialization

    from devices.opcua.security import make_certificate, write_key

    port = free_tcp_port()
    scenario = load_scenario_text(SECURE_SITE.replace("PORT", str(port)), "s2.toml")
    fleet = FleetState.from_site(scenario.site)
    key, cert = make_certificate("test device", "urn:test:device", server=True)
    write_key(tmp_path / "device.pem", key)
    (tmp_path / "device.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    device = Device(port)
    device.server = Server(user_manager=_OneUser())
    device.server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    device.server.set_identity_tokens([ua.UserNameIdentityToken])
    await device.server.load_certificate(str(tmp_path / "device.der"))
    await device.server.load_private_key(str(tmp_path / "device.pem"))
    start = device.start

    async def start_secured(energy: float, relay: bool = True) -> None:
        original = device.server.set_security_policy
        device.server.set_security_policy = lambda policies: None  # keep SignAndEncrypt only
        try:
            await start(energy, relay)
        finally:
            device.server.set_security_policy = original
    await device.server.init()
    device.server.init = _nothing  # already done, with our certificate
    await start_secured(0.0)
    url = f"opc.tcp://127.0.0.1:{port}"
    seen: list[float] = []
    sync = OpcUaSync(fleet, scenario.opcua, cert_dir=tmp_path / "client",
                     on_change=lambda c: seen.append(c.value) if c.field == "energy_kwh" and c.good else None)
    await sync.start()
    try:
        await sync.wait_subscribed(url, 1)
        await device.count(1, 100)
        await _wait(lambda: seen and seen[-1] == 100.0, "the values over the secure channel")
        assert [int(v) for v in seen] == list(range(0, 101))
        assert await sync.command("B01-01-01.em", "relay_closed", 0) is True  # no method mapped: a node write
        assert (await device.relay.read_value()) is False
        assert (tmp_path / "client" / "opcua_client_cert.der").exists()
    finally:
        await sync.stop()
    monkeypatch.setenv("MT_TEST_OPCUA_PASSWORD", "wrong")
    refused = OpcUaSync(FleetState.from_site(scenario.site), scenario.opcua, cert_dir=tmp_path / "client")
    await refused.start()
    try:
        await _wait(lambda: refused.status()[0]["last_error"] is not None, "the refused login")
        status = refused.status()[0]
        assert not status["connected"] and status["generation"] == 0 and "BadUserAccessDenied" in status["last_error"]
    finally:
        await refused.stop()
        await device.stop()


async def _nothing(*args, **kwargs) -> None:
    return None
