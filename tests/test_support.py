"""Test plumbing: missing Debian programs skip outside CI and fail under CI; free loopback
ports; the bench harness computes ratios, prints its table, writes results.json, and its
runner survives a failing benchmark."""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import types

import pytest

import bench.__main__ as bench_main
from bench.harness import Report
from tests import support
from tests.support import require_program


def test_missing_program_skips_outside_ci(monkeypatch):
    """Outside CI a test needing an absent program is skipped, naming the program and the
    Debian package to install."""
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as caught:
        require_program("no-such-program-xyz", "no-such-pkg")
    assert str(caught.value) == ("needs no-such-program-xyz from the Debian package no-such-pkg: "
                                 "apt-get install no-such-pkg")


def test_missing_program_fails_under_ci(monkeypatch):
    """Under CI=true the same test fails with the same message: CI must run every test."""
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as caught:
        require_program("no-such-program-xyz", "no-such-pkg")
    assert str(caught.value) == ("needs no-such-program-xyz from the Debian package no-such-pkg: "
                                 "apt-get install no-such-pkg")


def test_present_program_is_found_by_path(monkeypatch):
    """A program on PATH is returned by its path, under CI or not."""
    monkeypatch.setenv("CI", "true")
    path = require_program("sh", "dash")
    assert path.endswith("/sh")


def test_free_tcp_port_fixture_can_be_bound(free_tcp_port):
    """The free_tcp_port fixture gives a loopback port a server can listen on; so does the helper."""
    for port in (free_tcp_port, support.free_tcp_port()):
        assert 1024 <= port < 65536
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))
            s.listen()


def test_bench_ratio_is_value_over_baseline():
    """The ratio is value / baseline value; a zero baseline gives NaN, not an exception."""
    report = Report()
    assert report.add("kernel", 300.0, "M/s", "bare loop", 600.0, note="goal >= 200").ratio == 0.5
    assert report.add("slower", 3, "s", "numpy", 2).ratio == 1.5
    assert math.isnan(report.add("odd", 1.0, "s", "nothing", 0.0).ratio)
    assert [f.baseline_name for f in report.figures] == ["bare loop", "numpy", "nothing"]


def test_bench_table_printed_with_every_column(capsys):
    """print_table prints one aligned row per figure under the header figure, value, unit,
    baseline, baseline value, ratio, note."""
    report = Report()
    report.add("kernel", 300.0, "M/s", "bare loop", 600.0, note="goal >= 200")
    report.add("a much longer figure name", 1.0, "s", "numpy", 4.0)
    report.print_table()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["figure", "value", "unit", "baseline", "baseline", "value", "ratio", "note"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["kernel", "300", "M/s", "bare", "loop", "600", "0.5", "goal", ">=", "200"]
    assert lines[3].split()[-1] == "0.25"
    # aligned: every column starts at the same offset on every line
    assert lines[2].index("300") == lines[0].index("value") == lines[3].index("1")


def test_bench_json_written(tmp_path):
    """results.json holds the machine (cpus, python, numpy, numba, date) and, per figure,
    name, value, unit, baseline, baseline_value, ratio and note; NaN is written as null."""
    report = Report()
    report.add("kernel", 300.0, "M/s", "bare loop", 600.0, note="goal >= 200")
    report.add("odd", 1.0, "s", "nothing", 0.0)
    report.write_json(tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["figures"][0] == {"name": "kernel", "value": 300.0, "unit": "M/s", "baseline": "bare loop",
                                 "baseline_value": 600.0, "ratio": 0.5, "note": "goal >= 200"}
    assert doc["figures"][1]["ratio"] is None
    assert doc["machine"]["cpus"] >= 1
    assert {"python", "numpy", "numba", "date"} <= doc["machine"].keys()


def fake_benchmarks(monkeypatch, tmp_path, **runs) -> None:
    """Benchmark modules bench_<name> for the runner to discover, each with the given run()."""
    monkeypatch.setattr(bench_main, "HERE", tmp_path)
    for name, run in runs.items():
        (tmp_path / f"bench_{name}.py").write_text("")
        monkeypatch.setitem(sys.modules, f"bench.bench_{name}", types.SimpleNamespace(run=run))


def test_bench_runner_reports_a_failing_module_and_goes_on(monkeypatch, tmp_path, capsys):
    """A module that raises is reported with its traceback on stderr and marked failed; the
    modules after it still run (in name order), the table and json are written, the exit is 1."""
    ran = []

    def broken(report):
        ran.append("a")
        raise RuntimeError("benchmark exploded")

    def fine(report):
        ran.append("b")
        report.add("fine figure", 2.0, "s", "plain", 1.0)

    fake_benchmarks(monkeypatch, tmp_path, b_fine=fine, a_broken=broken)
    out_json = tmp_path / "results.json"
    assert bench_main.main(["--json", str(out_json)]) == 1
    assert ran == ["a", "b"]
    out, err = capsys.readouterr()
    assert "fine figure" in out
    assert "RuntimeError: benchmark exploded" in err and "bench_a_broken FAILED" in err
    assert "bench_b_fine done in" in err
    doc = json.loads(out_json.read_text())
    assert doc["failed"] == ["bench_a_broken"] and doc["figures"][0]["ratio"] == 2.0


def test_bench_runner_selects_by_name_and_sets_quick(monkeypatch, tmp_path, capsys):
    """NAMES select the modules whose name contains one of them; --quick sets
    METERTWIN_BENCH_QUICK=1 for the benchmarks; a NAME matching nothing is an error."""
    seen = {}

    def record(name):
        return lambda report: seen.setdefault(name, os.environ.get("METERTWIN_BENCH_QUICK"))

    # setenv, so that teardown restores the variable the runner sets
    monkeypatch.setenv("METERTWIN_BENCH_QUICK", "0")
    fake_benchmarks(monkeypatch, tmp_path, numpy_x=record("numpy_x"), other=record("other"))
    assert bench_main.main(["numpy", "--quick", "--json", str(tmp_path / "r.json")]) == 0
    assert seen == {"numpy_x": "1"}
    assert bench_main.main(["no-such-bench", "--json", str(tmp_path / "r.json")]) == 2
    assert "no module matches no-such-bench" in capsys.readouterr().err
