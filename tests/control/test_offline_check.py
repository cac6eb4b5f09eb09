"""The runtime's offline check over Modbus: a meter is blamed for silence only when the
collector has asked it since; a platform that stalled (first-use kernel compiles holding
the interpreter) leaves stale stamps that are its own, and raises nothing for them."""

from __future__ import annotations

import asyncio
from datetime import datetime

from control.runtime import ModbusOptions, Platform
from twin.state import Kind

SCENARIO = """\
[site]
id = "S1"
name = "Offline check test"

[[buildings]]
id = "B01"
floors = 2
rooms_per_floor = 2
electric = {}
water = {}
"""


def offline(platform: Platform) -> set[str | None]:
    """Twins with an open `offline` alarm."""
    return {a.twin for a in platform.alarms.open_alarms() if a.kind == "offline"}


def test_a_stalled_collector_raises_no_offline_alarm_and_a_silent_meter_still_does(tmp_path):
    """Ticks that jump three intervals while no poll cycle ran raise nothing (the meters were
    never asked); after a cycle every meter answered; a meter whose report is then older than
    two intervals, with the collector current, is raised."""
    scenario = tmp_path / "site.toml"
    scenario.write_text(SCENARIO)
    platform = Platform(str(scenario), tmp_path / "data", start=datetime(2026, 3, 2), modbus=ModbusOptions())
    interval = platform.world.interval_s
    assert platform.modbus is not None
    link = platform.modbus

    async def run() -> tuple[set[str | None], set[str | None], set[str | None]]:
        await link.start(autorun=False)
        try:
            await link.poll_cycle()
            meters = platform.state.tables[Kind.ELECTRIC_METER]
            assert meters.stamps["reported"].min() > 0  # every meter answered the first cycle
            platform._tick(3 * interval)  # the stall: the world moved on, the collector did not
            stalled = offline(platform)
            await link.poll_cycle()  # the collector catches up
            platform._check_offline(platform.now())
            caught_up = offline(platform)
            meters.stamps["reported"][0] = int(platform.now()) - 3 * interval  # one meter stopped reporting
            platform._check_offline(platform.now())
            return stalled, caught_up, offline(platform)
        finally:
            await link.stop()

    try:
        stalled, caught_up, silent = asyncio.run(run())
    finally:
        platform.close()
    assert platform.tasks[0].name == "offline check" and platform.tasks[0].runs == 1  # it ran in the stall
    assert stalled == set() and caught_up == set()
    assert silent == {platform.state.tables[Kind.ELECTRIC_METER].ids[0]}
