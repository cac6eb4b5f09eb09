"""`metertwin simulate`: outputs, summary, errors, and determinism across threads."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from control.cli import main
from twin.history import open_history

SMALL = """\
[site]
id = "T9"
name = "Test Garden"
timezone = "Asia/Shanghai"

[profiles.household]
monthly_kwh = 220
water_m3_month = 10

[[buildings]]
ids = "B01..B02"
floors = 5
rooms_per_floor = 4
profile = "household"
electric = { phases = 1 }
water = { valve = true }
master = { electric = true, water = true, loss_pct = 2.0, fixed_loss_w = 100.0 }
elevators = { count = 1, trip_kwh = 0.06, standby_w = 250.0, trips_per_day = 300.0 }

[[buildings.shared]]
name = "corridor"
circuit = "lighting"
power_kw = 1.2
schedule = "18:00-06:00"

[[random_inject]]
kinds = ["h1", "h4", "h6", "bypass", "leak", "offline"]
per_kind = 1
first_day = 0
last_day = 1
min_days = 1
max_days = 2
"""


@pytest.fixture
def small_scenario(tmp_path: Path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(SMALL)
    return path


def digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_simulate_writes_history_truth_and_summary(small_scenario, tmp_path, capsys):
    """A run writes a readable history with one row per interval, the ground truth of
    every injection, an events log and a summary naming each building."""
    out = tmp_path / "run"
    rc = main(["simulate", str(small_scenario), "--days", "2", "--seed", "4", "--out", str(out),
               "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "B01" in text and "B02" in text and "M meter-steps/s" in text
    assert "evening peak hour" in text
    history = open_history(out)
    data = history.read(history.start, history.end)
    assert data.shape[1] == 2 * 96
    truth = history.ground_truth()
    assert {e.kind for e in truth} == {"h1", "h4", "h6", "bypass", "leak", "offline"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["twins"]["electric_meter"] == 40
    assert (out / "events.csv").read_text().startswith("time,twin,event,value,source")
    master = history.topology.index_of("B01.mm")
    assert np.all(data[master] > 0)


def test_refuses_to_overwrite_without_force(small_scenario, tmp_path, capsys):
    """An existing output directory is kept unless --force is given."""
    out = tmp_path / "run"
    args = ["simulate", str(small_scenario), "--days", "0.25", "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0


def test_bad_scenario_is_one_clear_line(tmp_path, capsys):
    """A malformed scenario exits with status 2 and one line naming file, line and field."""
    path = tmp_path / "bad.toml"
    path.write_text(SMALL.replace("floors = 5", "floors = \"five\""))
    assert main(["simulate", str(path), "--days", "1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "bad.toml:12" in err and "floors" in err
    assert "Traceback" not in err


def test_help_has_an_example(capsys):
    """`metertwin simulate --help` explains the command with an example."""
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    assert "metertwin simulate scenarios/demo-community.toml" in capsys.readouterr().out


def run_cli(scenario: Path, out: Path, threads: int, seed: int) -> None:
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-m", "control.cli", "simulate", str(scenario), "--days", "2",
                    "--seed", str(seed), "--out", str(out), "--quiet"],
                   check=True, env=env, capture_output=True)


def test_same_seed_same_directory_with_one_and_two_threads(small_scenario, tmp_path):
    """Two runs with one seed give identical directories, with 1 and with 2 threads;
    another seed gives another history."""
    run_cli(small_scenario, tmp_path / "a", 1, 7)
    run_cli(small_scenario, tmp_path / "b", 2, 7)
    run_cli(small_scenario, tmp_path / "c", 2, 8)
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys() and a != c
