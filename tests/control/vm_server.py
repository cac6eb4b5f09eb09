"""A real VictoriaMetrics (Debian `victoria-metrics`) for tests of the InfluxDB sink: on a
free loopback port, with its own data directory and a retention that covers the test
data, stopped with SIGTERM (SIGKILL loses what it accepted recently).

Skips when the program is missing, fails instead under CI=true (tests/support.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tests.support import free_tcp_port, require_program


class VictoriaMetrics:
    """Example::

        vm = VictoriaMetrics(tmp_path / "vm").start()
        ...   # write to vm.url through /api/v2/write
        vm.force_flush()
        series = vm.export('{site="T1"}')
        vm.stop()
    """

    def __init__(self, directory: Path, *, dedup: bool = False, retention: str = "100y") -> None:
        self.program = require_program("victoria-metrics", "victoria-metrics")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_tcp_port()
        self.dedup, self.retention = dedup, retention
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> VictoriaMetrics:
        """Start it (again, on the same port and data) and wait until /health answers OK."""
        args = [self.program, f"-storageDataPath={self.directory / 'data'}",
                f"-httpListenAddr=127.0.0.1:{self.port}", f"-retentionPeriod={self.retention}",
                "-loggerLevel=ERROR"]
        if self.dedup:
            args.append("-dedup.minScrapeInterval=1ms")
        log = (self.directory / "vm.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited with {self.process.returncode}; see "
                                   f"{self.directory / 'vm.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.read().strip() == b"OK":
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"victoria-metrics did not answer /health within {timeout_s}s")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, and wait for it to exit (it writes what it holds first)."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError("victoria-metrics did not stop on SIGTERM") from None
        finally:
            self.process = None

    def force_flush(self) -> None:
        """Make what was written searchable now (otherwise after about 8 s)."""
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=30) as r:
            r.read()

    def export(self, match: str) -> list[dict]:
        """Every series matching `match`, as /api/v1/export gives them (JSON lines):
        [{"metric": {...labels}, "values": [...], "timestamps": [...]}, ...]."""
        query = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=60) as r:
            return [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]

    def samples(self, match: str) -> list[tuple[tuple[tuple[str, str], ...], int, float]]:
        """Every sample matching `match` as (sorted labels, ms, value), duplicates kept."""
        out = []
        for series in self.export(match):
            labels = tuple(sorted(series["metric"].items()))
            out += [(labels, int(t), float(v)) for t, v in zip(series["timestamps"], series["values"], strict=True)]
        return out

    def post(self, body: bytes) -> int:
        """POST raw line protocol to /api/v2/write (precision ms); the HTTP status."""
        request = urllib.request.Request(f"{self.url}/api/v2/write?org=o&bucket=b&precision=ms", data=body,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return int(r.status)
        except urllib.error.HTTPError as err:
            return int(err.code)
