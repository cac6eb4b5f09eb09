"""Modbus: the collector polling 10,000 emulated meters behind 50 gateways, clean and with
10% of the units dead, and a 32-meter RS-485 bus at 9600 baud.

The emulated hardware runs in separate processes, as in the field: `metertwin emulate` of
a bench scenario (50 buildings of 200 electric-only rooms: exactly 10,000 single-phase
meters, 200 units a gateway), once clean and once with `--faults no_answer:0.1`, and a
32-meter scenario with its one gateway served as Modbus RTU on a socat pty (`--rtu`).
The collector runs here, with the platform's settings (`metertwin run`: 1 s timeout, 2
retries, offline after 2 failed polls) and `CONNECTIONS` connections a gateway.

Figures, each beside a baseline measured in the same run:
- the clean cycle: requests/s, meters/s and seconds, against a bare raw-socket asyncio
  client that sends each unit's planned reads as prebuilt Modbus/TCP frames over the same
  number of connections, one request in flight on each, and reads the answers without
  decoding them: what the same servers do saturated (goal: at least 0.6 of it; a cycle
  under 3 s). Medians of `ROUNDS` rounds after a warm-up cycle, the three cycles of a
  round (raw, clean, faulty) one after the other so the machine's load hits them alike.
- the cycle with 10% dead units, in steady state (after they are marked offline and are
  tried on the probe connection, outside the cycle), as a ratio to the clean cycle (goal:
  at most 1.1); and the cycles it took to mark them all, against `offline_after`.
- the RS-485 bus: the measured cycle against the wire-time arithmetic (per request, the
  request and answer frames' bytes x 11 bits / baud, plus the emulated device's turnaround).

    python -m bench modbus            # about 2-3 minutes
    python -m bench modbus --quick    # 2,000 meters behind 10 gateways, fewer rounds
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import Report, quick
from control.modbus_link import GatewayAddress, parse_gateways
from devices.modbus.collector import Collector, CycleStats, Target, read_pdu
from devices.modbus.emulator import Rtu
from devices.modbus.layout import Gateway, layout
from devices.modbus.maps import load_map, plan_reads
from scenarios.loader import load_scenario

ROOT = Path(__file__).resolve().parent.parent
PER_GATEWAY = 200  #: units a gateway
CONNECTIONS = 4  #: TCP connections a gateway, collector and raw client alike (as `metertwin run` polls)
FAULT_SHARE = 0.1  #: share of the units injected with no_answer
BUS_UNITS, BAUD = 32, 9600  #: the RS-485 bus
TIMEOUT_S, RETRIES, OFFLINE_AFTER = 1.0, 2, 2  #: as `metertwin run` polls
START_LIMIT_S = 180.0  #: the longest an emulator may take to come up
CYCLE_LIMIT_S = 120.0  #: the longest any one cycle may take
MARK_LIMIT = 6  #: the most cycles given to mark the dead units

SCENARIO = """\
[site]
id = "{site}"
name = "Modbus bench"

[[buildings]]
ids = "B01..B{last:02d}"
floors = {floors}
rooms_per_floor = {rooms}
electric = {{}}
"""


class Emulate:
    """`metertwin emulate` in a process of its own, its output in a log file."""

    def __init__(self, scenario: Path, log: Path, per_gateway: int, *extra: str) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "control.cli", "emulate", str(scenario), "--modbus-port", "0", "--speed", "1",
                 "--per-gateway", str(per_gateway), *extra], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)

    def gateways(self, deadline: float) -> str:
        """The --gateways value it prints once its gateways listen."""
        while True:
            found = re.search(r"--gateways (\S+)", self.log.read_text(errors="replace"))
            if found:
                return found.group(1)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"emulate did not come up: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not end within 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


def frames(gateway: Gateway) -> list[bytes]:
    """Each unit's planned reads as Modbus/TCP request frames (MBAP header and PDU)."""
    out = []
    for unit in gateway.units:
        regmap = load_map(unit.model)
        for read in plan_reads(regmap, regmap.polled()):
            pdu = read_pdu(read)
            out.append(struct.pack(">HHHB", 1, 0, len(pdu) + 1, unit.unit_id) + pdu)
    return out


