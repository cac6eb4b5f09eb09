"""The OPC UA server of a running `metertwin run`, over a real socket with Basic256Sha256
SignAndEncrypt: browse to a meter, read it, follow it live, trip it as an operator, be refused
as a viewer, an anonymous client, a wrong password and an untrusted certificate; alarms
arrive as events."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from asyncua import ua

from devices.opcua.security import MAX_SUBSCRIPTIONS_PER_USER
from tests.devices.opcua_support import NS, PASSWORD, PlatformRun, connect, none_channel, try_forbidden


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    platform = PlatformRun(tmp_path_factory.mktemp("opcua"))
    yield platform
    assert platform.stop() == 0


class Changes:
    """A subscription handler that keeps every value and event it gets."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.events: list[object] = []

    def datachange_notification(self, node, val, data) -> None:
        self.values.append(val)

    def event_notification(self, event) -> None:
        self.events.append(event)


async def _until(condition, what: str, bound_s: float = 90.0) -> None:
    for _ in range(int(bound_s / 0.1)):
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def test_browse_read_follow_and_trip_as_operator(run):
    """From Objects down Site > Building > Floors > Floor > Room to a meter; its energy is a
    Double in kWh with a source timestamp; a subscription sees it grow as the world runs;
    Trip returns the command confirmed and RelayClosed turns false; the offline meter's
    values are Bad; a threshold set low raises an alarm event."""
    asyncio.run(_operator(run))


async def _operator(run: PlatformRun) -> None:
    client = await connect(run, "olga", PASSWORD)
    try:
        path = ["H1", "B01", "Floors", "F01", "B01-01-01", "B01-01-01.em", "EnergyKWh"]
        node = client.nodes.objects
        ns = await client.get_namespace_index(NS)
        for name in path:
            children = {(await c.read_browse_name()).Name: c for c in await node.get_children()}
            assert name in children, f"{name} not under {await node.read_browse_name()}: {sorted(children)}"
            node = children[name]
        energy = await node.read_data_value()
        assert energy.StatusCode.is_good() and energy.Value.VariantType is ua.VariantType.Double
        assert energy.SourceTimestamp is not None
        units = await node.get_child([ua.QualifiedName("EngineeringUnits", 0)])
        assert (await units.read_value()).DisplayName.Text == "kWh"
        meter_type = await client.get_node(ua.NodeId("B01-01-01.em", ns)).read_type_definition()
        assert (await client.get_node(meter_type).read_browse_name()).Name == "ElectricMeterType"

        changes = Changes()
        subscription = await client.create_subscription(100, changes)
        await subscription.subscribe_data_change(node, queuesize=100)
        await subscription.subscribe_events(client.nodes.server, ua.ObjectIds.AlarmConditionType)
        readings = lambda: [v for v in changes.values if v is not None]  # noqa: E731 - Bad (stale) carries no value
        await _until(lambda: len(set(readings())) >= 3, "the energy register to move")
        assert readings() == sorted(readings()), changes.values

        meter = client.get_node(ua.NodeId("B01-01-02.em", ns))
        command_id, state, reason = await meter.call_method(ua.NodeId("ElectricMeterType/Trip", ns))
        assert command_id.startswith("c-") and await asyncio.to_thread(run.confirmed, command_id, state), reason
        relay = client.get_node(ua.NodeId("B01-01-02.em/RelayClosed", ns))
        await _until_async(relay, lambda dv: dv.Value.Value is False, "RelayClosed to turn false")
        command_id, state, reason = await meter.call_method(ua.NodeId("ElectricMeterType/Close", ns))
        assert await asyncio.to_thread(run.confirmed, command_id, state), reason

        offline = client.get_node(ua.NodeId("B01-03-02.em/EnergyKWh", ns))
        await _until_async(offline, lambda dv: dv.StatusCode.is_bad(), "the offline meter's value to turn Bad")

        await meter.call_method(ua.NodeId("ElectricMeterType/SetAlarmThresholds", ns), 0.001)
        limit = client.get_node(ua.NodeId("B01-01-02.em/PowerLimitW", ns))
        assert await limit.read_value() == 0.001
        await _until(lambda: any(str(getattr(e, "ConditionName", "")) == "power_over_limit" for e in changes.events),
                     "the power_over_limit alarm event")
        event = next(e for e in changes.events if e.ConditionName == "power_over_limit")
        assert "B01-01-02.em" in event.SourceName and event.Severity == 400
        await limit.write_value(ua.DataValue(ua.Variant(0.0, ua.VariantType.Double)))  # an operator may write it
        assert await limit.read_value() == 0.0
        refused = await try_forbidden(client)
        assert refused["add node"].startswith("refused"), refused  # nobody adds nodes, operators neither
    finally:
        await client.disconnect()


async def _until_async(node, check, what: str, bound_s: float = 90.0) -> None:
    for _ in range(int(bound_s / 0.2)):
        if check(await node.read_data_value(raise_on_bad_status=False)):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def test_viewer_reads_but_every_outsider_is_refused(run):
    """A viewer reads and subscribes (up to the per-user limit of subscriptions) but may not
    call Trip. The viewer, an anonymous client, a wrong password, an untrusted certificate
    and logins over a None channel each try to write a variable, call Trip and add a node:
    every attempt is refused."""
    asyncio.run(_refusals(run))


async def _refusals(run: PlatformRun) -> None:
    viewer = await connect(run, "victor", PASSWORD)
    try:
        ns = await viewer.get_namespace_index(NS)
        energy = await viewer.get_node(ua.NodeId("B01-01-01.em/EnergyKWh", ns)).read_data_value()
        assert energy.Value.VariantType is ua.VariantType.Double and energy.SourceTimestamp is not None
        subscription = await viewer.create_subscription(100, Changes())
        await subscription.subscribe_data_change(viewer.get_node(ua.NodeId("B01-01-01.em/PowerW", ns)))
        results = {"viewer": await try_forbidden(viewer)}
        for _ in range(MAX_SUBSCRIPTIONS_PER_USER - 1):  # up to the limit per user...
            await viewer.create_subscription(1000, Changes())
        with pytest.raises(ua.UaError):  # ...and not one more
            await viewer.create_subscription(1000, Changes())
    finally:
        await viewer.disconnect()
    logins = {
        "anonymous": lambda: connect(run),
        "wrong password": lambda: connect(run, "olga", "not the password"),
        "untrusted certificate": lambda: connect(run, "olga", PASSWORD, cert=run.untrusted),
        "anonymous, None channel": lambda: none_channel(run),
        "operator, None channel": lambda: none_channel(run, "olga", PASSWORD),
    }
    for who, login in logins.items():
        login_error = ""
        try:
            client = await login()
        except (ua.UaError, OSError, TimeoutError) as err:
            client, login_error = None, type(err).__name__
        try:
            results[who] = await try_forbidden(client, login_error)
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.disconnect()
    attempts = [(who, what, answer) for who, answers in results.items() for what, answer in answers.items()]
    refused = [a for a in attempts if a[2].startswith("refused")]
    print(f"\nOPC UA refusals without --opcua-anonymous: {len(refused)} of {len(attempts)} attempts refused")
    for who, what, answer in attempts:
        print(f"  {who:<23} {what:<9} {answer}")
    assert len(refused) == len(attempts) == 18, [a for a in attempts if a not in refused]
    assert list((run.data / "opcua" / "rejected").glob("*.der")), "the untrusted certificate is kept for review"
