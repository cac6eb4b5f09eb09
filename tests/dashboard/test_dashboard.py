"""The dashboard in headless Chromium against a running `metertwin run`: sign-in, the room
grid, a twin's relay tripped and restored by a top-up, an alarm acknowledged, a report
downloaded, a task and an injection; a viewer sees no control and a forged control
callback with a viewer's session is refused.

Screenshots of every page go to out/screenshots/ (repository root) for a person to look at.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import free_tcp_port, require_program

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "out" / "screenshots"
SCENARIO = """\
[site]
id = "D1"
name = "Dashboard test"

[tariffs.power]
kind = "tiered"
period = "month"
thresholds_kwh = [180, 350]
prices_yuan = [0.4983, 0.5483, 0.7983]

[tariffs.water]
utility = "water"
kind = "flat"
price_yuan = 3.8

[[buildings]]
id = "B01"
floors = 3
rooms_per_floor = 2
electric = { tariff = "power" }
water = { tariff = "water", valve = true }
master = { electric = true, water = true }

[[inject]]
twin = "B01-03-02.em"
kind = "offline"
start = "0d"

[residents]
opening_yuan = [300, 300]
topup_below_yuan = [10, 10]
billing = "platform"
"""
OPERATOR_PASSWORD = "operator-pass-123"
VIEWER_PASSWORD = "viewer-pass-12345"


class Platform:
    """A `metertwin run` subprocess on a free loopback port, with an operator and a viewer."""

    def __init__(self, tmp: Path) -> None:
        scenario = tmp / "dash.toml"
        scenario.write_text(SCENARIO)
        self.data = tmp / "data"
        self.port = free_tcp_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (tmp / "run.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "control.cli", "run", str(scenario), "--data", str(self.data), "--port",
             str(self.port), "--speed", "300", "--start", "2026-03-02T18:00", "--no-opcua"],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.wait_until(lambda: self.get("/api/health").status_code == 200, "the server to answer")
        self.admin_key = (self.data / "admin.key").read_text().strip()
        for name, role, password in (("olga", "operator", OPERATOR_PASSWORD), ("victor", "viewer", VIEWER_PASSWORD)):
            subprocess.run([sys.executable, "-m", "control.cli", "users", "add", name, "--role", role,
                            "--password-stdin", "--data", str(self.data)], input=password + "\n", text=True,
                           check=True, capture_output=True)

    def get(self, path: str) -> httpx.Response:
        try:
            key = getattr(self, "admin_key", None)
            return httpx.get(self.url + path, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=10)
        except httpx.TransportError:
            return httpx.Response(599)

    def wait_until(self, condition, what: str, bound_s: float = 120.0) -> None:
        """Poll until `condition()`; the bound only stops a broken run from hanging CI."""
        end = time.monotonic() + bound_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"metertwin run exited ({self.proc.returncode}) waiting for {what}")
            if condition():
                return
            time.sleep(0.2)
        raise AssertionError(f"gave up waiting for {what}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


def browser(download_dir: Path):
    """Headless Debian Chromium through selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = require_program("chromium", "chromium")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=Service(require_program("chromedriver", "chromium-driver")))
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    require_program("chromium", "chromium")
    require_program("chromedriver", "chromium-driver")
    running = Platform(tmp_path_factory.mktemp("dashboard"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def operator(platform, tmp_path_factory):
    downloads = tmp_path_factory.mktemp("downloads")
    driver = browser(downloads)
    driver.downloads = downloads
    sign_in(driver, platform, "olga", OPERATOR_PASSWORD)
    yield driver
    driver.quit()


def sign_in(driver, platform: Platform, name: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(platform.url + "/")
    assert "/login" in driver.current_url  # no session: the sign-in form
    driver.find_element(By.ID, "username").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "sign-in").click()
    wait_text(driver, "who", f"{name} (")


def wait_for(driver, condition, what: str, bound_s: float = 180.0):
    """Poll the page until `condition(driver)` is truthy; returns its value."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    end = time.monotonic() + bound_s
    while time.monotonic() < end:
        try:
            value = condition(driver)
        except (NoSuchElementException, StaleElementReferenceException):
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}; page at {driver.current_url}")


def text_of(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def wait_text(driver, element_id: str, expected: str) -> str:
    return wait_for(driver, lambda d: expected in text_of(d, element_id) and text_of(d, element_id),
                    f"{expected!r} in #{element_id}")


def click(driver, element_id: str) -> None:
    from selenium.webdriver.common.by import By

    wait_for(driver, lambda d: d.find_element(By.ID, element_id).is_displayed(), f"#{element_id} shown")
    driver.find_element(By.ID, element_id).click()


def shot(driver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    time.sleep(0.5)  # let plotly finish drawing
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def grid_text(driver) -> list:
    return driver.execute_script(
        "const g = document.querySelector('#grid-graph .js-plotly-plot');"
        "return g && g.data && g.data[0] && g.data[0].text ? g.data[0].text.flat() : null;")


def test_signed_out_requests_are_refused(platform):
    """Without a session a page redirects to the sign-in form and Dash's requests get 401;
    a wrong password gets the form again with 401; an unknown /api path is a JSON 404, not
    the dashboard."""
    page = httpx.get(platform.url + "/grid", timeout=10)
    assert page.status_code == 302 and page.headers["location"].startswith("/login")
    assert httpx.post(platform.url + "/_dash-update-component", json={}, timeout=10).status_code == 401
    missing = httpx.get(platform.url + "/api/no-such-thing", timeout=10)
    assert missing.status_code == 404 and "no API route" in missing.json()["detail"]
    wrong = httpx.post(platform.url + "/login", data={"username": "olga", "password": "not-it-at-all"}, timeout=10)
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text


def test_overview_and_room_grid(platform, operator):
    """The overview shows live figures; the room grid draws every room, coloured by state;
    clicking a room opens its twin."""
    driver = operator
    wait_for(driver, lambda d: "/" in text_of(d, "ov-online") and text_of(d, "ov-online"), "meters online")
    shot(driver, "overview")
    click(driver, "nav-room-grid")
    cells = wait_for(driver, grid_text, "the room grid")
    assert len([c for c in cells if c]) == 6
    # the scenario's offline meter, once the collector has given up on it (the grid updates itself)
    wait_for(driver, lambda d: any(c.startswith("B01-03-02 · offline") for c in grid_text(d) or []),
             "the offline room on the grid")
    shot(driver, "room-grid")
    click_cell(driver, 0, 1)  # room 1 of floor 2 opens its twin
    wait_for(driver, lambda d: d.current_url.endswith("/twin/B01-02-01.em"), "the clicked room's twin page")
    wait_text(driver, "twin-room-state", "")


def click_cell(driver, x: int, y: int) -> None:
    """Click the centre of the room grid's cell (x, y), as a person does."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    plot = driver.find_element(By.CSS_SELECTOR, "#grid-graph .nsewdrag")
    px, py, w, h = driver.execute_script(
        "const g = document.querySelector('#grid-graph .js-plotly-plot'); const l = g._fullLayout;"
        "const r = arguments[2].getBoundingClientRect(); const p = g.getBoundingClientRect();"
        "return [l.xaxis.d2p(arguments[0]) + l._size.l + p.left - r.left,"
        "        l.yaxis.d2p(arguments[1]) + l._size.t + p.top - r.top, r.width, r.height];", x, y, plot)
    ActionChains(driver).move_to_element_with_offset(plot, int(px - w / 2), int(py - h / 2)).click().perform()


def test_trip_then_top_up_restores(platform, operator):
    """An operator trips a room's relay (after confirming): the command goes from created
    to confirmed and the room turns to cut off, on the twin page and the grid; a top-up
    with restore closes it again and the room is normal."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = operator
    driver.get(platform.url + "/grid")
    search = wait_for(driver, lambda d: d.find_element(By.ID, "grid-search"), "the search box")
    search.send_keys("B01-01-01", Keys.ENTER)
    wait_for(driver, lambda d: d.current_url.endswith("/twin/B01-01-01.em"), "the twin page")
    wait_text(driver, "twin-relay", "closed")
    wait_text(driver, "twin-room-state", "normal")
    shot(driver, "twin")
    click(driver, "btn-trip")
    wait_text(driver, "confirm-text", "Trip relay of room B01-01-01?")
    shot(driver, "twin-confirm")
    click(driver, "btn-confirm")
    result = wait_text(driver, "control-result", "relay_open on B01-01-01.em")
    command = result.split("command ")[1].split()[0]
    wait_text(driver, f"cmd-state-{command}", "confirmed")
    assert "created" in driver.find_element(By.ID, "commands-table").text
    wait_text(driver, "twin-relay", "OPEN (cut off)")
    wait_text(driver, "twin-room-state", "cut off")
    shot(driver, "twin-cut-off")
    driver.get(platform.url + "/grid")
    wait_for(driver, lambda d: any(c.startswith("B01-01-01 · cut off") for c in (grid_text(d) or [])),
             "the grid to show the room cut off")
    shot(driver, "room-grid-cut-off")

    driver.get(platform.url + "/twin/B01-01-01.em")
    amount = wait_for(driver, lambda d: d.find_element(By.ID, "topup-yuan"), "the top-up amount")
    amount.clear()
    amount.send_keys("200")
    click(driver, "btn-topup")
    wait_text(driver, "confirm-text", "200.00 yuan")
    click(driver, "btn-confirm")
    result = wait_text(driver, "control-result", "topped up A-B01-01-01")
    assert "relay_close B01-01-01.em" in result
    wait_text(driver, "twin-relay", "closed")
    wait_text(driver, "twin-room-state", "normal")
    shot(driver, "twin-restored")
    orders = httpx.get(platform.url + "/api/reports/orders?account=A-B01-01-01",
                       headers={"Authorization": f"Bearer {platform.admin_key}"}, timeout=10).json()
    assert any(o["kind"] == "topup" and o["amount_fen"] == 20000 for o in orders)


def test_acknowledge_an_alarm(platform, operator):
    """The offline meter's alarm is acknowledged from the alarms page; the API agrees."""
    from selenium.webdriver.common.by import By

    driver = operator
    driver.get(platform.url + "/alarms")
    button = wait_for(driver, lambda d: d.find_element(By.XPATH, "//tr[td[2]='offline']//button"),
                      "the offline alarm's Acknowledge button")
    row = button.find_element(By.XPATH, "./ancestor::tr")
    alarm_id = row.find_element(By.XPATH, "./td[1]").text
    shot(driver, "alarms")
    button.click()
    wait_text(driver, "alarm-ack-result", f"alarm {alarm_id} (offline) acknowledged by olga")
    wait_text(driver, f"alarm-state-{alarm_id}", "acknowledged")
    alarms = platform.get("/api/alarms").json()
    assert next(a for a in alarms if str(a["id"]) == alarm_id)["state"] == "acknowledged"
    shot(driver, "alarms-acknowledged")


def test_download_a_report(platform, operator):
    """The orders report downloads as CSV holding the ledger's top-ups; the energy report
    shows days with last year beside them."""
    from selenium.webdriver.common.by import By

    driver = operator
    driver.get(platform.url + "/reports")
    wait_for(driver, lambda d: "energy_kwh_last_year" in text_of(d, "report-rows"), "the energy report")
    shot(driver, "reports-energy")
    driver.find_element(By.XPATH, "//*[@id='report-kind']//label[contains(., 'Orders')]").click()
    wait_for(driver, lambda d: "topup" in text_of(d, "report-rows"), "the orders report")
    shot(driver, "reports-orders")
    click(driver, "report-download-btn")
    files = wait_for(driver, lambda d: [p for p in driver.downloads.glob("*.csv")], "the CSV download")
    text = files[0].read_text()
    assert files[0].name.startswith("D1-orders-")
    assert text.splitlines()[0] == "transfer,time,kind,account,amount_fen,ref"
    assert ",topup,A-B01-01-02,30000,opening:A-B01-01-02" in text  # every order the ledger holds


def test_task_and_injection(platform, operator):
    """A batch task trips a floor's relays and each item's outcome shows; an injected fault
    appears on the simulation page with the alarms the detectors raise; the speed changes."""
    from selenium.webdriver.common.by import By

    driver = operator
    driver.get(platform.url + "/tasks")
    name = wait_for(driver, lambda d: d.find_element(By.ID, "task-name"), "the task form")
    name.send_keys("trip floor 2")
    floor = driver.find_element(By.ID, "task-floor")
    floor.send_keys("2")
    click(driver, "task-create")
    result = wait_text(driver, "task-create-result", "created")
    assert result.startswith("task t-")  # the new task is picked: its items show below
    wait_text(driver, "task-items", ": confirmed 2")  # the run's two items, both confirmed by the meters
    shot(driver, "tasks")

    driver.get(platform.url + "/sim")
    twin = wait_for(driver, lambda d: d.find_element(By.ID, "sim-twin"), "the injection form")
    twin.send_keys("B01-02-02.em")
    click(driver, "sim-inject")
    wait_text(driver, "sim-result", "offline injected into B01-02-02.em")
    wait_for(driver, lambda d: "B01-02-02.em" in text_of(d, "sim-injections"), "the injection listed")
    wait_for(driver, lambda d: d.find_elements(By.XPATH, "//*[@id='sim-alarm-table']//tr[td[2]='offline' and "
                                                    "td[3]='B01-02-02.em' and td[6]='raised']"),
             "the offline detector's alarm on the injected meter")
    shot(driver, "simulation")
    speed = driver.find_element(By.ID, "sim-speed-in")
    speed.clear()
    speed.send_keys("450")
    click(driver, "sim-set-speed")
    wait_text(driver, "sim-result", "speed 450x")
    assert platform.get("/api/health").json()["speed"] == 450


def test_viewer_sees_no_control_and_forged_callbacks_are_refused(platform, tmp_path):
    """A viewer's pages have no control buttons; a control callback posted by hand with the
    viewer's session cookie gets 403 and sends no command, while the same request with an
    operator's session is carried out."""
    from selenium.webdriver.common.by import By

    driver = browser(tmp_path)
    try:
        sign_in(driver, platform, "victor", VIEWER_PASSWORD)
        driver.get(platform.url + "/twin/B01-01-02.em")
        wait_text(driver, "twin-room-state", "")
        wait_for(driver, lambda d: d.find_element(By.ID, "twin-relay").text, "the relay state")
        assert not driver.find_elements(By.ID, "btn-trip")
        assert not driver.find_elements(By.ID, "twin-controls")
        labels = ("Trip relay", "Close relay", "Close valve", "Open valve", "Top up", "Confirm")
        shown = [b.text for b in driver.find_elements(By.TAG_NAME, "button")]
        assert not [b for b in shown if b.strip() in labels], shown
        shot(driver, "viewer-twin")
        driver.get(platform.url + "/alarms")
        wait_for(driver, lambda d: d.find_elements(By.XPATH, "//tr[td[2]='offline']"), "the alarms table")
        assert not driver.find_elements(By.XPATH, "//button[text()='Acknowledge']")
        for page in ("tasks", "sim"):
            driver.get(f"{platform.url}/{page}")
            wait_for(driver, lambda d: d.find_elements(By.CLASS_NAME, "grid-table") or "none" in d.page_source,
                     f"the {page} page")
            assert not driver.find_elements(By.ID, "task-create") and not driver.find_elements(By.ID, "sim-inject")
        viewer_cookie = driver.get_cookie("metertwin_session")["value"]
    finally:
        driver.quit()
    body = {"output": "..control-result.children...watch-command.data...confirm-box.style@"
                      "e0ee1ba1b6a9ecd5fe56acd26f2a4f19e7e2d14aed6ef15e49c6d6d5e5da82c4..",
            "outputs": [{"id": "control-result", "property": "children"}, {"id": "watch-command", "property": "data"},
                        {"id": "confirm-box", "property": "style"}],
            "inputs": [{"id": "btn-confirm", "property": "n_clicks", "value": 1}],
            "state": [{"id": "pending-action", "property": "data", "value": {"action": "relay_open"}},
                      {"id": "twin-id", "property": "data", "value": "B01-01-02.em"}],
            "changedPropIds": ["btn-confirm.n_clicks"]}
    dependencies = httpx.get(platform.url + "/_dash-dependencies", cookies={"metertwin_session": viewer_cookie},
                             timeout=10).json()
    body["output"] = next(d["output"] for d in dependencies if d["output"].startswith("..control-result.children"))
    forged = httpx.post(platform.url + "/_dash-update-component", json=body,
                        cookies={"metertwin_session": viewer_cookie}, timeout=10)
    assert forged.status_code == 403, forged.text
    commands = platform.get("/api/commands?twin=B01-01-02.em").json()
    assert commands == []
    # the same request with an operator's session goes through: the refusal was the role's
    login = httpx.post(platform.url + "/login", data={"username": "olga", "password": OPERATOR_PASSWORD},
                       timeout=30)
    operator_cookie = login.cookies["metertwin_session"]
    allowed = httpx.post(platform.url + "/_dash-update-component", json=body,
                         cookies={"metertwin_session": operator_cookie}, timeout=30)
    assert allowed.status_code == 200, allowed.text
    assert "relay_open on B01-01-02.em" in json.dumps(allowed.json())
    assert [c["requested_by"] for c in platform.get("/api/commands?twin=B01-01-02.em").json()] == ["olga"]