class RawClient:
    """The baseline: prebuilt request frames over plain asyncio streams, `connections` a
    gateway, one request in flight on each, answers read by their length and not decoded."""

    def __init__(self, addresses: list[GatewayAddress], gateways: list[Gateway], connections: int) -> None:
        self.addresses, self.connections = addresses, connections
        self.frames = [frames(g) for g in gateways]
        self.streams: list[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = []

    async def open(self) -> None:
        for address in self.addresses:
            self.streams.append([await asyncio.open_connection(address.host, address.port)
                                 for _ in range(self.connections)])

    async def cycle(self) -> tuple[int, float]:
        """Every frame once: (requests, seconds)."""

        async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, todo: Any) -> None:
            for frame in todo:
                writer.write(frame)
                head = await reader.readexactly(7)
                await reader.readexactly((head[4] << 8 | head[5]) - 1)

        started = time.perf_counter()
        async with asyncio.timeout(CYCLE_LIMIT_S):
            jobs = []
            for streams, gateway_frames in zip(self.streams, self.frames, strict=True):
                todo = iter(gateway_frames)  # shared by the gateway's connections
                jobs += [worker(reader, writer, todo) for reader, writer in streams]
            await asyncio.gather(*jobs)
        return sum(len(f) for f in self.frames), time.perf_counter() - started

    def close(self) -> None:
        for streams in self.streams:
            for _, writer in streams:
                writer.close()


@dataclass
class Seen:
    """What a collector's callbacks saw."""

    readings: int = 0
    offline: set[str] = field(default_factory=set)
    online_again: int = 0

    def reading(self, twin: str, fields: dict[str, float], ts: float) -> None:
        self.readings += 1

    def status(self, twin: str, online: bool, reason: str) -> None:
        if online:
            self.online_again += twin in self.offline
            self.offline.discard(twin)
        else:
            self.offline.add(twin)


def collector(targets: list[Target], seen: Seen, **options: Any) -> Collector:
    return Collector(targets, seen.reading, seen.status, lambda *a: None, timeout_s=TIMEOUT_S, retries=RETRIES,
                     offline_after=OFFLINE_AFTER, **options)


async def cycle(c: Collector) -> CycleStats:
    return await asyncio.wait_for(c.poll_cycle(), CYCLE_LIMIT_S)


