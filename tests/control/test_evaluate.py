"""`metertwin evaluate` on a 30-day run of scenarios/demo-theft.toml (every theft kind on five
flats) at a fixed seed: the issue's thresholds per theft kind, the table, the JSON, and
readable errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from control.cli import main
from control.evaluate import THEFT_KINDS, TOTALS_ROW, run_evaluate
from control.simulate import simulate

ROOT = Path(__file__).resolve().parents[2]
SEED = 2  # fixed; the figures of other seeds are in the closing note of issue 7


@pytest.fixture(scope="module")
def theft_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("theft") / "run"
    simulate(str(ROOT / "scenarios/demo-theft.toml"), days=30, seed=SEED, out=str(out), progress=False)
    return out


@pytest.fixture(scope="module")
def report(theft_run: Path) -> dict:
    return run_evaluate(str(theft_run), also_daily=True, progress=False)


def _rows(report: dict, view: str) -> dict[str, dict]:
    return {r["kind"]: r for r in report["views"][view]}


def test_every_theft_kind_meets_the_bar_at_15_minutes(report: dict) -> None:
    """Each theft kind, scored by the combined theft score over meter-days: ROC AUC >= 0.95
    and detection rate >= 90% at 5% false positives; pooled AUC >= 0.95."""
    rows = _rows(report, "15min")
    for kind in THEFT_KINDS:
        assert rows[kind]["positives"] >= 15, kind
        assert rows[kind]["auc"] >= 0.95, (kind, rows[kind])
        assert rows[kind]["rate_at_5pct"] >= 0.90, (kind, rows[kind])
    assert rows["theft (all)"]["auc"] >= 0.95


def test_daily_without_masters_sees_the_thefts_that_change_totals(report: dict) -> None:
    """Downsampled to one reading a day with the masters removed: the thefts that change a
    day's total (h1-h4, bypass) pooled reach AUC >= 0.85; h5 and h6 (same total, another
    shape) cannot be seen at that resolution and are reported, not asserted."""
    rows = _rows(report, "daily, no masters")
    assert rows[TOTALS_ROW]["auc"] >= 0.85, rows[TOTALS_ROW]
    assert rows["h5"]["positives"] > 0 and rows["theft (all)"]["positives"] > rows[TOTALS_ROW]["positives"]


def test_cli_prints_the_table_and_writes_json(theft_run: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The table names every theft kind with both views side by side, followed by a legend
    that explains every column of its header; --json holds the same figures (NaN as null)
    and no legend; progress goes to stderr."""
    out = tmp_path / "figures.json"
    assert main(["evaluate", str(theft_run), "--also-daily", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    for kind in (*THEFT_KINDS, "theft (all)", "leak", "offline"):
        assert kind in captured.out
    assert "15min AUC" in captured.out and "daily, no masters AUC" in captured.out
    assert "evaluate: scoring theft" in captured.err
    table, legend = captured.out.split("\ncolumns:\n")
    headers = {name for line in table.splitlines() if line.startswith("kind ") for name in line.split()}
    assert {"pos", "neg", "AUC", "@5%FP", "days", "found"} <= headers
    explained = {line.split()[0] for line in legend.splitlines() if line.startswith("  ") and line[2] != " "}
    assert headers <= explained, headers - explained
    body = json.loads(out.read_text())
    assert set(body) == {"dir", "fpr", "views"}
    h1 = next(r for r in body["views"]["15min"] if r["kind"] == "h1")
    assert 0.0 <= h1["auc"] <= 1.0 and h1["windows"] == 5


def test_errors_name_the_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory that is not a history, or a history without ground truth, exits 2 with a
    line that says which and why."""
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a history directory" in capsys.readouterr().err
    (tmp_path / "topology.json").write_text("{}")
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "no ground_truth.csv" in capsys.readouterr().err
