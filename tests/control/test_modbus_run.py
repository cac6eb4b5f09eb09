"""The platform's Modbus side live: a separate `metertwin emulate` as the hardware (RTU over a
pseudo-terminal, TLS), a trip from the API confirmed through the collector; and faults on
10% of the units per kind, each marked within two cycles, none of it in the history."""

from __future__ import annotations

import asyncio
import math
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from control.modbus_link import ModbusLink, parse_gateways
from devices.modbus.emulator import Fault, WorldSource
from devices.modbus.maps import load_map
from devices.sim.world import World
from scenarios.loader import load_scenario
from tests.control.test_run_http import Running, make_key
from tests.support import require_program
from twin.history import HistoryWriter, Topology, open_history
from twin.state import FleetState

SCENARIO = """\
[site]
id = "M1"
name = "Modbus test"

[[buildings]]
id = "B01"
floors = 3
rooms_per_floor = 2
electric = {}
water = { valve = true }
master = { electric = true, water = true }
"""

START = "2026-03-02T18:00"


class Emulate:
    """`metertwin emulate` in its own process: RTU on a pty for the first gateway, TLS for
    the others; `gateways` is the --gateways value it prints."""

    def __init__(self, scenario: Path, certs: Path, log: Path) -> None:
        self.log = log.open("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "control.cli", "emulate", str(scenario), "--modbus-port", "0", "--speed", "300",
             "--start", START, "--per-gateway", "5", "--rtu", "--tls", str(certs)],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        end = time.monotonic() + 60
        while time.monotonic() < end:
            found = re.search(r"--gateways (\S+)", log.read_text())
            if found:
                self.gateways = found.group(1)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"emulate did not start:\n{log.read_text()}")

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(timeout=30)
        self.log.close()
        return code


def test_separate_emulate_over_rtu_and_tls_trip_confirmed(tmp_path):
    """The hardware in another process: the platform polls the RTU gateway over its pty and
    the others over TLS, every unit answers; a trip sent through the API is written over
    Modbus, read back, and confirmed once the meter reports no power; its energy register
    then stands still, and the history holds intervals built from the polled counters."""
    require_program("socat", "socat")
    require_program("openssl", "openssl")
    scenario = tmp_path / "modbus.toml"
    scenario.write_text(SCENARIO)
    emulate = Emulate(scenario, tmp_path / "certs", tmp_path / "emulate.log")
    run = None
    try:
        addresses = parse_gateways(emulate.gateways)
        assert addresses[0].serial and all(a.tls for a in addresses[1:]), emulate.gateways
        data = tmp_path / "data"
        run = Running(scenario, data, "--gateways", emulate.gateways, "--modbus-tls", str(tmp_path / "certs"),
                      "--per-gateway", "5", "--poll", "0.5")
        admin = (data / "admin.key").read_text().strip()
        operator = make_key(data, "operator")
        units = 14  # 6 electric, 6 water (valves on their units), 2 masters

        def all_answer() -> bool:
            answer = run.get("/api/health", admin)
            if answer.status_code != 200:
                return False
            cycle = answer.json()["modbus"]["last_cycle"]
            return bool(cycle) and cycle["units_ok"] == units and cycle["units_failed"] == 0
        run.wait_until(all_answer, "every unit to answer over RTU and TLS")
        health = run.get("/api/health", admin).json()["modbus"]
        assert health["gateways"] == 3

        twin = "B01-03-01.em"
        run.wait_until(lambda: run.get(f"/api/twins/{twin}", admin).json()["reported"]["power_w"] > 0,
                       "the meter to draw power")
        created = run.post("/api/commands", {"twin": twin, "action": "relay_open"}, operator)
        assert created.status_code == 201, created.text
        command = created.json()["id"]
        run.wait_until(lambda: run.get(f"/api/commands/{command}", admin).json()["state"] == "confirmed",
                       "the trip to be confirmed over Modbus")
        reported = run.get(f"/api/twins/{twin}", admin).json()["reported"]
        assert reported["relay_closed"] == 0 and reported["power_w"] == 0
        assert run.get("/api/health", admin).json()["modbus"]["writes"]["confirmed"] >= 1
        time.sleep(4.0)  # past the next interval's end (3 s at 300x): it carries what was used before the trip
        energy = run.get(f"/api/twins/{twin}", admin).json()["reported"]["energy_kwh"]
        time.sleep(4.0)  # a whole interval more, several poll cycles
        later = run.get(f"/api/twins/{twin}", admin).json()["reported"]
        assert later["energy_kwh"] == energy and later["relay_closed"] == 0  # the meter stopped consuming
        neighbour = run.get("/api/twins/B01-03-02.em", admin).json()["reported"]
        assert neighbour["relay_closed"] == 1
        run.wait_until(lambda: (data / "history" / "intervals").exists()
                       and any(p.stat().st_size for p in (data / "history" / "intervals").glob("*.f32")),
                       "an interval in the history")
    finally:
        if run is not None:
            assert run.stop() == 0
        assert emulate.stop() == 0
    history = open_history(tmp_path / "data" / "history")
    block = history.read(history.start, history.end)
    col = [c.id for c in history.topology.columns].index("B01-03-02.em")
    assert np.isfinite(block[col]).any() and np.nanmin(block[col]) >= 0


