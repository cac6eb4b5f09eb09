"""Top-ups through the API of a running `metertwin run` from 100 concurrent clients.

Figures: top-ups per second and the p99 latency, against plain GETs of /api/health from
the same 100 clients on the same server (the HTTP stack's own ceiling). After the run,
the ledger is read: every acknowledged payment id must be there exactly once (lost and
doubled are printed). Goal: 500 top-ups/s at p99 under 100 ms.
Quick mode: 1,000 top-ups instead of 5,000.
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


def run(report: Report) -> None:
    n = 1000 if os.environ.get("METERTWIN_BENCH_QUICK") == "1" else 5000
    with tempfile.TemporaryDirectory(prefix="mt-bench-topups-") as tmp:
        data = Path(tmp) / "data"
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "control.cli", "run", "scenarios/demo-community.toml",
                                 "--data", str(data), "--port", str(port)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
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
            f"p99 {p99:.0f} ms (GET p99 {np.percentile(get_lat, 99) * 1000:.0f} ms); goal 500/s at p99 < 100 ms")
    report.add("API top-ups, 100 concurrent clients", n / elapsed, "top-ups/s", "GET /api/health, same clients",
               n / get_elapsed, note=note + (" QUICK" if n < 5000 else ""))
    report.add("API top-ups, p99 latency", p99, "ms", "GET /api/health p99", float(np.percentile(get_lat, 99)) * 1000,
               note="goal < 100 ms")
