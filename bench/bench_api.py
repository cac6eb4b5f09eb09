"""API reads under 100 concurrent clients against `metertwin run scenarios/district-10k.toml`
live (10,000 flats, 51,000 twins, 15-minute intervals), with five weeks of history behind it.

Figures: requests per second and p99 latency for the twin list (a page of 100 twins with
live state and status), one twin's day of history (96 intervals), and a building's month
report (energy and cost by band for January, one building's row), each against GET
/api/health from the same 100 clients on the same server (the HTTP stack's own ceiling).
The history is made first by `metertwin simulate` (2026-01-01 to 2026-02-05) into the data
directory, then the platform runs on from there at 60x, without the Modbus hop and the
OPC UA server (they are other benchmarks). The load comes from `wrk` (Debian package wrk:
2 threads, 100 connections) when it is installed, else from an httpx client in this
process, which is then the bottleneck (the note says which).

    python -m bench api            # 10 s per endpoint
    python -m bench api --quick    # 3 s per endpoint
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.harness import Report, quick

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = "scenarios/district-10k.toml"
CLIENTS = 100
HISTORY_START = "2026-01-01"
HISTORY_DAYS = 35
LIVE_START = "2026-02-05"
MONTH = "2026-01"

GET_SCRIPT = """
wrk.headers["Authorization"] = "Bearer %(key)s"
function done(summary, latency, requests)
  local f = io.open("%(out)s", "w")
  f:write(string.format('{"requests": %%d, "seconds": %%f, "p50_ms": %%f, "p99_ms": %%f, "max_ms": %%f, ' ..
                        '"non2xx": %%d, "errors": %%d}', summary.requests, summary.duration / 1e6,
                        latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
                        summary.errors.status, summary.errors.connect + summary.errors.read +
                        summary.errors.write + summary.errors.timeout))
  f:close()
end
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_platform(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Five weeks of history by `metertwin simulate`, then `metertwin run` on from its end."""
    subprocess.run([sys.executable, "-m", "control.cli", "simulate", SCENARIO, "--days", str(HISTORY_DAYS),
                    "--start", HISTORY_START, "--out", str(data / "history"), "--quiet"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    helptext = subprocess.run([sys.executable, "-m", "control.cli", "run", "--help"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout
    extra = [flag for flag in ("--no-modbus", "--no-opcua") if flag in helptext]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "control.cli", "run", SCENARIO, "--data", str(data),
                             "--port", str(port), "--start", LIVE_START, "--speed", "60", *extra], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(3000):
        if proc.poll() is not None:
            raise RuntimeError(f"metertwin run exited with {proc.returncode}")
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("metertwin run did not answer in 300 s")


def wrk(url: str, key: str, seconds: int, tmp: Path, name: str) -> dict[str, Any]:
    """100 connections on one URL for `seconds`: rate, p50_ms, p99_ms, max_ms, non2xx, errors."""
    script, out = tmp / f"{name}.lua", tmp / f"{name}.json"
    script.write_text(GET_SCRIPT % {"key": key, "out": out})
    subprocess.run(["wrk", "-t2", f"-c{CLIENTS}", f"-d{seconds}s", "--timeout", "30s", "-s", str(script), url],
                   capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.read_text())
    result["rate"] = result["requests"] / result["seconds"]
    return result


async def _hammer(url: str, key: str, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    bad = 0
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    stop = time.perf_counter() + seconds
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=60) as client:

        async def worker() -> None:
            nonlocal bad
            while time.perf_counter() < stop:
                started = time.perf_counter()
                r = await client.get(url)
                latencies.append(time.perf_counter() - started)
                bad += r.status_code >= 300

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        elapsed = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "rate": len(latencies) / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "non2xx": bad, "errors": 0}


def run(report: Report) -> None:
    seconds = 3 if quick() else 10
    use_wrk = shutil.which("wrk") is not None
    with tempfile.TemporaryDirectory(prefix="mt-bench-api-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        started = time.perf_counter()
        proc, url = start_platform(data)
        setup_s = time.perf_counter() - started
        try:
            key = (data / "admin.key").read_text().strip()
            auth = {"Authorization": f"Bearer {key}"}
            twin = httpx.get(url + "/api/twins?kind=electric_meter&building=D07&floor=12&limit=1", headers=auth,
                             timeout=60).json()["items"][0]["id"]
            targets = {
                "health": "/api/health",
                "twin list": "/api/twins?limit=100&offset=5000",
                "twin day": f"/api/twins/{twin}/history?start=2026-01-15T00:00&end=2026-01-16T00:00",
                "building month": f"/api/reports/energy?month={MONTH}&by=building&building=D07",
            }
            firsts = {}
            for name, path in targets.items():  # one call each first: it must work, and its cold time is shown
                t0 = time.perf_counter()
                r = httpx.get(url + path, headers=auth, timeout=300)
                firsts[name] = (time.perf_counter() - t0) * 1000
                if r.status_code != 200:
                    raise RuntimeError(f"GET {path}: {r.status_code} {r.text[:300]}")
            results = {}
            for name, path in targets.items():
                print(f"bench api: {name} ({path}) for {seconds}s ...", file=sys.stderr, flush=True)
                results[name] = (wrk(url + path, key, seconds, tmp, name.replace(" ", "_")) if use_wrk
                                 else asyncio.run(_hammer(url + path, key, seconds)))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:  # still draining requests: the figures are taken already
                proc.kill()
                proc.wait(timeout=60)
    base = results["health"]
    load = f"wrk, 2 threads, {CLIENTS} connections" if use_wrk else f"httpx in-process, {CLIENTS} clients (no wrk)"
    for name, label in (("twin list", "API twin list (100 twins, live state)"),
                        ("twin day", "API one twin's day of history"),
                        ("building month", "API a building's month report")):
        r = results[name]
        note = (f"{load}, {seconds}s; district-10k live at 60x; first call {firsts[name]:.0f} ms; "
                f"{r['non2xx']} non-2xx, {r['errors']} errors; set-up (simulate 35 days + start) {setup_s:.0f}s")
        report.add(f"{label}, 100 clients", r["rate"], "requests/s", "GET /api/health, same load", base["rate"],
                   note=note + (" QUICK" if quick() else ""))
        report.add(f"{label}, p99", r["p99_ms"], "ms", "GET /api/health p99", base["p99_ms"],
                   note=f"p50 {r['p50_ms']:.1f} ms, max {r['max_ms']:.0f} ms")
