"""The InfluxDB sink: line protocol escaping and formatting, the disk spool, and the whole
path against a real VictoriaMetrics (Debian package), read back point by point.

"Nothing doubled" is checked on a VictoriaMetrics without deduplication, which keeps every
sample it is sent (two samples of one series at one millisecond both come back), so a
resent batch would show. The one case where the sink resends by design (a sender killed
after the server took a batch, before the cursor moved) is bounded here to the batch in
flight, and `test_identical_resend_collapses_under_dedup` shows that such a resend leaves
one point with ``-dedup.minScrapeInterval=1ms`` (InfluxDB overwrites identical points).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.influx import InfluxSink, ReadingLines, Spool, Target, line, target_from
from control.influx.lines import LineError, field_value, ledger_lines
from control.influx.spool import HEADER
from control.influx.writer import backoff_s
from scenarios.schema import InfluxSettings
from tests.control.vm_server import VictoriaMetrics
from tests.support import free_tcp_port
from twin.history import Column, Topology, open_history
from twin.ledger import Ledger

DAY = 86400
#: Test data starts five days ago: inside the retention, never ahead of the server's clock.
T0 = (int(time.time()) // DAY - 5) * DAY
ROOT = Path(__file__).resolve().parents[2]

# -- a line-protocol parser, written from the spec, to check what we write ---------------

_UNESCAPE = {"\\": "\\", ",": ",", "=": "=", " ": " ", '"': '"', "n": "\n", "r": "\r", "t": "\t"}


def _token(text: str, i: int, stops: str, escapable: str) -> tuple[str, int]:
    out = []
    while i < len(text) and text[i] not in stops:
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in escapable:
            out.append(_UNESCAPE[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out), i


def parse_line(text: str) -> tuple[str, dict[str, str], dict[str, object], int]:
    """(measurement, tags, fields, time) of one line."""
    assert "\n" not in text
    measurement, i = _token(text, 0, ", ", "\\, nrt")
    tags: dict[str, str] = {}
    while text[i] == ",":
        key, i = _token(text, i + 1, "=", "\\,= nrt")
        value, i = _token(text, i + 1, ", ", "\\,= nrt")
        tags[key] = value
    assert text[i] == " "
    fields: dict[str, object] = {}
    while True:
        key, i = _token(text, i + 1, "=", "\\,= nrt")
        i += 1
        if text[i] == '"':
            value, i = _token(text, i + 1, '"', '\\"nrt')
            fields[key] = value
            i += 1
        else:
            raw, i = _token(text, i, ", ", "")
            fields[key] = (int(raw[:-1]) if raw.endswith("i") else raw == "true" if raw in ("true", "false")
                           else float(raw))
        if text[i] == " ":
            break
    return measurement, tags, fields, int(text[i + 1:])


names = st.text(min_size=1, max_size=20)
values = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
                   st.booleans(), st.text(max_size=20))


@settings(max_examples=300, deadline=None)
@given(measurement=names.filter(lambda m: not m.startswith("#")), tags=st.dictionaries(names, names, max_size=5),
       fields=st.dictionaries(names, values, min_size=1, max_size=5), ms=st.integers(0, 2**53))
def test_lines_round_trip_through_a_spec_parser(measurement, tags, fields, ms):
    """Whatever the text (commas, spaces, equals signs, quotes, backslashes, newlines,
    any Unicode), a line parses back to the measurement, tags, fields and time written."""
    text = line(measurement, tags, fields, ms)
    assert "\n" not in text and "\r" not in text
    got = parse_line(text)
    assert got[0] == measurement and got[1] == tags and got[3] == ms
    for key, value in fields.items():
        assert got[2][key] == value and type(got[2][key]) is type(value)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_characters="\\"), min_size=1, max_size=30))
def test_escaping_matches_influxdb_client_without_backslashes(text):
    """A second opinion: influxdb-client's own Point escapes tag keys and values the same
    way (it leaves backslashes alone, which the spec lets a writer double, as we do)."""
    from influxdb_client import Point

    ours = line("m", {"k": text, text: "v"}, {"f": 1.5}, 1000)
    theirs = Point("m").tag("k", text).tag(text, "v").field("f", 1.5).time(1000, "ms").to_line_protocol()
    assert ours.split(" f=")[0] == theirs.split(" f=")[0] or text == "k"


def test_line_format_and_refusals():
    """A line reads measurement, sorted tags (empty ones left out), fields, time; NaN,
    infinity, an empty key and a '#' measurement are refused."""
    assert line("ledger", {"site": "S 1", "account": "resident:A,1", "ref": None}, {"amount_fen": -500, "x": 0.25},
                1767225600000) == "ledger,account=resident:A\\,1,site=S\\ 1 amount_fen=-500i,x=0.25 1767225600000"
    for bad in (math.nan, math.inf):
        with pytest.raises(LineError):
            field_value(bad)
    with pytest.raises(LineError):
        line("#m", {}, {"f": 1}, 0)
    with pytest.raises(LineError):
        line("m", {"": "v"}, {"f": 1}, 0)
    debit, credit = ledger_lines("S1", 7, 1767225600.0016, "topup", "clearing:payments", "resident:A1", 500,
                                 "p-1").split("\n")
    assert parse_line(debit)[2] == {"amount_fen": -500, "transfer": 7}
    assert parse_line(credit)[2] == {"amount_fen": 500, "transfer": 7}
    assert parse_line(credit)[3] == 1767225600002  # milliseconds, rounded


def tricky_topology(site: str, n: int = 24) -> Topology:
    """Columns whose ids, rooms and buildings need every kind of escaping."""
    cols = []
    for i in range(n):
        water = i % 3 == 2
        building = ["B 01", "B,02", "B=03", "B\\04"][i % 4]
        room = f"{building}-{i:02d} 室"
        cols.append(Column(f"{room}.{'wm' if water else 'em'}", "water_meter" if water else "electric_meter",
                           "water" if water else "electric", "m3" if water else "kWh", building, i // 4, room))
    return Topology(site, "Asia/Shanghai", 900, cols)


def test_reading_lines_skip_missing_and_round_trip_float32():
    """A row's NaN and infinite readings are left out; each value written parses back to
    the same float32; the time is the interval start in milliseconds."""
    topo = tricky_topology("S1", 6)
    row = np.array([0.1, np.nan, 1e-7, np.inf, 123456.79, 0.0], dtype=np.float32)
    text, n = ReadingLines(topo).build(T0, row)
    assert n == 4
    parsed = [parse_line(one) for one in text.split("\n")]
    by_twin = {p[1]["twin"]: p for p in parsed}
    for i in (0, 2, 4, 5):
        col = topo.columns[i]
        measurement, tags, fields, ms = by_twin[col.id]
        assert measurement == col.utility and ms == T0 * 1000
        assert tags == {"site": "S1", "building": col.building, "floor": str(col.floor), "room": col.room,
                        "twin": col.id, "kind": col.kind, "role": "sub"}
        assert np.float32(fields[col.unit.lower()]) == row[i]


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.floats(width=32), min_size=1, max_size=30))
def test_kernel_writes_what_the_python_reference_writes(values):
    """The Numba line kernel gives the bytes of the plain-Python `build` for any float32
    row (NaN and infinities skipped, zeros, negatives, 1e-45 to 3.4e38), and each value
    reads back as the same float32."""
    topo = tricky_topology("S-kernel", len(values))
    row = np.array(values, dtype=np.float32)
    lines = ReadingLines(topo)
    fast, n_fast = lines.build_bytes(T0, row)
    text, n = lines.build(T0, row)
    assert n_fast == n == int(np.isfinite(row).sum())
    if (np.abs(row[np.isfinite(row)]) >= 1e-14).all():  # below, powers of ten are inexact: see kernel.py
        assert fast == text.encode()
    for one, value in zip(fast.decode().split("\n") if n else [], row[np.isfinite(row)], strict=True):
        parsed = parse_line(one)[2]
        assert np.float32(parsed[next(iter(parsed))]) == value


def test_kernel_matches_python_on_a_million_readings():
    """On a seeded million float32 readings of every magnitude, kernel and reference agree
    byte for byte."""
    rng = np.random.default_rng(11)
    topo = tricky_topology("S-million", 1000)
    lines = ReadingLines(topo)
    for r in range(1000):
        row = (rng.lognormal(0, 6, 1000) * rng.choice([-1, 1], 1000)).astype(np.float32)
        assert lines.build_bytes(T0 + r * 900, row)[0] == lines.build(T0 + r * 900, row)[0].encode()


def test_target_from_scenario_and_environment():
    """The environment wins field by field over the scenario's [influx]; no url, no sink."""
    settings_ = InfluxSettings("http://10.0.0.1:8086", "file-token", "org1", "b1")
    assert target_from(None, {}) is None
    assert target_from(settings_, {}) == Target("http://10.0.0.1:8086", "file-token", "org1", "b1")
    env = {"METERTWIN_INFLUX_URL": "http://127.0.0.1:8428", "METERTWIN_INFLUX_TOKEN": "env-token"}
    assert target_from(settings_, env) == Target("http://127.0.0.1:8428", "env-token", "org1", "b1")
    assert target_from(None, env) == Target("http://127.0.0.1:8428", "env-token", "metertwin", "metertwin")
    with pytest.raises(ValueError, match="http://HOST:PORT"):
        target_from(None, {"METERTWIN_INFLUX_URL": "127.0.0.1:8428"})
    assert all(0.4 <= backoff_s(1) <= 0.6 and backoff_s(20, most_s=30) <= 36 for _ in range(50))


