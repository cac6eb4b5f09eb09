"""The dashboard's room grid with 10,000 rooms (scenarios/district-10k.toml) in headless
Chromium, against a running `metertwin run`.

Figures:
- time to first full render of /grid: from navigation start (the browser's
  `performance.now()` origin) until the heatmap of every room is drawn (the figure holds
  all 10,000 rooms and plotly has painted its heatmap layer); median of several fresh
  loads (bundles cached, as for a returning user; the very first, cold load is reported
  too). Baseline: the same browser's first paint of /login, a plain HTML page from the
  same server (the floor of any page). Goal: under 2 s.
- live-update callbacks under load: the grid's timer callback (`/_dash-update-component`,
  the Patch of 10,000 states) from 20 dashboards, each updating every 2 s as a browser
  does, for 15 s while the world runs at 60x: p50 and p95 latency. Baseline: GET
  /api/health paced alike from the same clients (the HTTP stack's own latency). Goal: p95
  under 250 ms. Then the same callback back to back from the 20 clients: callbacks per
  second the server sustains (against the one per 2 s a single open dashboard needs).

    python -m bench dashboard            # 5 loads, 15 s of callbacks
    python -m bench dashboard --quick    # 3 loads, 5 s
"""

from __future__ import annotations

import asyncio
import os
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
CLIENTS = 20
#: Seconds between a dashboard's live updates (dashboard.app.TICK_MS).
TICK_S = 2.0
#: In the page: resolve with performance.now() at the first frame where the grid is drawn.
DRAWN_JS = """
const done = arguments[arguments.length - 1];
const want = arguments[0];
function check() {
  const g = document.querySelector('#grid-graph .js-plotly-plot');
  const ok = g && g.data && g.data[0] && g.data[0].z &&
             g.data[0].z.flat().filter(v => v !== null).length === want &&
             g.querySelector('.heatmaplayer image, .heatmaplayer .hm');
  if (ok) { requestAnimationFrame(() => done(performance.now())); } else { requestAnimationFrame(check); }
}
check();
"""
LOGIN_PAINT_JS = """
const p = performance.getEntriesByName('first-contentful-paint')[0] || performance.getEntriesByName('first-paint')[0];
return p ? p.startTime : performance.timing.domContentLoadedEventEnd - performance.timing.navigationStart;
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(data: Path) -> tuple[subprocess.Popen[bytes], str, Any]:
    port = free_port()
    log = (data.parent / "run.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "control.cli", "run", "scenarios/district-10k.toml", "--data", str(data), "--port",
         str(port), "--speed", "60", "--start", "2026-02-05", "--no-opcua", "--no-modbus"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 300
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"metertwin run exited ({proc.returncode}); see {data.parent / 'run.log'}")
        try:
            if httpx.get(url + "/api/health", timeout=5).status_code == 200:
                return proc, url, log
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("metertwin run did not answer within 300 s")


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    driver.set_script_timeout(60)
    return driver


def render_times(url: str, password: str, loads: int) -> tuple[list[float], list[float], int, float]:
    """(grid render ms per load, /login first paint ms per load, rooms drawn, the first
    load's render ms with nothing cached)."""
    from selenium.webdriver.common.by import By

    rooms = httpx.get(url + "/api/health", timeout=10).json()
    driver = browser()
    try:
        login: list[float] = []
        for _ in range(loads):
            driver.delete_all_cookies()
            driver.get(url + "/login")
            login.append(float(driver.execute_script(LOGIN_PAINT_JS)))
        driver.find_element(By.ID, "username").send_keys("admin")
        driver.find_element(By.ID, "password").send_keys(password)
        driver.find_element(By.ID, "sign-in").click()
        end = time.monotonic() + 60
        while "/login" in driver.current_url and time.monotonic() < end:
            time.sleep(0.1)
        n_rooms = 10000 if "district" in str(rooms.get("scenario", "")) else 0
        driver.get(url + "/grid")  # cold: the Dash bundles load; then cached, as for a returning user
        cold = float(driver.execute_async_script(DRAWN_JS, n_rooms))
        grid: list[float] = []
        for _ in range(loads):
            driver.get(url + "/grid")
            grid.append(float(driver.execute_async_script(DRAWN_JS, n_rooms)))
        return grid, login, n_rooms, cold
    finally:
        driver.quit()


async def callbacks(url: str, cookie: str, seconds: float) -> tuple[list[float], list[float], list[float]]:
    """Latencies (s) from CLIENTS clients: the grid callback paced like open dashboards (one
    each TICK_S per client), /api/health paced alike, and the grid callback back to back."""
    async with httpx.AsyncClient(base_url=url, cookies={"metertwin_session": cookie}, timeout=60,
                                 limits=httpx.Limits(max_connections=CLIENTS)) as client:
        deps = (await client.get("/_dash-dependencies")).json()
        output = next(d["output"] for d in deps if d["output"].startswith("..grid-graph.figure"))
        body = {"output": output,
                "outputs": [{"id": "grid-graph", "property": "figure"}, {"id": "grid-counts", "property": "children"},
                            {"id": "grid-drawn", "property": "data"}],
                "inputs": [{"id": "grid-building", "property": "value", "value": ""},
                           {"id": "tick", "property": "n_intervals", "value": 1}],
                "state": [{"id": "grid-drawn", "property": "data", "value": ""}],
                "changedPropIds": ["tick.n_intervals"]}
        first = await client.post("/_dash-update-component", json=body)
        if first.status_code != 200:
            raise RuntimeError(f"grid callback: {first.status_code} {first.text[:200]}")

        async def loop(path: str, post: bool, out: list[float], until: float, period: float, phase: float) -> None:
            await asyncio.sleep(phase)
            while time.monotonic() < until:
                t = time.perf_counter()
                r = await (client.post(path, json=body) if post else client.get(path))
                out.append(time.perf_counter() - t)
                if r.status_code != 200:
                    raise RuntimeError(f"{path}: {r.status_code}")
                await asyncio.sleep(max(0.0, period - (time.perf_counter() - t)))

        async def clients(path: str, post: bool, period: float, span: float) -> list[float]:
            out: list[float] = []
            until = time.monotonic() + span
            phases = np.linspace(0, period, CLIENTS, endpoint=False)
            await asyncio.gather(*(loop(path, post, out, until, period, float(p)) for p in phases))
            return out

        paced = await clients("/_dash-update-component", True, TICK_S, seconds)
        health = await clients("/api/health", False, TICK_S, min(seconds, 6))
        saturated = await clients("/_dash-update-component", True, 0.0, min(seconds, 6))
        return paced, health, saturated


def run(report: Report) -> None:
    """Start the district live, render its grid in Chromium, then load the grid's callback."""
    loads, seconds = (3, 5.0) if quick() else (5, 15.0)
    tmp = Path(tempfile.mkdtemp(prefix="mt-bench-dash-"))
    proc, url, log = start(tmp / "data")
    try:
        password = (tmp / "data" / "admin.password").read_text().strip()
        print(f"bench dashboard: district live at {url}; rendering the grid {loads} times", file=sys.stderr)
        grid, login, rooms, cold = render_times(url, password, loads)
        report.add("dashboard: room grid first full render", float(np.median(grid)), "ms", "first paint of /login",
                   float(np.median(login)), note=f"{rooms:,} rooms, median of {loads} loads; goal < 2000 ms")
        report.add("dashboard: room grid render, cold browser cache", cold, "ms", "first paint of /login",
                   float(np.median(login)), note="the first load: Dash and plotly bundles fetched too")
        signed = httpx.post(url + "/login", data={"username": "admin", "password": password}, timeout=30)
        cookie = signed.cookies["metertwin_session"]
        print(f"bench dashboard: {CLIENTS} clients on the grid's live callback for {seconds:g} s", file=sys.stderr)
        paced, health, saturated = asyncio.run(callbacks(url, cookie, seconds))
        cb_ms, health_ms = np.array(paced) * 1000, np.array(health) * 1000
        report.add("dashboard: grid live callback p95", float(np.percentile(cb_ms, 95)), "ms",
                   "GET /api/health p95, same clients", float(np.percentile(health_ms, 95)),
                   note=f"{CLIENTS} dashboards each {TICK_S:g} s, world at 60x; goal < 250 ms")
        report.add("dashboard: grid live callback p50", float(np.percentile(cb_ms, 50)), "ms",
                   "GET /api/health p50, same clients", float(np.percentile(health_ms, 50)))
        span = min(seconds, 6)
        report.add("dashboard: grid callbacks back to back", len(saturated) / span, "callbacks/s",
                   "dashboards one 2 s tick serves", 1 / TICK_S,
                   note=f"{CLIENTS} clients; p95 {np.percentile(np.array(saturated) * 1000, 95):.0f} ms")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
