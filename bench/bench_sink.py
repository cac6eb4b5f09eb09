"""The InfluxDB sink into a local VictoriaMetrics (Debian `victoria-metrics`): samples per
second from `add_interval` until the server has accepted everything (line building,
batching, influxdb-client posts; the disk spool only if the server falls behind), against
posting the same line protocol,
built beforehand, with a bare `http.client` connection in the same run. Goals: at least
0.7x the bare post, and at least 300,000 samples/s. Full: 20,000 meters x 48 intervals
(960,000 samples); quick: 5,000 x 24. Each run writes new series (its own site tag); the
two ways alternate and the best of five runs each is kept (the machine is shared).
"""

from __future__ import annotations

import http.client
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from bench.harness import Report, quick
from control.influx import InfluxSink, ReadingLines, Target
from twin.history import Column, Topology

BATCH = 50_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_vm(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    program = shutil.which("victoria-metrics")
    if program is None:
        raise RuntimeError("needs victoria-metrics: apt-get install victoria-metrics")
    port = _free_port()
    proc = subprocess.Popen([program, f"-storageDataPath={directory}", f"-httpListenAddr=127.0.0.1:{port}",
                             "-retentionPeriod=100y", "-loggerLevel=ERROR"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.read().strip() == b"OK":
                    return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("victoria-metrics did not start")


def _topology(site: str, meters: int) -> Topology:
    cols = [Column(f"B{i // 1000:02d}-{i % 1000:03d}.em", "electric_meter", "electric", "kWh", f"B{i // 1000:02d}",
                   (i % 1000) // 40, f"B{i // 1000:02d}-{i % 1000:03d}") for i in range(meters)]
    return Topology(site, "Asia/Shanghai", 900, cols)


def _bare(port: int, bodies: list[bytes]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for body in bodies:
        conn.request("POST", "/api/v2/write?org=metertwin&bucket=metertwin&precision=ms", body,
                     {"Content-Type": "text/plain; charset=utf-8"})
        response = conn.getresponse()
        response.read()
        if response.status // 100 != 2:
            raise RuntimeError(f"bare post answered {response.status}")
    conn.close()


def _prebuilt(topo: Topology, rows: np.ndarray, t0: int) -> list[bytes]:
    lines = ReadingLines(topo)
    bodies: list[bytes] = []
    parts: list[bytes] = []
    count = 0
    for r in range(rows.shape[0]):
        text, n = lines.build_bytes(t0 + r * 900, rows[r])
        parts.append(text)
        count += n
        if count >= BATCH:
            bodies.append(b"\n".join(parts))
            parts, count = [], 0
    if parts:
        bodies.append(b"\n".join(parts))
    return bodies


def run(report: Report) -> None:
    meters, intervals = (5_000, 24) if quick() else (20_000, 48)
    samples = meters * intervals
    t0 = (int(time.time()) // 86400 - 3) * 86400  # within retention, never in the future
    rows = np.random.default_rng(7).uniform(0, 2, (intervals, meters)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="mt-bench-sink-") as tmp:
        proc, port = _start_vm(Path(tmp) / "vm")
        url = f"http://127.0.0.1:{port}"
        try:
            bare_s, sink_s = [], []
            for attempt in range(5):
                bodies = _prebuilt(_topology(f"bare{attempt}", meters), rows, t0)
                started = time.perf_counter()
                _bare(port, bodies)
                bare_s.append(time.perf_counter() - started)
                topo = _topology(f"sink{attempt}", meters)
                sink = InfluxSink(Target(url), Path(tmp) / f"spool{attempt}", topo, batch_lines=BATCH)
                started = time.perf_counter()
                for r in range(intervals):
                    sink.add_interval(t0 + r * 900, rows[r])
                if not sink.flush(600):
                    raise RuntimeError(f"the sink did not finish: {sink.status()}")
                sink_s.append(time.perf_counter() - started)
                sent = sink.sent_lines
                sink.close()
                if sent != samples:
                    raise RuntimeError(f"the sink sent {sent} of {samples} samples")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    note = (f"goal >= 0.7x and >= 300,000/s; {meters:,} meters x {intervals} intervals, batches of {BATCH:,}; "
            "the sink's time includes building the lines" + ("; QUICK" if quick() else ""))
    report.add("InfluxDB sink into VictoriaMetrics", samples / min(sink_s), "samples/s",
               "bare http.client POST of pre-built lines", samples / min(bare_s), note=note)