# -- the spool -----------------------------------------------------------------------------


def test_spool_cuts_a_torn_append_and_keeps_its_marks(tmp_path):
    """A record cut short (a writer killed mid-append) is dropped when the spool opens; the
    records before it, their marks and the line counts stay; a new append goes after them."""
    spool = Spool(tmp_path)
    for k in range(3):
        spool.append(f"m f={k} {k}".encode(), 1, {"readings_through": k})
    spool.close()
    segment = tmp_path / "seg-000000000001.spool"
    os.truncate(segment, segment.stat().st_size - 3)
    again = Spool(tmp_path)
    assert again.unsent_lines == 2 and again.marks == {"readings_through": 1}
    again.append(b"m f=9 9", 1, {"readings_through": 9})
    bodies = []
    position = again.cursor
    while (record := again.next_after(position)) is not None:
        bodies.append(record.body)
        position = (record.segment, record.end)
    assert bodies == [b"m f=0 0", b"m f=1 1", b"m f=9 9"]


def test_spool_keeps_its_longest_valid_prefix(tmp_path):
    """A damaged record inside the spool (pages a power cut lost) ends it: that record and
    every later one, in later segments too, are cut off and the marks fall back to what is
    left, so the platform produces the rest again instead of refusing to start."""
    spool = Spool(tmp_path, segment_bytes=HEADER.size + 60)
    for k in range(4):
        spool.append(f"m f={k} {k}".encode(), 1, {"readings_through": k}, sync=False)
    spool.close()
    second = tmp_path / "seg-000000000002.spool"
    data = bytearray(second.read_bytes())
    data[-1] ^= 0xFF
    second.write_bytes(bytes(data))
    again = Spool(tmp_path)
    assert again.unsent_lines == 1 and again.marks == {"readings_through": 0}
    assert sorted(p.name for p in tmp_path.glob("seg-*.spool")) == ["seg-000000000001.spool",
                                                                    "seg-000000000002.spool"]
    assert second.stat().st_size == 0


