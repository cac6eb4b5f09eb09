"""BalanceFen over OPC UA in platform billing: a `metertwin run` whose ledger holds the
balance, read over a real socket (Basic256Sha256 SignAndEncrypt) and compared with what
/api/accounts says, before and after a top-up; a meter without an account is Bad. And what
the link hands the server in each billing mode, in process."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import httpx
import pytest
from asyncua import ua

from control.opcua_link import PlatformLink
from control.runtime import Platform
from dashboard.data import available_fen
from tests.devices.opcua_support import NS, PASSWORD, SCENARIO, PlatformRun, connect
from twin.model import Kind

PLATFORM_BILLING = SCENARIO + """
[residents]
opening_yuan = [100, 200]
topup_below_yuan = [1, 1]
billing = "platform"
"""
METER, ACCOUNT, MASTER = "B01-01-01.em", "A-B01-01-01", "B01.mm"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    platform = PlatformRun(tmp_path_factory.mktemp("opcua-balance"), scenario_text=PLATFORM_BILLING)
    yield platform
    assert platform.stop() == 0


def _api(run: PlatformRun, method: str, path: str, **kwargs) -> httpx.Response:
    key = (run.data / "admin.key").read_text().strip()
    return httpx.request(method, f"http://127.0.0.1:{run.port}{path}", headers={"Authorization": f"Bearer {key}"},
                         timeout=10, **kwargs)


def _available(run: PlatformRun) -> int:
    answer = _api(run, "GET", "/api/accounts?building=B01&limit=100")
    assert answer.status_code == 200, answer.text
    return next(int(a["available_fen"]) for a in answer.json()["items"] if a["id"] == ACCOUNT)


async def _same_as_api(run: PlatformRun, node, bound_s: float = 90.0) -> int:
    """The BalanceFen read between two equal answers of /api/accounts (charges accrue as the
    world runs: a read that straddles an interval is tried again); the value agreed on."""
    seen = []
    end = time.monotonic() + bound_s
    while time.monotonic() < end:
        before = await asyncio.to_thread(_available, run)
        value = await node.read_data_value()
        after = await asyncio.to_thread(_available, run)
        assert value.StatusCode.is_good() and value.Value.VariantType is ua.VariantType.Int64
        if before == after == value.Value.Value:
            return int(value.Value.Value)
        seen.append((before, value.Value.Value, after))
        await asyncio.sleep(0.3)
    raise AssertionError(f"BalanceFen never matched /api/accounts: {seen[-5:]}")


def test_balance_is_the_ledgers_available_balance(run):
    """In platform billing a meter's BalanceFen is its account's available balance as
    /api/accounts shows it (not the meter's empty register), Good; it follows a top-up; the
    master meter, which has no account, reads Bad rather than a Good 0."""
    asyncio.run(_balance(run))


async def _balance(run: PlatformRun) -> None:
    client = await connect(run, "victor", PASSWORD)
    try:
        ns = await client.get_namespace_index(NS)
        node = client.get_node(ua.NodeId(f"{METER}/BalanceFen", ns))
        water = client.get_node(ua.NodeId(f"{METER[:-3]}.wm/BalanceFen", ns))
        opening = await _same_as_api(run, node)
        assert opening > 0  # the resident opened with 100..200 yuan
        assert (await water.read_data_value()).Value.VariantType is ua.VariantType.Int64  # the same account's
        master = await client.get_node(ua.NodeId(f"{MASTER}/BalanceFen", ns)).read_data_value(
            raise_on_bad_status=False)
        assert master.StatusCode.is_bad() and master.Value.Value is None, master

        amount = 500_000
        answer = await asyncio.to_thread(_api, run, "POST", f"/api/accounts/{ACCOUNT}/topups",
                                         json={"payment_id": "opcua-balance-1", "amount_fen": amount})
        assert answer.status_code == 201, answer.text
        after = await _same_as_api(run, node)
        # what the world charged meanwhile is a few yuan at most; the top-up is 5,000 yuan
        assert after > opening + amount // 2, (opening, after)
    finally:
        await client.disconnect()


IN_PROCESS = """\
[site]
id = "K1"

[[buildings]]
id = "B01"
floors = 2
rooms_per_floor = 2
electric = {{}}
water = {{}}
master = {{ electric = true, water = true }}

[residents]
billing = "{billing}"
opening_yuan = [30, 90]
"""


@pytest.mark.parametrize("billing", ["platform", "meter"])
def test_link_balances_follow_the_billing_mode(tmp_path, billing):
    """What the link hands the server, in one call: in platform billing each meter's
    account's available balance from the ledger (the dashboard's figure); in meter billing
    the electric meter's credit register, its water meter the account's; the master meters
    (no account) unknown."""
    path = tmp_path / "k.toml"
    path.write_text(IN_PROCESS.format(billing=billing))
    platform = Platform(str(path), tmp_path / "data", start=datetime(2026, 3, 2, 9))
    try:
        platform.world.advance_to(3 * 3600)
        balances = PlatformLink(platform).balances()
        for kind in (Kind.ELECTRIC_METER, Kind.WATER_METER):
            table = platform.state.tables[kind]
            accounts: list[str | None] = [None] * len(table)
            for twin, row in table.row_of.items():
                accounts[row] = platform.twin_specs[twin].account
            shown = balances[kind]
            assert shown.from_ledger is (billing == "platform")
            assert shown.known.tolist() == [a is not None for a in accounts]
            have = [i for i, a in enumerate(accounts) if a is not None]
            expected = available_fen(platform, [accounts[i] for i in have])
            assert shown.fen[have].tolist() == expected.tolist() and (expected > 0).all()
        if billing == "meter":
            credit = platform.state.tables[Kind.ELECTRIC_METER].faces["reported"]["credit_fen"]
            assert balances[Kind.ELECTRIC_METER].fen.tolist() == credit.tolist()
    finally:
        platform.close()
