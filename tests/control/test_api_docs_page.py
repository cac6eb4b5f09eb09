"""The pages a person opens on a running `metertwin run`: /api/docs (Swagger UI) loads every
script, stylesheet and icon from the platform itself, since sites often run without
internet, and the dashboard mounted at / does not shadow them; /health lays out every block
of /api/health readably (no Python dicts, no None, escaped text)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from control.api.health_page import BLOCKS, NONE, render_health
from tests.support import free_tcp_port, require_program

SCENARIO = """\
[site]
id = "D1"
name = "Docs <page> & health"

[[buildings]]
id = "B01"
floors = 2
rooms_per_floor = 2
electric = {}
water = { valve = true }
master = { electric = true, water = true }
"""


class Page(HTMLParser):
    """The URLs a page loads (script src, link href) and its visible text (not <style>, <script>)."""

    def __init__(self, body: str) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.headings: list[str] = []
        self.text: list[str] = []
        self._skip = 0
        self._tag = ""
        self.feed(body)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script" and found.get("src"):
            self.loads.append(str(found["src"]))
        if tag == "link" and found.get("href"):
            self.loads.append(str(found["href"]))
        if tag in ("style", "script"):
            self._skip += 1
        self._tag = tag

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script"):
            self._skip -= 1
        self._tag = ""

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)
            if self._tag == "h2":
                self.headings.append(data)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """`metertwin run` on a free loopback port (its dashboard mounted at /, Modbus on loopback)."""
    tmp = tmp_path_factory.mktemp("docs-page")
    (tmp / "site.toml").write_text(SCENARIO)
    port = free_tcp_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp / "run.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "control.cli", "run", str(tmp / "site.toml"), "--data", str(tmp / "data"),
             "--port", str(port), "--speed", "300", "--start", "2026-03-02T18:00", "--no-opcua"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(url + "/api/health", timeout=5)
                if health.status_code == 200 and health.json()["modbus"]["last_cycle"] is not None:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (tmp / "run.log").read_text()
            assert time.monotonic() < deadline, "the server did not answer with a Modbus cycle in 120 s"
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(2)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


KINDS = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


def test_docs_page_loads_only_files_this_server_serves(running):
    """Every script and stylesheet of /api/docs is a path on this server (no CDN host) and
    comes back 200 with its own content type, not the dashboard's HTML; the spec it reads
    is served too."""
    page = httpx.get(running + "/api/docs", timeout=10)
    assert page.status_code == 200 and "SwaggerUIBundle(" in page.text
    loads = Page(page.text).loads
    assert any(u.endswith(".js") for u in loads) and any(u.endswith(".css") for u in loads), loads
    for url in loads:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and url.startswith("/"), url
        got = httpx.get(running + url, timeout=10)
        assert got.status_code == 200 and got.content, url
        assert KINDS[Path(parts.path).suffix] in got.headers["content-type"], (url, got.headers["content-type"])
    assert "'/api/openapi.json'" in page.text
    spec = httpx.get(running + "/api/openapi.json", timeout=10).json()
    assert spec["openapi"].startswith("3.1") and "/api/health" in spec["paths"]
    assert not any(p.startswith("/api/docs") for p in spec["paths"])


def test_swagger_ui_reads_openapi_3_1(running):
    """The bundled Swagger UI is version 5 or later: 4.x shows "Unable to render this
    definition" for FastAPI's OpenAPI 3.1."""
    bundle = httpx.get(running + "/api/docs-static/swagger-ui-bundle.js", timeout=10).text
    versions = re.findall(r'PACKAGE_VERSION:"(\d+)\.\d+\.\d+"', bundle)  # Swagger UI's own build info
    assert len(versions) == 1 and int(versions[0]) >= 5, versions


def test_swagger_ui_draws_the_operations_in_a_browser(running):
    """Headless Chromium, which reaches nothing but loopback here, draws the API's title and
    its operations on /api/docs (a page missing its script stays blank; Swagger UI 4 shows
    "Unable to render this definition")."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = Options()
    options.binary_location = require_program("chromium", "chromium")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(require_program("chromedriver", "chromium-driver")))
    try:
        driver.get(running + "/api/docs")
        end = time.monotonic() + 120
        while not driver.find_elements(By.CSS_SELECTOR, ".opblock") and time.monotonic() < end:
            time.sleep(0.2)
        title = driver.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
        assert "MeterTwin API" in title, driver.page_source[:2000]
        assert len(driver.find_elements(By.CSS_SELECTOR, ".opblock")) >= 10
        assert "Unable to render" not in driver.page_source
    finally:
        driver.quit()


def test_health_page_names_every_block_without_python_reprs(running):
    """/health has a section for every key of /api/health (by its block's title), shows no
    dict braces and no None, and escapes the site's name; /api/health is still JSON."""
    health = httpx.get(running + "/api/health", timeout=10).json()
    body = httpx.get(running + "/health", timeout=10).text
    page = Page(body)
    shown = "".join(page.text)
    assert "{" not in shown and "}" not in shown and "None" not in shown, shown
    title_of = {key: title for title, keys in BLOCKS for key in keys}
    for key in health:
        assert title_of.get(key, "Other") in page.headings, key
    assert "Docs &lt;page&gt; &amp; health" in body and "<page>" not in body
    assert f"{health['modbus']['last_cycle']['units_ok']:,}" in shown


def test_render_health_tables_numbers_times_and_unknown_keys():
    """Nested dicts become tables, lists of records tables with a header, None and empty
    lists a dash, integers get thousands separators, `*_at` times a date in the site's zone,
    HTML is escaped, and a key no block names still shows under "Other"."""
    at = datetime(2026, 3, 2, 10, 0, tzinfo=UTC).timestamp()
    health = {"site": "S", "name": "A & B", "twins": 1234567, "speed": 60.0, "uptime_s": 12.345,
              "webhooks": [], "months_closed": None,
              "influx": {"url": "http://127.0.0.1:1", "sent": 98765, "last_error": "<boom>", "last_sent_at": at,
                         "last_error_at": None, "warning": None},
              "tasks": [{"name": "billing tick", "every_s": 86400.0, "runs": 3, "last_error": None}],
              "brand_new": {"depth": {"deeper": 1}}}
    body = render_health(health, UTC)
    page = Page(body)
    shown = "".join(page.text)
    assert "{" not in shown and "None" not in shown
    assert "1,234,567" in shown and "98,765" in shown and "86,400" in shown and "12.345" in shown
    assert "2026-03-02 10:00:00+00:00" in shown
    assert "&lt;boom&gt;" in body and "<boom>" not in body and "A &amp; B" in body
    assert page.headings == ["Site", "Clock", "Billing", "Webhooks", "Periodic tasks", "InfluxDB", "Other"]
    assert shown.count(NONE) >= 4  # months closed, webhooks, last error at, warning, the task's last error
    assert "<th>every (s)</th>" in body and "<th>deeper</th>" in body