def test_spool_cursor_moves_only_on_ack_and_trims_segments(tmp_path):
    """Segments roll at their size; an ack moves the cursor durably and deletes the
    segments before it; a reopened spool starts at the cursor with the sent marks."""
    spool = Spool(tmp_path, segment_bytes=HEADER.size + 60)
    for k in range(5):
        spool.append(f"m f={k} {k}".encode(), 1, {"ledger_through": k})
    assert len(list(tmp_path.glob("seg-*.spool"))) == 5
    first = spool.next_after(spool.cursor)
    second = spool.next_after((first.segment, first.end))
    third = spool.next_after((second.segment, second.end))
    spool.ack(third.segment, third.end, 3, third.end + (second.end - second.offset) * 2, third.marks)
    spool.close()
    assert sorted(p.name for p in tmp_path.glob("seg-*.spool"))[0] == "seg-000000000003.spool"
    again = Spool(tmp_path)
    assert again.unsent_lines == 2 and again.marks == {"ledger_through": 4}
    assert again.next_after(again.cursor).body == b"m f=3 3"


# -- against a real VictoriaMetrics -------------------------------------------------------------


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    server = VictoriaMetrics(tmp_path_factory.mktemp("vm")).start()
    yield server
    server.stop()


def make_rows(topo: Topology, intervals: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.uniform(0, 2, (intervals, len(topo.columns))).astype(np.float32)
    rows[rng.random(rows.shape) < 0.05] = np.nan  # missing readings are not sent
    return rows


def expected_readings(topo: Topology, first: int, rows: np.ndarray) -> dict[tuple[str, int], np.float32]:
    out = {}
    for r in range(rows.shape[0]):
        for c, col in enumerate(topo.columns):
            if np.isfinite(rows[r, c]):
                out[(col.id, (first + r * topo.interval_s) * 1000)] = rows[r, c]
    return out


def check_readings(vm: VictoriaMetrics, site: str, expected: dict, dup_allowed: int = 0,
                   before_ms: float = math.inf) -> int:
    """Every expected reading is there once, with the same float32 value (VictoriaMetrics
    keeps 12 significant digits: the 9 we write), and nothing else before `before_ms`;
    returns the duplicates found."""
    vm.force_flush()
    got = [(dict(labels)["twin"], ms, v) for labels, ms, v in vm.samples(f'{{__name__=~"electric_kwh|water_m3",'
                                                                        f'site="{site}"}}') if ms < before_ms]
    counts = Counter((twin, ms) for twin, ms, _ in got)
    assert set(counts) == set(expected), (len(counts), len(expected))
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= dup_allowed
    for twin, ms, value in got:
        assert np.float32(value) == expected[(twin, ms)], (twin, ms, value)
        assert math.isclose(value, float(f"{float(expected[(twin, ms)]):.9g}"), rel_tol=1e-11)  # what was written
    return duplicates


def wait_until(predicate, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_sink_sends_every_reading_and_ledger_entry(vm, tmp_path):
    """Interval rows (ids needing every escape, missing readings) and ledger transfers of
    every kind come back from VictoriaMetrics's export point by point, each once."""
    topo = tricky_topology("S-all")
    rows = make_rows(topo, 2 * 96, seed=1)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.top_up("pay 1,=x", "A 1", 10_000, at=T0 + 60.5)
    ledger.post_charges({"A 1": 1234.4, "A,2": 10.6}, "electric", at=T0 + DAY, ref="day-1")
    ledger.refund("A 1", 500, at=T0 + DAY + 1.25, ref="r1")
    ledger.charge_fee("A,2", "parking", 300, at=T0 + DAY + 2, ref="2026-01")
    sink = InfluxSink(Target(vm.url), tmp_path / "spool", topo, ledger_path=tmp_path / "ledger.sqlite",
                      batch_lines=1000, ledger_poll_s=0.2)
    for r in range(rows.shape[0]):
        sink.add_interval(T0 + r * 900, rows[r])
    sink.add_interval(T0, rows[0])  # a replay: skipped
    assert sink.flush(60), sink.status()
    status = sink.status()
    assert status["spooled"] == 0 and status["last_error"] is None and status["dropped"] == 0
    assert status["readings_through"] == T0 + 191 * 900 and status["ledger_through"] == 5
    assert sink.replayed_intervals == 1
    sink.close()
    check_readings(vm, "S-all", expected_readings(topo, T0, rows))
    got = Counter()
    for labels, ms, value in vm.samples('{__name__="ledger_amount_fen",site="S-all"}'):
        tags = dict(labels)
        got[(tags["account"], tags["counterpart"], tags["kind"], tags.get("ref"), ms, value)] += 1
    want = Counter()
    for _, at, kind, debit, credit, amount, ref in ledger.db.execute(
            "SELECT id, at, kind, debit, credit, amount, ref FROM transfers"):
        want[(debit, credit, kind, ref, round(at * 1000), -float(amount))] += 1
        want[(credit, debit, kind, ref, round(at * 1000), float(amount))] += 1
    assert got == want and len(want) == 10
    ledger.close()


def test_server_stopped_midway_then_back(tmp_path):
    """VictoriaMetrics stopped with SIGTERM halfway through: the sink keeps taking rows,
    spools them, retries with backoff, and once the server is back sends the rest: every
    reading there, none twice."""
    server = VictoriaMetrics(tmp_path / "vm").start()
    topo = tricky_topology("S-stop", 12)
    rows = make_rows(topo, 96, seed=2)
    sink = InfluxSink(Target(server.url), tmp_path / "spool", topo, batch_lines=200, max_backoff_s=0.5,
                      timeout_s=2.0)
    try:
        for r in range(48):
            sink.add_interval(T0 + r * 900, rows[r])
        assert sink.flush(30)
        server.stop()
        for r in range(48, 96):
            sink.add_interval(T0 + r * 900, rows[r])
        assert wait_until(lambda: sink.retries >= 2)
        status = sink.status()
        assert status["state"] == "retrying" and status["spooled"] > 0 and status["last_error"]
        assert not sink.flush(0.5)
        server.start()
        assert sink.flush(60), sink.status()
        check_readings(server, "S-stop", expected_readings(topo, T0, rows))
        assert sink.status()["spooled"] == 0
        sink.add_interval(T0 + 96 * 900, rows[0])  # the spool drained: batches go through memory again
        assert sink.flush(30) and not sink._spooling and sink.spool.unsent_lines == 0
    finally:
        sink.close()
        server.stop()


def test_spool_outlives_an_unreachable_server_and_a_restart(vm, tmp_path):
    """A sink pointed at a closed port spools everything and loses nothing when closed; a
    sink started on that spool with the right url sends it all, in order, once."""
    topo = tricky_topology("S-away", 8)
    rows = make_rows(topo, 96, seed=3)
    away = InfluxSink(Target(f"http://127.0.0.1:{free_tcp_port()}"), tmp_path / "spool", topo,
                      batch_lines=300, max_backoff_s=0.2, timeout_s=1.0)
    for r in range(rows.shape[0]):
        away.add_interval(T0 + r * 900, rows[r])
    assert wait_until(lambda: away.retries >= 1 and away.status()["queued_intervals"] == 0)
    away.close(drain_s=0.2)
    assert away.status()["spooled"] == int(np.isfinite(rows).sum()) and away.sent_lines == 0
    back = InfluxSink(Target(vm.url), tmp_path / "spool", topo, batch_lines=300)
    back.add_interval(T0 + 95 * 900, rows[95])  # replayed after the restart: already spooled
    assert back.replayed_intervals == 1
    assert back.flush(60)
    back.close()
    check_readings(vm, "S-away", expected_readings(topo, T0, rows))


SENDER = """
import sys, time
from pathlib import Path
from control.influx import InfluxSink, Target
from tests.control.test_influx import tricky_topology
sink = InfluxSink(Target(sys.argv[1]), Path(sys.argv[2]), tricky_topology("S-kill", 40), batch_lines=int(sys.argv[3]))
print("sending", flush=True)
time.sleep(120)
"""


def test_sender_killed_mid_send_resends_at_most_its_batch(vm, tmp_path):
    """A sender SIGKILLed while posting leaves a spool that opens cleanly with its cursor at
    a record boundary; a new sender sends the rest: every reading arrives, and the only
    repeats are lines of the one batch that was in flight (at least once, never skipped)."""
    topo = tricky_topology("S-kill", 40)
    rows = make_rows(topo, 400, seed=4)
    spool = Spool(tmp_path / "spool")
    lines = ReadingLines(topo)
    for r in range(rows.shape[0]):
        text, n = lines.build(T0 + r * 900, rows[r])
        spool.append(text.encode(), n, {"readings_through": T0 + r * 900}, sync=False)
    spool.close()
    batch = 600
    child = subprocess.Popen([sys.executable, "-c", SENDER, vm.url, str(tmp_path / "spool"), str(batch)],
                             cwd=ROOT, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        cursor = tmp_path / "spool" / "cursor.json"
        assert wait_until(lambda: cursor.exists() and json.loads(cursor.read_text())["offset"] > 0, 60)
        time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
    reopened = Spool(tmp_path / "spool")
    assert reopened.unsent_lines < int(np.isfinite(rows).sum())  # some went out before the kill
    position, seen = reopened.cursor, 0
    while (record := reopened.next_after(position)) is not None:  # every record from the cursor reads whole
        seen += record.lines
        position = (record.segment, record.end)
    assert seen == reopened.unsent_lines
    reopened.close()
    again = InfluxSink(Target(vm.url), tmp_path / "spool", topo, batch_lines=batch)
    assert again.flush(60)
    again.close()
    duplicates = check_readings(vm, "S-kill", expected_readings(topo, T0, rows), dup_allowed=batch + 40)
    print(f"resent after the kill: {duplicates} lines (one batch is at most {batch + 40})")


def test_identical_resend_collapses_under_dedup(tmp_path):
    """VictoriaMetrics with -dedup.minScrapeInterval=1ms keeps one sample when the same
    batch arrives twice (the sink's resend after a crash), and keeps samples 1 ms apart."""
    server = VictoriaMetrics(tmp_path / "vm", dedup=True).start()
    try:
        body = "\n".join(line("electric", {"site": "S-dedup", "twin": f"t{i}"}, {"kwh": 0.5 + i},
                              T0 * 1000 + i % 2) for i in range(100)).encode()
        assert server.post(body) == 204 and server.post(body) == 204
        server.force_flush()
        got = server.samples('{site="S-dedup"}')
        assert len(got) == 100 and len({(labels, ms) for labels, ms, _ in got}) == 100
    finally:
        server.stop()


def test_export_backfills_a_simulated_history(vm, tmp_path):
    """`metertwin export` sends every reading of a simulated history and every ledger
    transfer it holds; read back, they match the history point by point."""
    from control.cli import main
    from control.simulate import simulate

    start = datetime.fromtimestamp(T0, tz=UTC).replace(tzinfo=None)
    scenario = tmp_path / "export.toml"
    scenario.write_text(SCENARIO.format(site="S-export"))
    simulate(str(scenario), days=1, start=start, out=str(tmp_path / "hist"), progress=False)
    assert main(["export", str(tmp_path / "hist"), "--influx-url", vm.url, "--quiet", "--batch-lines", "500"]) == 0
    history = open_history(tmp_path / "hist")
    rows = history.read_rows(history.start, history.end)
    check_readings(vm, "S-export", expected_readings(history.topology, history.start, rows))
    ledger = Ledger(tmp_path / "hist" / "ledger.sqlite")
    transfers = ledger.db.execute("SELECT COUNT(*) FROM transfers").fetchone()[0]
    ledger.close()
    assert transfers > 0
    assert len(vm.samples('{__name__="ledger_transfer",site="S-export"}')) == 2 * transfers


def test_export_says_where_to_resume_when_the_server_is_away(tmp_path, capsys):
    """With nothing listening, export stops at once: one line naming the address, exit 2.
    With a server that takes connections and drops every request, it gives up after
    --retry-for, exits 1 and names the --from to run it again with."""
    import socket
    import threading

    from control.cli import main
    from control.simulate import simulate

    start = datetime.fromtimestamp(T0, tz=UTC).replace(tzinfo=None)
    scenario = tmp_path / "export.toml"
    scenario.write_text(SCENARIO.format(site="S-noexport"))
    simulate(str(scenario), days=0.25, start=start, out=str(tmp_path / "hist"), progress=False)
    port = free_tcp_port()
    url = f"http://127.0.0.1:{port}"
    assert main(["export", str(tmp_path / "hist"), "--influx-url", url, "--quiet", "--retry-for", "0.5"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach 127.0.0.1:{port}" in err and "--influx-url" in err and len(err.splitlines()) == 1
    assert main(["export", str(tmp_path / "nowhere"), "--influx-url", url]) == 2
    capsys.readouterr()

    dropper = socket.create_server(("127.0.0.1", 0))
    dropper.settimeout(0.2)
    stop = threading.Event()

    def drop_every_request() -> None:
        while not stop.is_set():
            try:
                conn, _ = dropper.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=drop_every_request, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{dropper.getsockname()[1]}"
        assert main(["export", str(tmp_path / "hist"), "--influx-url", url, "--quiet", "--retry-for", "0.5"]) == 1
    finally:
        stop.set()
        thread.join()
        dropper.close()
    assert "run again with --from" in capsys.readouterr().err


SCENARIO = """\
[site]
id = "{site}"
interval = "15min"

[tariffs.flat]
kind = "flat"
price_yuan = 0.6

[[buildings]]
id = "B01"
floors = 2
rooms_per_floor = 3
electric = {{ tariff = "flat" }}

[residents]
billing = "platform"
opening_yuan = [30, 60]
"""


def test_platform_sends_readings_and_ledger_and_skips_replays(vm, tmp_path):
    """The live platform with an [influx] table: every interval row of every twin and every
    ledger transfer reaches the server; restarted on the same data, the replayed intervals
    are not sent again; /api/health shows the sink."""
    from control.runtime import Platform

    path = tmp_path / "live.toml"
    path.write_text(SCENARIO.format(site="S-live") + f'\n[influx]\nurl = "{vm.url}"\n')
    start = datetime.fromtimestamp(T0, tz=UTC).replace(tzinfo=None)
    platform = Platform(str(path), tmp_path / "data", start=start, billing_tick_s=2 * 3600)
    assert platform.influx is not None
    platform.influx.ledger_poll_s = 0.1
    for k in range(1, 4):
        platform._tick(k * 3600.0)
    platform.save()
    assert platform.influx.flush(60)
    health = platform.health()["influx"]
    assert health["sent"] > 0 and health["last_error"] is None
    platform.close()
    again = Platform(str(path), tmp_path / "data")
    assert again.influx is not None and again.influx.replayed_intervals >= 10
    again._tick(6 * 3600)
    assert again.influx.flush(60)
    again.save()
    # the run-day's rows so far, as the world reported them (the history gets them at the day's end)
    world = again.world
    rows = world.reported_day[:world.interval_in_day]
    n = rows.shape[0]
    assert n >= 20 and again.influx.spool.marks["readings_through"] == world.start_utc + (n - 1) * 900
    check_readings(vm, "S-live", expected_readings(again.influx.topology, world.start_utc, rows))
    again.close()
    ledger = Ledger(tmp_path / "data" / "ledger.sqlite")
    transfers = ledger.db.execute("SELECT COUNT(*) FROM transfers").fetchone()[0]
    ledger.close()
    assert transfers > 6
    assert len(vm.samples('{__name__="ledger_transfer",site="S-live"}')) == 2 * transfers


class Answering:
    """A real HTTP server on loopback that answers each POST with the next status of a
    script (VictoriaMetrics never refuses a batch for good, so this stands in for an
    InfluxDB that does), recording the bodies."""

    def __init__(self, statuses: list[int], delay_s: float = 0.0) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        script = list(statuses)
        bodies: list[bytes] = []
        self.bodies = bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(delay_s)
                status = script.pop(0) if script else 204
                self.send_response(status)
                self.send_header("Content-Length", "2" if status != 204 else "0")
                self.end_headers()
                if status != 204:
                    self.wfile.write(b"no")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_refused_batches_are_kept_aside_and_bad_tokens_retried(tmp_path):
    """A 401 (token, org, bucket) is retried until the server takes the batch; a 400 (the
    batch itself is wrong) moves it to rejected/ with the error, counts it, and the next
    batch goes on: nothing is dropped silently."""
    server = Answering([401, 401, 400])
    topo = tricky_topology("S-refuse", 4)
    rows = make_rows(topo, 2, seed=5)
    sink = InfluxSink(Target(server.url), tmp_path / "spool", topo, max_backoff_s=0.05)
    try:
        sink.add_interval(T0, rows[0])
        assert wait_until(lambda: sink.rejected_lines > 0)
        sink.add_interval(T0 + 900, rows[1])
        assert sink.flush(30)
    finally:
        sink.close()
        server.close()
    assert sink.retries == 2 and sink.rejected_lines == int(np.isfinite(rows[0]).sum())
    assert sink.sent_lines == int(np.isfinite(rows[1]).sum())
    assert "answered 400" in sink.status()["last_error"]
    kept = list((tmp_path / "spool" / "rejected").glob("*.lp"))
    assert len(kept) == 1 and kept[0].read_bytes() == server.bodies[2]
    assert server.bodies[:3] == [server.bodies[0]] * 3 and len(server.bodies) == 4


def test_scenario_influx_table_and_its_errors():
    """[influx] loads into the scenario; a wrong url, an empty bucket, an unknown key or a
    missing url is refused naming file, line and field."""
    from scenarios.loader import ScenarioError, load_scenario_text

    base = SCENARIO.format(site="S-toml")
    scenario = load_scenario_text(base + '\n[influx]\nurl = "http://127.0.0.1:8428"\nbucket = "meters"\n')
    assert scenario.influx == InfluxSettings("http://127.0.0.1:8428", "", "metertwin", "meters")
    assert load_scenario_text(base).influx is None
    line_no = base.count("\n") + 3
    for extra, where in (('url = "127.0.0.1:8428"', "influx.url"), ('url = "http://x"\nbucket = ""', "influx.bucket"),
                         ('url = "http://x"\ntokn = "a"', "influx.tokn")):
        with pytest.raises(ScenarioError) as err:
            load_scenario_text(base + "\n[influx]\n" + extra + "\n", "site.toml")
        assert str(err.value).startswith(f"site.toml:{line_no + extra.count(chr(10))}: {where}: ")
    with pytest.raises(ScenarioError, match="missing required key 'url'"):
        load_scenario_text(base + '\n[influx]\norg = "o"\n', "site.toml")


def test_a_server_that_never_answers_holds_nothing_up(tmp_path):
    """A server that takes the connection and never answers: every row handed to the sink
    is taken at once and spooled while the sender waits out its timeout; nothing is
    counted as sent."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # connections complete in the backlog; nobody reads them
    topo = tricky_topology("S-slow", 10)
    rows = make_rows(topo, 96, seed=6)
    sink = InfluxSink(Target(f"http://127.0.0.1:{listener.getsockname()[1]}"), tmp_path / "spool", topo,
                      batch_lines=100, timeout_s=1.0, max_backoff_s=0.1)
    try:
        for r in range(rows.shape[0]):
            sink.add_interval(T0 + r * 900, rows[r])
        assert wait_until(lambda: sink.status()["queued_intervals"] == 0 and sink.retries >= 1)
        assert sink.spool.unsent_lines == int(np.isfinite(rows).sum()) and sink.sent_lines == 0
        assert "ReadTimeout" in sink.status()["last_error"] or "timed out" in sink.status()["last_error"]
    finally:
        sink.close(drain_s=0)
        listener.close()


HOLDER = """
import socket, sys, time
from pathlib import Path
import numpy as np
from control.influx import InfluxSink, Target
from tests.control.test_influx import T0, make_rows, tricky_topology
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(8)  # takes the connection, never answers: batches wait in memory
topo = tricky_topology("S-crash", 10)
rows = make_rows(topo, 48, seed=8)
sink = InfluxSink(Target(f"http://127.0.0.1:{listener.getsockname()[1]}"), Path(sys.argv[1]), topo, timeout_s=60,
                  batch_lines=50)
for r in range(rows.shape[0]):
    sink.add_interval(T0 + r * 900, rows[r])
while sink.status()["queued_intervals"] or not sink.status()["in_flight"]:
    time.sleep(0.01)
print("holding", sink.status()["in_memory"] + sink.status()["in_flight"], flush=True)
time.sleep(120)
"""


def test_batches_only_in_memory_at_a_crash_are_produced_again(vm, tmp_path):
    """A process killed while its batches wait in memory (the server never answered) leaves
    marks that do not cover them, so the platform's replay after the restart is taken, not
    skipped, and everything arrives once."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "spool")], cwd=ROOT,
                             stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        held = child.stdout.readline().decode().split()
        assert held[0] == "holding" and int(held[1]) > 0
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
    topo = tricky_topology("S-crash", 10)
    rows = make_rows(topo, 48, seed=8)
    again = InfluxSink(Target(vm.url), tmp_path / "spool", topo)
    for r in range(rows.shape[0]):  # the replay
        again.add_interval(T0 + r * 900, rows[r])
    assert again.replayed_intervals == 0  # nothing was accepted or spooled: all of it is taken again
    assert again.flush(60)
    again.close()
    check_readings(vm, "S-crash", expected_readings(topo, T0, rows))


def test_a_slow_server_moves_the_backlog_to_disk(tmp_path):
    """A server that answers each batch late: once a batch has waited in memory past
    spill_after_s, the backlog goes to the spool and is sent from there, in order; every
    line reaches the server once."""
    server = Answering([], delay_s=0.3)
    topo = tricky_topology("S-late", 10)
    rows = make_rows(topo, 40, seed=9)
    sink = InfluxSink(Target(server.url), tmp_path / "spool", topo, batch_lines=60, spill_after_s=0.2)
    try:
        for r in range(rows.shape[0]):
            sink.add_interval(T0 + r * 900, rows[r])
        assert wait_until(lambda: sink.spool.unsent_lines > 0)  # the backlog is on disk
        assert sink.flush(60)
    finally:
        sink.close()
        server.close()
    sent = [one for body in server.bodies for one in body.decode().split("\n")]
    assert len(sent) == len(set(sent)) == int(np.isfinite(rows).sum()) == sink.sent_lines
    stamps = [parse_line(one)[3] for one in sent]
    assert stamps == sorted(stamps)  # in order, memory and spool alike