def wire_seconds(gateway: Gateway, baud: int, turnaround_s: float) -> float:
    """One cycle of a serial bus on paper: per request, request and answer frames (address,
    PDU, CRC) at 11 bits a character, plus the device's turnaround."""
    total = 0.0
    for unit in gateway.units:
        regmap = load_map(unit.model)
        for read in plan_reads(regmap, regmap.polled()):
            pdu = read_pdu(read)
            answer = 2 + ((read.count + 7) // 8 if read.table in ("coil", "discrete") else 2 * read.count)
            total += ((1 + len(pdu) + 2) + (1 + answer + 2)) * 11 / baud + turnaround_s
    return total


def run(report: Report) -> None:
    small = quick()
    buildings = 10 if small else 50
    rounds = 3 if small else 7
    meters = buildings * PER_GATEWAY
    rtu = shutil.which("socat") is not None
    modbus_log = logging.getLogger("metertwin.modbus")
    level = modbus_log.level
    with tempfile.TemporaryDirectory(prefix="mt-bench-modbus-") as tmp:
        scenario, bus_scenario = Path(tmp) / "fleet.toml", Path(tmp) / "bus.toml"
        scenario.write_text(SCENARIO.format(site="BMB", last=buildings, floors=20, rooms=10))  # 200 a building
        bus_scenario.write_text(SCENARIO.format(site="BUS", last=1, floors=4, rooms=BUS_UNITS // 4))
        emulators: dict[str, Emulate] = {}
        try:
            print(f"bench modbus: starting emulators ({meters:,} meters clean, the same with "
                  f"{FAULT_SHARE:.0%} silent{', a 32-meter RTU bus' if rtu else ''})", file=sys.stderr, flush=True)
            emulators["clean"] = Emulate(scenario, Path(tmp) / "clean.log", PER_GATEWAY)
            emulators["faulty"] = Emulate(scenario, Path(tmp) / "faulty.log", PER_GATEWAY,
                                          "--faults", f"no_answer:{FAULT_SHARE}")
            if rtu:
                emulators["bus"] = Emulate(bus_scenario, Path(tmp) / "bus.log", BUS_UNITS, "--rtu", "--baud", str(BAUD))
            else:
                print("bench modbus: no socat (Debian package socat): the RS-485 figure is left out",
                      file=sys.stderr, flush=True)
            deadline = time.monotonic() + START_LIMIT_S
            where = {name: parse_gateways(e.gateways(deadline)) for name, e in emulators.items()}
            modbus_log.setLevel(logging.ERROR)  # not a warning line for each of the 1,000 dead units
            asyncio.run(measure(report, scenario, bus_scenario, where, emulators["clean"].proc.pid, rounds))
        finally:
            modbus_log.setLevel(level)
            for e in emulators.values():
                e.stop()


def cpu_s(pid: int) -> float:
    """CPU seconds (user and system) a process has used so far; NaN where /proc has no answer."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return math.nan


async def measure(report: Report, scenario: Path, bus_scenario: Path, where: dict[str, list[GatewayAddress]],
                  clean_pid: int, rounds: int) -> None:
    from control.emulate import choose_faults

    gateways = layout(load_scenario(scenario).site, per_gateway=PER_GATEWAY)
    meters = sum(len(g.units) for g in gateways)
    dead = set(choose_faults(gateways, [("no_answer", FAULT_SHARE)], seed=0))

    def targets(addresses: list[GatewayAddress]) -> list[Target]:
        return [Target(g, host=a.host, port=a.port) for g, a in zip(gateways, addresses, strict=True)]

    clean_seen, faulty_seen = Seen(), Seen()
    clean = collector(targets(where["clean"]), clean_seen, connections_per_gateway=CONNECTIONS)
    faulty = collector(targets(where["faulty"]), faulty_seen, connections_per_gateway=CONNECTIONS)
    raw = RawClient(where["clean"], gateways, CONNECTIONS)
    try:
        await raw.open()
        warm = await cycle(clean)
        raw_requests, raw_warm = await raw.cycle()
        print(f"bench modbus: warm-up: collector {warm.seconds:.2f} s ({warm.units_ok:,} ok, {warm.units_failed} "
              f"failed), raw {raw_warm:.2f} s", file=sys.stderr, flush=True)
        marking: list[CycleStats] = []
        while not dead <= faulty_seen.offline and len(marking) < MARK_LIMIT:
            marking.append(await cycle(faulty))
            print(f"bench modbus: faulty cycle {len(marking)}: {marking[-1].seconds:.2f} s, "
                  f"{len(faulty_seen.offline & dead):,} of {len(dead):,} dead units marked", file=sys.stderr,
                  flush=True)
        marked = len(faulty_seen.offline & dead)
        false_marks = len(faulty_seen.offline - dead)
        raw_s: list[float] = []
        clean_stats: list[CycleStats] = []
        faulty_stats: list[CycleStats] = []
        cpu: dict[str, list[float]] = {"raw": [], "collector": [], "raw server": [], "collector server": [],
                                 "faulty": []}
        for n in range(rounds):
            for side in ("raw", "collector"):
                here, there = time.process_time(), cpu_s(clean_pid)
                if side == "raw":
                    raw_s.append((await raw.cycle())[1])
                else:
                    clean_stats.append(await cycle(clean))
                cpu[side].append(time.process_time() - here)
                cpu[f"{side} server"].append(cpu_s(clean_pid) - there)
            here = time.process_time()
            faulty_stats.append(await cycle(faulty))
            cpu["faulty"].append(time.process_time() - here)
            print(f"bench modbus: round {n + 1}/{rounds}: raw {raw_s[-1]:.2f} s, collector "
                  f"{clean_stats[-1].seconds:.2f} s, with dead units {faulty_stats[-1].seconds:.2f} s",
                  file=sys.stderr, flush=True)
    finally:
        raw.close()
        clean.close()
        faulty.close()

    clean_s = statistics.median(s.seconds for s in clean_stats)
    faulty_s = statistics.median(s.seconds for s in faulty_stats)
    raw_median = statistics.median(raw_s)
    requests = clean_stats[0].requests
    failures = sum(s.units_failed for s in clean_stats)
    cpu_median = {side: statistics.median(values) for side, values in cpu.items()}
    server_us = 1e6 * cpu_median["collector server"] / requests
    both = (f"emulators in separate processes, collector here, {len(gateways)} gateways x {CONNECTIONS} connections; "
            f"both sides share the machine's {os.cpu_count()} cores, with other agents' work; a pymodbus server "
            "process saturates near 16,000 requests/s on an idle 2-core machine")
    report.add(f"Modbus cycle, {meters:,} meters / {len(gateways)} gateways: requests/s", requests / clean_s,
               "requests/s", "bare raw-socket client, same servers", raw_requests / raw_median,
               note=f"goal >= 0.6; median of {rounds}; {requests:,} requests a cycle; {failures} failed units; {both}")
    report.add(f"Modbus cycle, {meters:,} meters: meters/s", meters / clean_s, "meters/s",
               "bare raw-socket client, same servers", meters / raw_median)
    report.add(f"Modbus cycle, {meters:,} meters: seconds", clean_s, "s", "bare raw-socket client, same servers",
               raw_median, note=f"goal < 3 s; cycles {', '.join(f'{s.seconds:.2f}' for s in clean_stats)}; raw "
                                f"{', '.join(f'{s:.2f}' for s in raw_s)}")
    report.add(f"Modbus cycle, {meters:,} meters: CPU of the polling process", cpu_median["collector"], "CPU s",
               "bare raw-socket client", cpu_median["raw"],
               note=f"the emulator process spent {cpu_median['collector server']:.2f} CPU s a cycle under the "
                    f"collector ({server_us:.0f} us a request: one core saturates near {1e6 / server_us:,.0f}/s), "
                    f"{cpu_median['raw server']:.2f} under the raw client; medians of {rounds}")
    healthy = min(s.units_ok for s in faulty_stats)
    report.add(f"Modbus cycle with {len(dead):,} dead units ({FAULT_SHARE:.0%}), steady state", faulty_s, "s",
               "clean cycle, same run", clean_s,
               note=f"goal <= 1.1; no_answer in a separate emulate (--faults no_answer:{FAULT_SHARE}); "
                    f"{healthy:,} units ok in the worst cycle; dead units tried on a probe connection outside the "
                    f"cycle; polling CPU {cpu_median['faulty']:.2f} s a cycle (clean {cpu_median['collector']:.2f}); "
                    f"the marking cycles took {', '.join(f'{s.seconds:.1f}' for s in marking)} s")
    report.add(f"Cycles to mark {len(dead):,} dead units offline", len(marking), "cycles",
               f"offline_after ({OFFLINE_AFTER} failed polls)", OFFLINE_AFTER,
               note=f"{marked:,} of {len(dead):,} marked, {false_marks} healthy units marked; timeout {TIMEOUT_S:g} s, "
                    f"{RETRIES} retries")
    if "bus" in where:
        await measure_bus(report, bus_scenario, where["bus"][0])


async def measure_bus(report: Report, scenario: Path, address: GatewayAddress) -> None:
    gateway = layout(load_scenario(scenario).site, per_gateway=BUS_UNITS)[0]
    turnaround = Rtu("").turnaround_s  # what `metertwin emulate --rtu` serves with
    paper = wire_seconds(gateway, address.baud, turnaround)
    seen = Seen()
    bus = collector([Target(gateway, serial=address.serial, baud=address.baud)], seen)
    try:
        await cycle(bus)  # warm-up: the port opened
        stats = [await cycle(bus) for _ in range(3)]
    finally:
        bus.close()
    measured = statistics.median(s.seconds for s in stats)
    reads = stats[0].requests
    print(f"bench modbus: RS-485 bus: {', '.join(f'{s.seconds:.2f}' for s in stats)} s, on paper {paper:.2f} s",
          file=sys.stderr, flush=True)
    report.add(f"RS-485 bus, {len(gateway.units)} meters at {address.baud} baud: cycle", measured, "s",
               "wire-time arithmetic", paper,
               note=f"{reads} requests; per request 11 bits a character of request and answer frames + "
                    f"{turnaround * 1000:.0f} ms turnaround (the emulator's Rtu); emulate --rtu over a socat pty; "
                    f"{min(s.units_ok for s in stats)} units ok; median of 3")