FAULT_SCENARIO = """\
[site]
id = "F1"
name = "Fault test"

[[buildings]]
id = "B01"
floors = 10
rooms_per_floor = 5
electric = {}
water = { valve = true }
master = { electric = true, water = true }
"""

KINDS = {
    "no_answer": Fault("no_answer"),
    "slow": Fault("slow", delay_s=1.0),  # past the 0.3 s timeout: an answer too late is no answer
    "exception": Fault("exception", code=4),
    "garbage": Fault("garbage"),
    "flap": Fault("flap", down_s=30.0, up_s=math.inf),  # silent over the first cycles, then back for good
}


def test_faults_on_ten_percent_of_units_each_marked_within_two_cycles(tmp_path):
    """10% of the units get each fault kind: every one of them is marked (offline, or its
    values refused) within two poll cycles, the healthy ones keep answering, a flapping
    unit comes back online, and no garbage reaches the history: every stored interval is
    the register's delta (whole steps of its scale, within the meter's rating), or missing."""
    path = tmp_path / "faults.toml"
    path.write_text(FAULT_SCENARIO)
    scenario = load_scenario(path)
    world = World(scenario, seed=1, start=datetime.fromisoformat(START), days=2, live=True)
    world.begin(lambda day: None)
    source = WorldSource(world)
    state = FleetState.from_site(scenario.site)
    topology = Topology.from_twins(scenario.site.id, scenario.site.timezone, world.interval_s, scenario.site.twins)
    columns = [c.id for c in topology.columns]
    clock = lambda: world.start_utc + world.now_s  # noqa: E731 - the platform's clock is the world's
    link = ModbusLink(scenario.site, state, columns, world.interval_s, clock, own_world=source, timeout_s=0.3)
    units = [u for g in link.gateways for u in g.units]
    assert len(units) == 102
    rng = np.random.default_rng(7)
    picked = rng.permutation(len(units))
    share = len(units) // 10
    faulty = {kind: [units[i].twin for i in picked[n * share:(n + 1) * share]] for n, kind in enumerate(KINDS)}
    marked_at: dict[str, int] = {}
    online_again: set[str] = set()

    async def scenario_run() -> list:
        await link.start(autorun=False)
        assert link.collector is not None and link.emulator is not None
        try:
            stats = [await link.collector.poll_cycle()]  # all healthy: references set
            for kind, twins in faulty.items():
                for twin in twins:
                    link.emulator.set_fault(twin, KINDS[kind])
            faults_set = time.monotonic()
            cycle = 0
            while cycle < 4 or not set(faulty["flap"]) <= online_again:
                cycle += 1
                source.advance_to(world.now_s + world.interval_s)
                stats.append(await link.collector.poll_cycle())
                _, events = link.drain(clock())
                for event in events:
                    if event.kind in ("offline", "bad_reading"):
                        marked_at.setdefault(event.twin, cycle)
                    elif event.kind == "online" and event.twin in marked_at:
                        online_again.add(event.twin)
                if cycle == 4:  # past the flapping units' down time
                    await asyncio.sleep(max(0.0, faults_set + KINDS["flap"].down_s + 0.5 - time.monotonic()))
                elif cycle > 4:  # offline units are tried one at a time on the probe connection
                    await asyncio.sleep(1.0)
                assert cycle < 60, f"flapping units not back: {set(faulty['flap']) - online_again}"
            return stats
        finally:
            await link.stop()

    stats = asyncio.run(scenario_run())
    for kind, twins in faulty.items():
        late = {t: marked_at.get(t) for t in twins if marked_at.get(t, 99) > 2}
        assert not late, f"{kind}: not marked within two cycles: {late}"
    valve_of = {u.twin: u.valve for u in units if u.valve}
    bad = {t for twins in faulty.values() for t in twins} | {valve_of[t] for ts in faulty.values() for t in ts
                                                            if t in valve_of}  # a valve shares its meter's unit
    assert not (set(marked_at) - bad), f"healthy units marked: {set(marked_at) - bad}"
    healthy = len(units) - sum(len(twins) for twins in faulty.values())
    assert all(s.units_ok >= healthy for s in stats)

    # what the builder made of it, stored as the platform stores it
    closed, _ = link.drain(clock() + world.interval_s)
    with HistoryWriter(tmp_path / "history", topology) as writer:
        for start, row in closed:
            writer.append(start, row[None, :].astype(np.float32))
    history = open_history(tmp_path / "history")
    block = history.read(history.start, history.end)
    assert np.isfinite(block).any()
    counter = {u.twin: next(p for p in load_map(u.model).points if p.counter and p.twin == "self") for u in units}
    limit = {u.twin: max(p.max_rate_per_h for p in load_map(u.model).points if p.counter and p.twin == "self")
             * world.interval_s / 3600 for u in units}
    for i, column in enumerate(topology.columns):
        values = block[i][np.isfinite(block[i])]
        assert (values >= 0).all() and (values <= limit[column.id]).all(), (column.id, values)
        point = counter[column.id]
        if not point.type.startswith("f"):  # an integer register: deltas come in whole steps of its scale
            steps = values.astype(np.float64) / point.scale
            assert np.allclose(steps, np.round(steps), atol=1e-2), column.id
    for twin in faulty["garbage"]:
        i = columns.index(twin)
        assert np.isnan(block[i][1:]).all()  # refused from the fault on: missing, never garbage


