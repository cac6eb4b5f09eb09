"""`metertwin run --opcua-anonymous`: an anonymous None endpoint for browsing tools. On that
unsecured channel anyone may browse, read and subscribe, and nobody (an operator neither) may
write, call or add nodes; the secure endpoint keeps its rules."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from asyncua import ua

from tests.devices.opcua_support import NS, PASSWORD, PlatformRun, connect, none_channel, try_forbidden


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    platform = PlatformRun(tmp_path_factory.mktemp("opcua-anon"), "--opcua-anonymous")
    yield platform
    assert platform.stop() == 0


def test_anonymous_endpoint_reads_and_nothing_more(run):
    """Anonymous over None reads a meter's energy and gets subscription changes; anonymous,
    an operator logged in over None, a viewer and an anonymous session on the secure channel
    each try to write, trip and add a node: all refused. The operator over the secure
    channel still trips."""
    asyncio.run(_anonymous(run))


class _Values:
    def __init__(self) -> None:
        self.values: list[object] = []

    def datachange_notification(self, node, val, data) -> None:
        self.values.append(val)


async def _anonymous(run: PlatformRun) -> None:
    anonymous = await connect(run, secure=False)  # asyncua's own client finds the None endpoint
    try:
        ns = await anonymous.get_namespace_index(NS)
        energy = anonymous.get_node(ua.NodeId("B01-01-01.em/EnergyKWh", ns))
        assert (await energy.read_data_value()).StatusCode.is_good()
        building = anonymous.get_node(ua.NodeId("B01", ns))
        names = [(await c.read_browse_name()).Name for c in await building.get_children()]
        assert "Floors" in names and "B01.mm" in names
        values = _Values()
        subscription = await anonymous.create_subscription(100, values)
        await subscription.subscribe_data_change(energy)
        for _ in range(900):
            if len(values.values) >= 2:
                break
            await asyncio.sleep(0.1)
        assert len(values.values) >= 2, "no changes over the anonymous subscription"
        results = {"anonymous, None endpoint": await try_forbidden(anonymous)}
    finally:
        await anonymous.disconnect()
    logins = {
        "operator, None channel": lambda: none_channel(run, "olga", PASSWORD),
        "viewer, secure channel": lambda: connect(run, "victor", PASSWORD),
        "anonymous, secure channel": lambda: connect(run),
        "wrong password": lambda: connect(run, "olga", "not the password"),
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
    print(f"\nOPC UA refusals with --opcua-anonymous: {len(refused)} of {len(attempts)} attempts refused")
    for who, what, answer in attempts:
        print(f"  {who:<26} {what:<9} {answer}")
    assert len(refused) == len(attempts) == 15, [a for a in attempts if a not in refused]

    operator = await connect(run, "olga", PASSWORD)
    try:
        ns = await operator.get_namespace_index(NS)
        meter = operator.get_node(ua.NodeId("B01-02-02.em", ns))
        command_id, state, reason = await meter.call_method(ua.NodeId("ElectricMeterType/Trip", ns))
        assert await asyncio.to_thread(run.confirmed, command_id, state), reason
    finally:
        await operator.disconnect()
