"""Test plumbing: missing Debian programs skip outside CI and fail under CI; the bench
harness computes ratios and writes its results."""

from __future__ import annotations

import json

import pytest

from bench.harness import Report
from tests.support import free_tcp_port, require_program


def test_missing_program_skips_outside_ci(monkeypatch):
    """Outside CI a test needing an absent program is skipped with the package named."""
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install no-such-pkg"):
        require_program("no-such-program-xyz", "no-such-pkg")


def test_missing_program_fails_under_ci(monkeypatch):
    """Under CI=true the same test fails: CI must run every test."""
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-such-pkg"):
        require_program("no-such-program-xyz", "no-such-pkg")


def test_present_program_is_found(monkeypatch):
    """A program on PATH is returned by path."""
    assert require_program("sh", "dash").endswith("sh")
    assert 0 < free_tcp_port() < 65536


def test_bench_report_ratio_table_and_json(tmp_path):
    """The ratio is value over baseline; the table lists every figure; results.json holds
    name, value, unit, baseline, baseline value and ratio for each."""
    report = Report()
    report.add("kernel", 300.0, "M/s", "bare loop", 600.0, note="goal >= 200")
    assert report.figures[0].ratio == 0.5
    assert "kernel" in report.table() and "bare loop" in report.table()
    report.write_json(tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    record = doc["figures"][0]
    assert {k: record[k] for k in ("name", "value", "unit", "baseline", "baseline_value", "ratio")} == {
        "name": "kernel", "value": 300.0, "unit": "M/s", "baseline": "bare loop", "baseline_value": 600.0,
        "ratio": 0.5}
    assert doc["machine"]["cpus"] >= 1