class Bench:
    """A meter on the test's own bench (not the platform's world): a source for one emulated
    unit whose energy only moves while its relay is closed."""

    def __init__(self, twin: str) -> None:
        self.twin = twin
        self.energy = 1234.5
        self.relay = 1

    def reported(self, twin_id: str) -> dict:
        self.energy += 0.01 * self.relay
        return {"energy_kwh": self.energy, "power_w": 1500.0 * self.relay, "voltage_v": 221.0, "current_a": 6.8,
                "power_factor": 0.99, "frequency_hz": 50.0, "relay_closed": self.relay, "credit_fen": 0,
                "purchased_fen": 0, "online": 1}

    def write(self, twin_id: str, field: str, value: int, source: str) -> None:
        if field != "relay_closed":
            raise ValueError(f"{field} is not writable here")
        self.relay = int(value)


def test_a_scenario_points_a_twin_at_hardware_polled_beside_the_world(tmp_path):
    """A `[[modbus]]` twin is read from its own address (here a gateway on the test's bench)
    by the same collector that polls the simulated world's gateways; a trip reaches it."""
    from devices.modbus.emulator import Emulator
    from devices.modbus.layout import Gateway, Unit

    hardware = Bench("B01-01-01.em")
    emulator = Emulator([Gateway("bench", "", (Unit(5, hardware.twin, "metertwin-pm1"),))], hardware, base_port=0)
    with emulator.in_thread():
        port = emulator.ports["bench"]
        scenario = tmp_path / "hardware.toml"
        scenario.write_text(SCENARIO + f"""
[[modbus]]
twin = "{hardware.twin}"
url = "modbus://127.0.0.1:{port}/5"
model = "metertwin-pm1"
""")
        data = tmp_path / "data"
        run = Running(scenario, data, "--poll", "0.5")
        try:
            admin = (data / "admin.key").read_text().strip()
            run.wait_until(lambda: run.get(f"/api/twins/{hardware.twin}", admin).json()["reported"]["energy_kwh"]
                           > 1234, "the bench meter's register in the twin")
            world_twin = run.get("/api/twins/B01-01-02.em", admin).json()["reported"]
            assert world_twin["energy_kwh"] < 1000  # the neighbour comes from the simulated world
            health = run.get("/api/health", admin).json()["modbus"]
            assert health["gateways"] == 2  # the world's one gateway and the bench
            trip = run.post("/api/commands", {"twin": hardware.twin, "action": "relay_open"}, admin).json()
            run.wait_until(lambda: run.get(f"/api/commands/{trip['id']}", admin).json()["state"] == "confirmed",
                           "the bench meter's trip to be confirmed")
            assert hardware.relay == 0
        finally:
            assert run.stop() == 0
