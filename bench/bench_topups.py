"""Top-ups through the API of a running `metertwin run` from 100 concurrent clients.

Figures: top-ups per second and the p99 latency, against plain GETs of /api/health from
the same 100 clients on the same server (the HTTP stack's own ceiling). The load comes
from `wrk` (Debian package wrk: 100 connections, every request a new payment id) when it
is installed, else from an httpx client in this process, which is itself the bottleneck
(the note says which). After the run the ledger is read: every payment the server
acknowledged must be there exactly once (lost and doubled are printed).
Goal: 500 top-ups/s at p99 under 100 ms. Quick mode: shorter runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.harness import Report
from twin.ledger import Ledger

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 100


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def hammer(url: str, key: str, jobs: list[tuple[str, str, int]] | None,
                 n_get: int) -> tuple[list[float], set[str]]:
    latencies: list[float] = []
    acked: set[str] = set()
    queue: asyncio.Queue[object] = asyncio.Queue()
    for job in jobs if jobs is not None else range(n_get):
        queue.put_nowait(job)
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as client:

        async def worker() -> None:
            while not queue.empty():
                job = queue.get_nowait()
                started = time.perf_counter()
                if isinstance(job, tuple):
                    payment, account, amount = job
                    r = await client.post(f"/api/accounts/{account}/topups",
                                          json={"payment_id": payment, "amount_fen": amount})
                    if r.status_code == 201:
                        acked.add(payment)
                else:
                    await client.get("/api/health")
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
    return latencies, acked


WRK_SCRIPT = """
local counter = 0
local pace_ms = %d
local accounts = {%s}
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function delay()
  return pace_ms
end
function request()
  counter = counter + 1
  local account = accounts[(counter %% #accounts) + 1]
  local body = string.format('{"payment_id": "wrk-%%d-%%d", "amount_fen": %%d}', tid, counter, 100 + counter %% 900)
  return wrk.format("POST", "/api/accounts/" .. account .. "/topups",
                    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %s"}, body)
end
"""


def wrk(url: str, seconds: int, script: Path | None) -> tuple[float, float, int]:
    """(requests/s, p99 ms, non-2xx count) of a wrk run with 100 connections."""
    import re

    args = ["wrk", "-t2", "-c100", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    if script is not None:
        args += ["-s", str(script)]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([0-9.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rate, p99, int(bad.group(1)) if bad else 0


def start_platform(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`metertwin run` of the demo on a free port, once it answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "control.cli", "run", "scenarios/demo-community.toml",
                             "--data", str(data), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    return proc, url


def run_wrk(report: Report, quick: bool) -> None:
    seconds = 5 if quick else 15
    with tempfile.TemporaryDirectory(prefix="mt-bench-topups-") as tmp:
        data = Path(tmp) / "data"
        proc, url = start_platform(data)
        try:
            key = (data / "admin.key").read_text().strip()
            accounts = httpx.get(url + "/api/accounts?limit=5000", headers={"Authorization": f"Bearer {key}"},
                                 timeout=30).json()["items"]
            names = ", ".join(f'"{a["id"]}"' for a in accounts)
            script = Path(tmp) / "topups.lua"
            script.write_text(WRK_SCRIPT % (0, names, key))
            rate, p99, bad = wrk(url, seconds, script)  # as fast as the server takes them
            paced = Path(tmp) / "paced.lua"
            paced.write_text(WRK_SCRIPT.replace("wrk-%%d", "wrkp-%%d") % (200, names, key))  # 100 conn x 5/s
            paced_rate, paced_p99, paced_bad = wrk(url, seconds, paced)
            get_rate, get_p99, _ = wrk(url + "/api/health", seconds, None)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        ledger = Ledger(data / "ledger.sqlite")
        rows = ledger.db.execute("SELECT ref, COUNT(*) FROM transfers WHERE kind = 'topup' AND ref LIKE 'wrk%'"
                                 " GROUP BY ref").fetchall()
        ledger.check()
        ledger.close()
    landed = len(rows)
    doubled = sum(1 for _, c in rows if c > 1)
    sent = int(round(rate * seconds))
    sent += int(round(paced_rate * seconds))
    note = (f"wrk, 100 connections, {seconds}s: ~{sent:,} requests in both runs, {landed:,} payments in the ledger, "
            f"{bad + paced_bad} non-2xx, doubled {doubled}; group commit")
    report.add("API top-ups, 100 clients, as fast as taken", rate, "top-ups/s", "GET /api/health, same load",
               get_rate, note=note)
    report.add("API top-ups, p99 at saturation", p99, "ms", "GET /api/health p99", get_p99, note="100 in flight")
    report.add("API top-ups, p99 at 500/s offered", paced_p99, "ms", "p99 at saturation", p99,
               note=f"100 clients pacing 5/s each, {paced_rate:.0f}/s achieved; goal 500/s at p99 < 100 ms")


def run(report: Report) -> None:
    import shutil

    if shutil.which("wrk"):
        run_wrk(report, os.environ.get("METERTWIN_BENCH_QUICK") == "1")
        return
    run_httpx(report)


def run_httpx(report: Report) -> None:
    n = 1000 if os.environ.get("METERTWIN_BENCH_QUICK") == "1" else 5000
    with tempfile.TemporaryDirectory(prefix="mt-bench-topups-") as tmp:
        data = Path(tmp) / "data"
        proc, url = start_platform(data)
        try:
            key = (data / "admin.key").read_text().strip()
            accounts = [f"A-B0{1 + i % 6}-{1 + (i // 6) % 18:02d}-0{1 + i % 4}" for i in range(200)]
            jobs = [(f"bench-{i:06d}", accounts[i % len(accounts)], 100 + i % 900) for i in range(n)]
            started = time.perf_counter()
            latencies, acked = asyncio.run(hammer(url, key, jobs, 0))
            elapsed = time.perf_counter() - started
            started = time.perf_counter()
            get_lat, _ = asyncio.run(hammer(url, key, None, n))
            get_elapsed = time.perf_counter() - started
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        ledger = Ledger(data / "ledger.sqlite")
        rows = ledger.db.execute("SELECT ref, COUNT(*) FROM transfers WHERE kind = 'topup' AND ref LIKE 'bench-%'"
                                 " GROUP BY ref").fetchall()
        ledger.check()
        ledger.close()
    landed = {ref for ref, _ in rows}
    doubled = sum(1 for _, c in rows if c > 1)
    lost = len(acked - landed)
    p99 = float(np.percentile(latencies, 99)) * 1000
    note = (f"{n:,} top-ups, {CLIENTS} clients; {len(acked):,} acknowledged, lost {lost}, doubled {doubled}; "
            f"p99 {p99:.0f} ms (GET p99 {np.percentile(get_lat, 99) * 1000:.0f} ms); goal 500/s at p99 < 100 ms; "
            "httpx client in-process (install wrk for a real load)")
    report.add("API top-ups, 100 concurrent clients", n / elapsed, "top-ups/s", "GET /api/health, same clients",
               n / get_elapsed, note=note + (" QUICK" if n < 5000 else ""))
    report.add("API top-ups, p99 latency", p99, "ms", "GET /api/health p99", float(np.percentile(get_lat, 99)) * 1000,
               note="goal < 100 ms")
