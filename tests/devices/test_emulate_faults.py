"""`metertwin emulate --faults`: a share of the units misbehaves from the start, drawn with
--seed; a collector in this process sees exactly those units fail, and a bad entry is
refused with exit 2 naming it."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from control.emulate import choose_faults, parse_faults
from control.modbus_link import parse_gateways
from devices.modbus.collector import Collector, Target
from devices.modbus.layout import layout
from scenarios.loader import load_scenario

ROOT = Path(__file__).resolve().parents[2]

SCENARIO = """\
[site]
id = "EF1"
name = "Emulate faults test"

[[buildings]]
id = "B01"
floors = 2
rooms_per_floor = 5
electric = {}
"""


def emulate(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "control.cli", "emulate", *args], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_half_the_units_silent_and_exactly_those_fail(tmp_path):
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(SCENARIO)
    log = tmp_path / "emulate.log"
    proc = emulate(str(scenario), "--modbus-port", "0", "--speed", "1", "--per-gateway", "5",
                   "--seed", "3", "--faults", "no_answer:0.5", log=log)
    try:
        end = time.monotonic() + 60
        while not (found := re.search(r"--gateways (\S+)", log.read_text())):
            assert proc.poll() is None and time.monotonic() < end, f"emulate did not start:\n{log.read_text()}"
            time.sleep(0.1)
        text = log.read_text()
        assert "fault no_answer (0.5, seed 3) on 5 of 10 units" in text, text
        gateways = layout(load_scenario(scenario).site, per_gateway=5)
        silent = set(choose_faults(gateways, [("no_answer", 0.5)], seed=3))
        assert len(silent) == 5
        targets = [Target(g, host=a.host, port=a.port) for g, a in zip(gateways, parse_gateways(found.group(1)),
                                                                        strict=True)]
        offline: set[str] = set()
        answered: set[str] = set()

        async def poll():
            collector = Collector(targets, on_reading=lambda twin, fields, ts: answered.add(twin),
                                  on_status=lambda twin, up, why: None if up else offline.add(twin),
                                  on_flag=lambda *a: None, timeout_s=0.5, retries=0, offline_after=1)
            try:
                return await collector.poll_cycle()
            finally:
                collector.close()

        stats = asyncio.run(poll())
        assert (stats.units_ok, stats.units_failed) == (5, 5)
        assert offline == silent
        assert answered == {u.twin for g in gateways for u in g.units} - silent
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_the_same_seed_draws_the_same_units_and_kinds_never_overlap():
    site = load_scenario(ROOT / "scenarios" / "demo-community.toml").site
    gateways = layout(site)
    faults = parse_faults("no_answer:0.1,slow:0.1,exception:0.1,garbage:0.1,flap:0.1")
    first, again = choose_faults(gateways, faults, seed=5), choose_faults(gateways, faults, seed=5)
    assert first == again and first != choose_faults(gateways, faults, seed=6)
    units = sum(len(g.units) for g in gateways)
    for kind, _ in faults:
        assert sum(1 for f in first.values() if f.kind == kind) == round(0.1 * units)
    assert all(f.delay_s > 1.0 for f in first.values() if f.kind == "slow")  # past a collector's 1 s timeout


def test_a_bad_entry_exits_2_naming_it():
    done = subprocess.run([sys.executable, "-m", "control.cli", "emulate", "scenarios/demo-community.toml",
                           "--faults", "no_answer:0.1,nope:0.2"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--faults: entry 2 ('nope:0.2'): unknown fault kind 'nope'" in done.stderr, done.stderr


@pytest.mark.parametrize(("entry", "named"), [
    ("slow", "entry 1 ('slow'): not KIND:SHARE"),
    ("garbage:1.5", "entry 1 ('garbage:1.5'): the share is a number in (0, 1]"),
    ("exception:0", "entry 1 ('exception:0'): the share is a number in (0, 1]"),
    ("flap:0.1,flap:0.2", "entry 2 ('flap:0.2'): flap is given twice"),
    ("flap:0.7,slow:0.7", "the shares add up to 1.4"),
])
def test_parse_faults_names_the_bad_entry(entry, named):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(named)):
        parse_faults(entry)
