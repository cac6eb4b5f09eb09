"""Read a scenario TOML file into a `Scenario`: the site's asset model plus what drives its
simulation. Any fault in the file raises `ScenarioError` naming file, line and field.

The format, by example (every table but [site] and [[buildings]] is optional)::

    [site]
    id = "XA01"                   # required
    name = "Qujiang Garden"
    timezone = "Asia/Shanghai"    # IANA zone (default Asia/Shanghai)
    interval = "15min"            # history interval: 1min 5min 10min 15min 30min 1h 1d
    start = "2026-01-01"          # default start of a run, site-local
    days = 7                      # default length of a run

    [profiles.household]          # a load-profile class (fields of schema.ProfileClass)
    shape = "household"           # household, shop or office
    monthly_kwh = 220             # mean kWh per 30 spring days
    water_m3_month = 10

    [tariffs.res-power]           # tariffs by name: any table, read by billing
    kind = "tiered"

    [[fee_items]]                 # fee items (twin/fees.py): charged at each month close
    name = "property fee"
    basis = "area"                # or "fixed" (yuan_month), or period = "once" (yuan)
    yuan_per_m2_month = 1.8
    charge = "balance"            # from the balance, or "bill" (receivable)

    [[apportion]]                 # common-area apportionment (公摊, twin/fees.py), monthly
    name = "corridor lighting"
    source = "B01.sc-corridor"    # a shared circuit, or a master meter (B01.mm): its gap
    basis = "area"                # area, usage or equal, over the building's accounts
    price_yuan = 0.6

    [[buildings]]                 # a block of identical buildings
    ids = "B01..B06"              # or id = "B01"; the range keeps the first id's zero padding
    name = "Building {id}"
    floors = 18
    rooms_per_floor = 4
    room_area_m2 = [89, 89, 120, 120]   # one number, or one per room number on a floor
    use = "flat"                  # flat or shop
    profile = "household"
    vacant_share = 0.05           # rooms left vacant, chosen by CRC-32 of the room id
    electric = { phases = 1, tariff = "res-power", prepaid = true }   # leave out: no meters;
                                  # prepaid = false: the account is postpaid (monthly bills)
    water = { tariff = "res-water", valve = true }
    master = { electric = true, water = true, loss_pct = 2.0, fixed_loss_w = 150 }
    elevators = { count = 2, trip_kwh = 0.06, standby_w = 250, trips_per_day = 350 }

    [[buildings.shared]]          # shared-area circuits, one set per building of the block
    name = "corridor"             # twin id B01.sc-corridor
    circuit = "lighting"          # lighting, pump, garage, hvac or other
    power_kw = 1.2
    schedule = "18:00-06:00"      # HH:MM-HH:MM windows, comma-separated, may wrap; or "always"
    duty = 1.0                    # share of scheduled time drawing power

    [[rooms]]                     # overrides for single rooms
    id = "B03-12-02"
    profile = "shop"              # also: area_m2, use, vacant, account, electric, water
    electric = { phases = 3 }     # merged over the block's table; electric = false removes it

    [[modbus]]                    # a twin read from Modbus hardware instead of the simulated world
    twin = "B01.mm"
    url = "modbus://10.0.3.17:502/1"  # or modbus+tls://HOST:PORT/UNIT, rtu:///dev/ttyUSB0/UNIT?baud=9600
    model = "sdm630"              # a register map of devices/modbus/maps/, or a path to one

    [[opcua]]                     # a twin kept in sync from an OPC UA server (subscriptions)
    twin = "B02.mm"
    url = "opc.tcp://10.0.3.20:4840"
    nodes = { energy_kwh = "ns=2;s=Meter7.Energy", power_w = "ns=2;s=Meter7.Power" }   # reported fields
    methods = { relay_open = ["ns=2;s=Meter7", "ns=2;s=Meter7.Trip"] }   # else a command writes the node

    [[inject]]                    # a fault or theft on one twin
    twin = "B02-05-01.wm"
    kind = "leak"
    start = "2d 3h"               # from the run's start ("2d", "36h", "1d 6h 30m"), or
    end = "10d"                   #   site-local "2026-01-04T02:00"; no end: to the run's end
    flow_lph = 12                 # the kind's parameters (schema.INJECTION_PARAMS)

    [[random_inject]]             # drawn from the run's seed
    kinds = ["h1", "h2", "leak"]
    per_kind = 2
    first_day = 3
    last_day = 20
    min_days = 3
    max_days = 10

Ids: room `B03-12-02` (building, floor, number); its twins `.em`, `.wm`, `.vl`; building
twins `B03.mm` and `B03.mw` (masters), `B03.el1`.. (elevators), `B03.sc-<name>` (shared).
Twins are listed building by building: masters, elevators, shared circuits, then rooms
floor by floor with each room's electric meter, water meter and valve.
"""

from __future__ import annotations

import re
import tomllib
import zlib
from dataclasses import fields
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from devices.modbus.maps import MapError, load_map
from scenarios.schema import (
    INJECTION_PARAMS,
    NODE_ID_RE,
    OPCUA_ACTIONS,
    InfluxSettings,
    Injection,
    ModbusSource,
    OpcUaSource,
    ProfileClass,
    RandomInjections,
    Residents,
    Scenario,
    When,
)
from twin.fees import FeeError, parse_apportionments, parse_fee_items
from twin.model import Account, Building, Floor, Kind, Room, Site, TwinSpec
from twin.state import FIELDS
from twin.tariffs import TariffError, parse_tariff

INTERVALS = {"1min": 60, "5min": 300, "10min": 600, "15min": 900, "30min": 1800, "1h": 3600, "1d": 86400}
CIRCUITS = ("lighting", "pump", "garage", "hvac", "other")


class ScenarioError(Exception):
    """A scenario file is wrong: `str()` reads `path:line: field: message`."""

    def __init__(self, path: str, line: int | None, field: str, message: str) -> None:
        self.path, self.line, self.field, self.message = path, line, field, message
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


# -- locating keys in the source -----------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"'.]+)\s*=")


class Locator:
    """Maps a field path like ('buildings', 1, 'electric', 'phases') to its line.

    tomllib keeps no positions, so this scans the text: table headers ([a.b], [[a]]),
    counting array-of-tables entries, and `key =` lines (and keys inside inline tables on
    them). Good enough to point a person at the right line; falls back to the nearest
    enclosing table."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.tables: dict[tuple[Any, ...], tuple[int, int]] = {}  # path -> (first line, last line)
        counts: dict[tuple[Any, ...], int] = {}
        current: tuple[Any, ...] = ()
        starts: list[tuple[tuple[Any, ...], int]] = [((), 1)]
        for n, line in enumerate(self.lines, start=1):
            match = _HEADER.match(line)
            if not match or line.strip().startswith("#"):
                continue
            names = tuple(part.strip().strip("\"'") for part in match.group(2).split("."))
            if match.group(1) == "[[":
                parent = self._resolve(names[:-1], counts)
                key = (*parent, names[-1])
                index = counts.get(key, 0)
                counts[key] = index + 1
                current = (*key, index)
            else:
                current = (*self._resolve(names[:-1], counts), names[-1])
            starts.append((current, n))
        for i, (path, first) in enumerate(starts):
            last = starts[i + 1][1] - 1 if i + 1 < len(starts) else len(self.lines)
            self.tables.setdefault(path, (first, last))

    @staticmethod
    def _resolve(names: tuple[str, ...], counts: dict[tuple[Any, ...], int]) -> tuple[Any, ...]:
        """Inside [[buildings]], [[buildings.shared]] belongs to the latest building."""
        path: tuple[Any, ...] = ()
        for name in names:
            path = (*path, name)
            if path in counts:
                path = (*path, counts[path] - 1)
        return path

    def field_at(self, line: int) -> str:
        """The dotted field written on a line, as far as it can be told ('' if none)."""
        if not 0 < line <= len(self.lines):
            return ""
        table: tuple[Any, ...] = ()
        for path, (first, last) in self.tables.items():
            if first <= line <= last:
                table = path
        match = _KEY.match(self.lines[line - 1])
        return field_name((*table, match.group(1).strip("\"'")) if match else table)

    def line_of(self, path: tuple[Any, ...]) -> int | None:
        """The line of a field path, or of its nearest enclosing table."""
        for cut in range(len(path), -1, -1):
            table = path[:cut]
            if table in self.tables:
                first, last = self.tables[table]
                rest = [p for p in path[cut:] if isinstance(p, str)]
                if not rest:
                    return first
                for n in range(first, last + 1):
                    text = self.lines[n - 1]
                    match = _KEY.match(text)
                    if match and match.group(1).strip("\"'") == rest[0]:
                        return n  # keys inside an inline table are on the same line
                return first
        return None


def field_name(path: tuple[Any, ...]) -> str:
    """('buildings', 1, 'electric', 'phases') -> 'buildings[1].electric.phases'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# -- reading values -------------------------------------------------------------------------


class _Reader:
    """Typed access to the parsed document that raises ScenarioError with the place."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.locator = Locator(text)

    def fail(self, where: tuple[Any, ...], message: str) -> ScenarioError:
        return ScenarioError(self.path, self.locator.line_of(where), field_name(where), message)

    def table(self, value: Any, where: tuple[Any, ...], known: tuple[str, ...],
              required: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a table, not {type(value).__name__}")
        for key in value:
            if key not in known:
                raise self.fail((*where, key), f"unknown key {key!r}; known keys: {', '.join(known)}")
        for key in required:
            if key not in value:
                raise self.fail(where, f"missing required key {key!r}")
        return value

    def get(self, table: dict[str, Any], key: str, where: tuple[Any, ...], kind: type | tuple[type, ...],
            default: Any = None, *, check: Any = None, rule: str = "") -> Any:
        if key not in table:
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds).replace("str", "string").replace("float", "number")
            raise self.fail((*where, key), f"must be a {names}, not {value!r}")
        if check is not None and not check(value):
            raise self.fail((*where, key), f"{rule}, not {value!r}")
        return value


def parse_schedule(text: str) -> list[tuple[int, int]]:
    """'18:00-06:00,12:00-13:00' or 'always' -> [(start_minute, end_minute)] within a day;
    a window that wraps midnight is split in two. ValueError states the rule broken."""
    value = text.strip().lower()
    if value == "always":
        return [(0, 1440)]
    out: list[tuple[int, int]] = []
    for part in value.split(","):
        match = re.fullmatch(r"\s*(\d\d):(\d\d)\s*-\s*(\d\d):(\d\d)\s*", part)
        if not match:
            raise ValueError(f"{part.strip()!r} is not a window like 18:00-06:00")
        h0, m0, h1, m1 = (int(g) for g in match.groups())
        if h0 > 23 or m0 > 59 or h1 > 24 or m1 > 59 or (h1 == 24 and m1):
            raise ValueError(f"{part.strip()!r} is not a time of day")
        s, e = h0 * 60 + m0, h1 * 60 + m1
        if s == e:
            raise ValueError(f"{part.strip()!r} is empty; use 'always' for a circuit always on")
        out += [(s, e)] if s < e else [(s, 1440), (0, e)] if e else [(s, 1440)]
    return out


_OFFSET = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*d)?\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*$")


def parse_when(value: Any) -> When:
    """'2d 3h', '36h', '90m', '2026-01-04', '2026-01-04T02:00' -> When."""
    if isinstance(value, datetime):
        return When(at=value.replace(tzinfo=None))
    if isinstance(value, date):
        return When(at=datetime(value.year, value.month, value.day))
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a time: use '2d 3h' or '2026-01-04T02:00'")
    match = _OFFSET.match(value)
    if match and any(match.groups()):
        d, h, m = (float(g or 0) for g in match.groups())
        return When(offset=timedelta(days=d, hours=h, minutes=m))
    try:
        return When(at=datetime.fromisoformat(value).replace(tzinfo=None))
    except ValueError:
        raise ValueError(f"{value!r} is not a time: use '2d 3h' (from the start) or '2026-01-04T02:00'") from None


def expand_ids(spec: str) -> list[str]:
    """'B01..B06' -> ['B01', ..., 'B06']; 'B1..B3' -> ['B1', 'B2', 'B3']."""
    match = re.fullmatch(r"([A-Za-z_\-]*)(\d+)\.\.([A-Za-z_\-]*)(\d+)", spec.strip())
    if not match or match.group(1) != match.group(3):
        raise ValueError(f"{spec!r} is not a range like 'B01..B06'")
    prefix, a, b = match.group(1), match.group(2), match.group(4)
    if int(b) < int(a):
        raise ValueError(f"{spec!r} runs backwards")
    return [f"{prefix}{n:0{len(a)}d}" for n in range(int(a), int(b) + 1)]


# -- the loader -----------------------------------------------------------------------------

SITE_KEYS = ("id", "name", "timezone", "interval", "start", "days")
BLOCK_KEYS = ("id", "ids", "name", "floors", "rooms_per_floor", "room_area_m2", "use", "profile",
              "vacant_share", "electric", "water", "master", "elevators", "shared")
ELECTRIC_KEYS = ("phases", "tariff", "prepaid")
WATER_KEYS = ("tariff", "valve", "prepaid")
MASTER_KEYS = ("electric", "water", "loss_pct", "fixed_loss_w")
ELEVATOR_KEYS = ("count", "trip_kwh", "standby_w", "trips_per_day")
SHARED_KEYS = ("name", "circuit", "power_kw", "schedule", "duty")
ROOM_KEYS = ("id", "profile", "area_m2", "use", "vacant", "account", "electric", "water")
INJECT_KEYS = ("twin", "kind", "start", "end")
RANDOM_KEYS = ("kinds", "per_kind", "first_day", "last_day", "min_days", "max_days")
PROFILE_KEYS = tuple(f.name for f in fields(ProfileClass) if f.name != "name")
PROFILE_RULES = {
    "monthly_kwh": (lambda v: v >= 0, "monthly_kwh must be >= 0"),
    "water_m3_month": (lambda v: v >= 0, "water_m3_month must be >= 0"),
    "spread": (lambda v: 0 <= v <= 2, "spread must be in [0, 2]"),
    "daily_cv": (lambda v: 0 <= v <= 2, "daily_cv must be in [0, 2]"),
    "away_prob": (lambda v: 0 <= v < 1, "away_prob must be in [0, 1)"),
}
TOP_KEYS = ("site", "profiles", "tariffs", "fee_items", "apportion", "buildings", "rooms", "inject",
            "random_inject", "residents", "modbus", "influx", "opcua")
RESIDENT_KEYS = ("opening_yuan", "topup_below_yuan", "topup_delay_hours", "topup_yuan", "billing")


def load_scenario(path: str | Path) -> Scenario:
    """Load a scenario file; ScenarioError names file, line and field of any fault."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(str(path), None, "", "no such file; the shipped scenarios are in scenarios/") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ScenarioError(str(path), None, "", f"cannot read: {err}") from None
    return load_scenario_text(text, str(path))


def load_scenario_text(text: str, path: str = "<string>") -> Scenario:
    """Load a scenario from its text (tests, tools); `path` is used in messages."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        match = re.search(r"\s*\(at line (\d+), column (\d+)\)", message)
        line = int(match.group(1)) if match else None
        if match:
            message = message[: match.start()] + f" (column {match.group(2)})"
        field = Locator(text).field_at(line) if line else ""
        raise ScenarioError(path, line, field, f"TOML syntax: {message}") from None
    r = _Reader(path, text)
    try:
        return _build(doc, r, path)
    except ScenarioError:
        raise
    except (ValueError, TypeError, KeyError) as err:  # a rule a record states; no line known
        raise ScenarioError(path, None, "", str(err)) from None


def _build(doc: dict[str, Any], r: _Reader, path: str) -> Scenario:
    r.table(doc, (), TOP_KEYS, required=("site", "buildings"))
    site_t = r.table(doc["site"], ("site",), SITE_KEYS, required=("id",))
    where = ("site",)
    site_id = r.get(site_t, "id", where, str)
    try:
        site = Site(site_id, r.get(site_t, "name", where, str, ""))
    except ValueError as err:
        raise r.fail((*where, "id"), str(err)) from None
    tz = r.get(site_t, "timezone", where, str, "Asia/Shanghai")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise r.fail((*where, "timezone"), f"unknown time zone {tz!r}; use an IANA name like Asia/Shanghai") from None
    site.timezone = tz
    interval = r.get(site_t, "interval", where, str, "15min", check=INTERVALS.__contains__,
                     rule=f"interval must be one of {', '.join(INTERVALS)}")
    start = _start(r, site_t, where)
    days = r.get(site_t, "days", where, float, None, check=lambda d: d > 0, rule="days must be > 0")

    profiles = _profiles(r, doc.get("profiles", {}))
    tariffs = r.table(doc.get("tariffs", {}), ("tariffs",), tuple(doc.get("tariffs", {})))
    for name, table in tariffs.items():
        if not isinstance(table, dict):
            raise r.fail(("tariffs", name), "a tariff is a table")
        try:
            parse_tariff(name, table)
        except TariffError as err:
            field = re.search(r"\.(\w+)", str(err).split(":")[0])
            raise r.fail(("tariffs", name, field.group(1)) if field else ("tariffs", name), str(err)) from None
    fee_items = doc.get("fee_items", [])
    if not isinstance(fee_items, list) or not all(isinstance(f, dict) for f in fee_items):
        raise r.fail(("fee_items",), "must be an array of tables: [[fee_items]]")
    try:
        parse_fee_items(fee_items)
    except FeeError as err:
        raise r.fail(_fee_path(str(err)), str(err).split(": ", 1)[1]) from None
    apportion = doc.get("apportion", [])
    if not isinstance(apportion, list) or not all(isinstance(f, dict) for f in apportion):
        raise r.fail(("apportion",), "must be an array of tables: [[apportion]]")

    blocks = doc["buildings"]
    if not isinstance(blocks, list) or not blocks:
        raise r.fail(("buildings",), "needs at least one [[buildings]] block")
    overrides = _room_overrides(r, doc.get("rooms", []))
    built = _Builder(r, site, profiles, tariffs, overrides)
    for i, block in enumerate(blocks):
        built.block(block, ("buildings", i))
    built.finish()
    utilities = {name: parse_tariff(name, table).utility for name, table in tariffs.items()}
    for twin in site.twins:
        if twin.tariff is not None and twin.utility is not None and utilities[twin.tariff] != twin.utility:
            raise r.fail(("tariffs", twin.tariff), f"tariff {twin.tariff!r} is for {utilities[twin.tariff]}, "
                                                   f"but {twin.id} meters {twin.utility}; set utility in the tariff")
    injections = _injections(r, doc.get("inject", []), built.twin_ids)
    randoms = _randoms(r, doc.get("random_inject", []))
    residents = _residents(r, doc["residents"]) if "residents" in doc else None
    try:
        parse_apportionments(apportion, site)
    except FeeError as err:
        raise r.fail(_fee_path(str(err)), str(err).split(": ", 1)[1]) from None
    modbus = _modbus_sources(r, doc.get("modbus", []), site)
    influx = _influx(r, doc["influx"]) if "influx" in doc else None
    opcua = _opcua_sources(r, doc.get("opcua", []), site, {m.twin for m in modbus})
    return Scenario(path, site, profiles, tariffs, list(fee_items), injections, randoms,
                    INTERVALS[interval], start, days, residents, list(apportion), modbus, influx, opcua)


def _opcua_sources(r: _Reader, raw: Any, site: Site, on_modbus: set[str]) -> list[OpcUaSource]:
    """[[opcua]] tables: a twin, its server's opc.tcp:// url, `nodes` mapping reported
    fields to node ids, and optional `methods` mapping actions to [object, method] ids."""
    if not isinstance(raw, list):
        raise r.fail(("opcua",), "must be an array of tables: [[opcua]]")
    kinds = {t.id: t.kind for t in site.twins}
    out: list[OpcUaSource] = []
    seen: set[str] = set()
    for i, table in enumerate(raw):
        where = ("opcua", i)
        table = r.table(table, where, ("twin", "url", "nodes", "methods", "security", "username", "password_env"),
                        required=("twin", "url", "nodes"))
        twin = table["twin"]
        if twin not in kinds:
            raise r.fail((*where, "twin"), f"no twin {twin!r} in this site")
        if twin in seen or twin in on_modbus:
            raise r.fail((*where, "twin"), f"{twin} has a source already")
        seen.add(twin)
        url = table["url"]
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme != "opc.tcp" or not parts.hostname or not parts.port:
            raise r.fail((*where, "url"), f"{url!r}: use opc.tcp://HOST:PORT, for example opc.tcp://10.0.3.20:4840")
        fields = {name for name, _, _ in FIELDS[kinds[twin]]["reported"]}
        nodes = r.table(table["nodes"], (*where, "nodes"), tuple(table["nodes"]) if isinstance(
            table["nodes"], dict) else ())
        if not nodes:
            raise r.fail((*where, "nodes"), "map at least one field to a node id")
        for name, node in nodes.items():
            if name not in fields:
                raise r.fail((*where, "nodes", name), f"{kinds[twin].value} twins report no {name!r}; "
                                                      f"use {', '.join(sorted(fields))}")
            if not isinstance(node, str) or not re.match(NODE_ID_RE, node):
                raise r.fail((*where, "nodes", name),
                             f"{node!r} is not a node id like ns=2;s=Meter1.Energy or ns=3;i=1002")
        methods: dict[str, tuple[str, str]] = {}
        raw_methods = table.get("methods", {})
        actions = OPCUA_ACTIONS.get(kinds[twin].value, ())
        for action, pair in r.table(raw_methods, (*where, "methods"), actions).items():
            if not (isinstance(pair, list) and len(pair) == 2 and all(
                    isinstance(p, str) and re.match(NODE_ID_RE, p) for p in pair)):
                raise r.fail((*where, "methods", action), "give [object node id, method node id], "
                                                          'for example ["ns=2;s=Meter1", "ns=2;s=Meter1.Trip"]')
            methods[action] = (pair[0], pair[1])
        security = r.get(table, "security", where, str, "none", check=("none", "sign_encrypt").__contains__,
                         rule="security is 'none' or 'sign_encrypt' (Basic256Sha256)")
        username = r.get(table, "username", where, str, None)
        password_env = r.get(table, "password_env", where, str, None)
        if (username is None) != (password_env is None):
            raise r.fail((*where, "username" if username is None else "password_env"),
                         "give username and password_env together (the password stays in the environment)")
        source = OpcUaSource(twin, url, dict(nodes), methods, security, username, password_env)
        first = next((o for o in out if o.url == url), None)
        if first is not None and (first.security, first.username, first.password_env) != (
                security, username, password_env):
            raise r.fail((*where, "url"), f"{url} is used with other security or credentials by {first.twin}: "
                                          "one connection per server, one way to log in")
        out.append(source)
    return out


def _influx(r: _Reader, raw: Any) -> InfluxSettings:
    where = ("influx",)
    raw = r.table(raw, where, ("url", "token", "org", "bucket"), required=("url",))
    values = {key: r.get(raw, key, where, str) for key in ("url", "token", "org", "bucket") if key in raw}
    try:
        return InfluxSettings(**values)
    except ValueError as err:
        field = "url" if str(err).startswith("url") else ("org" if values.get("org") == "" else "bucket")
        raise r.fail((*where, field), str(err)) from None


def parse_modbus_url(twin: str, url: str, model: str) -> ModbusSource:
    """`modbus://HOST:PORT/UNIT`, `modbus+tls://HOST:PORT/UNIT` or
    `rtu:///dev/ttyUSB0/UNIT?baud=9600` as a source; ValueError says what is wrong."""
    parts = urlsplit(url)
    segments = parts.path.rstrip("/").split("/")
    try:
        unit = int(segments[-1])
    except ValueError:
        unit = -1
    if not 1 <= unit <= 247:
        raise ValueError(f"{url!r}: end with the unit id 1..247, for example modbus://10.0.3.17:502/1")
    if parts.scheme in ("modbus", "modbus+tls"):
        if not parts.hostname:
            raise ValueError(f"{url!r}: name the gateway, for example modbus://10.0.3.17:502/1")
        return ModbusSource(twin, parts.hostname, parts.port or 502, unit, model, tls=parts.scheme == "modbus+tls")
    if parts.scheme == "rtu":
        device = "/".join(segments[:-1])
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        baud = int(query.get("baud", "9600")) if query.get("baud", "9600").isdigit() else 0
        if not device or baud <= 0:
            raise ValueError(f"{url!r}: use rtu:///dev/ttyUSB0/UNIT?baud=9600")
        return ModbusSource(twin, device, 0, unit, model, baud=baud)
    raise ValueError(f"{url!r}: the scheme is modbus://, modbus+tls:// or rtu://")


def _modbus_sources(r: _Reader, raw: Any, site: Site) -> list[ModbusSource]:
    if not isinstance(raw, list):
        raise r.fail(("modbus",), "must be an array of tables: [[modbus]]")
    metered = {t.id for t in site.twins if t.metered}
    out, seen = [], set()
    for i, table in enumerate(raw):
        where = ("modbus", i)
        table = r.table(table, where, ("twin", "url", "model"), required=("twin", "url", "model"))
        twin = table["twin"]
        if twin not in metered:
            raise r.fail((*where, "twin"), f"no metered twin {twin!r} in this site")
        if twin in seen:
            raise r.fail((*where, "twin"), f"{twin} has a Modbus source already")
        seen.add(twin)
        try:
            source = parse_modbus_url(twin, str(table["url"]), str(table["model"]))
        except ValueError as err:
            raise r.fail((*where, "url"), str(err)) from None
        try:
            load_map(source.model)
        except MapError as err:
            raise r.fail((*where, "model"), str(err)) from None
        out.append(source)
    return out


def _fee_path(message: str) -> tuple[Any, ...]:
    """("fee_items", 0, "name") from a FeeError's "fee_items[0].name: ..."."""
    match = re.match(r"(\w+)\[(\d+)\](?:\.(\w+))?", message)
    if match is None:
        return ("fee_items",)
    table, index, field = match.groups()
    return (table, int(index), field) if field else (table, int(index))


def _residents(r: _Reader, raw: Any) -> Residents:
    where = ("residents",)
    raw = r.table(raw, where, RESIDENT_KEYS)
    values: dict[str, Any] = {}
    for key in ("opening_yuan", "topup_below_yuan"):
        if key in raw:
            pair = raw[key]
            if not (isinstance(pair, list) and len(pair) == 2 and all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in pair)):
                raise r.fail((*where, key), "give [low, high] in yuan, for example [50, 300]")
            values[key] = (float(pair[0]), float(pair[1]))
    if "topup_yuan" in raw:
        amounts = raw["topup_yuan"]
        if not (isinstance(amounts, list) and amounts and all(
                isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in amounts)):
            raise r.fail((*where, "topup_yuan"), "give a list of positive amounts, for example [100, 200]")
        values["topup_yuan"] = tuple(float(v) for v in amounts)
    values["topup_delay_hours"] = r.get(raw, "topup_delay_hours", where, float, 18.0, check=lambda v: v > 0,
                                        rule="topup_delay_hours must be > 0")
    values["billing"] = r.get(raw, "billing", where, str, "meter", check=("meter", "platform").__contains__,
                              rule="billing is 'meter' (the meter holds the credit) or 'platform' (the ledger does)")
    try:
        return Residents(**values)
    except ValueError as err:
        raise r.fail(where, str(err)) from None


def _start(r: _Reader, table: dict[str, Any], where: tuple[Any, ...]) -> datetime | None:
    if "start" not in table:
        return None
    value = table["start"]
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).replace(tzinfo=None)
        except ValueError:
            pass
    raise r.fail((*where, "start"), f"must be a date like 2026-01-01, not {value!r}")


def _profiles(r: _Reader, table: Any) -> dict[str, ProfileClass]:
    r.table(table, ("profiles",), tuple(table) if isinstance(table, dict) else ())
    out: dict[str, ProfileClass] = {}
    for name, raw in table.items():
        where = ("profiles", name)
        raw = r.table(raw, where, PROFILE_KEYS)
        values: dict[str, Any] = {}
        for key in raw:
            if key == "shape":
                values[key] = r.get(raw, key, where, str, check=("household", "shop", "office").__contains__,
                                    rule="shape is household, shop or office")
            elif key in PROFILE_RULES:
                check, rule = PROFILE_RULES[key]
                values[key] = r.get(raw, key, where, float, check=check, rule=rule)
            elif key == "seasonal":
                seasonal = raw[key]
                if not isinstance(seasonal, list) or len(seasonal) != 12 or not all(
                        isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in seasonal):
                    raise r.fail((*where, key), "seasonal holds 12 positive month factors, January first")
                values[key] = tuple(float(v) for v in seasonal)
            else:
                values[key] = r.get(raw, key, where, float)
        try:
            out[name] = ProfileClass(name, **values)
        except ValueError as err:
            raise r.fail(where, str(err)) from None
    return out


def _room_overrides(r: _Reader, rooms: Any) -> dict[str, tuple[dict[str, Any], tuple[Any, ...]]]:
    if not isinstance(rooms, list):
        raise r.fail(("rooms",), "must be an array of tables: [[rooms]]")
    out: dict[str, tuple[dict[str, Any], tuple[Any, ...]]] = {}
    for i, raw in enumerate(rooms):
        where = ("rooms", i)
        raw = r.table(raw, where, ROOM_KEYS, required=("id",))
        room_id = r.get(raw, "id", where, str)
        if room_id in out:
            raise r.fail((*where, "id"), f"room {room_id} is overridden twice")
        out[room_id] = (raw, where)
    return out


class _Builder:
    """Builds buildings, rooms, twins and accounts from the blocks, in the documented order."""

    def __init__(self, r: _Reader, site: Site, profiles: dict[str, ProfileClass],
                 tariffs: dict[str, Any], overrides: dict[str, tuple[dict[str, Any], tuple[Any, ...]]]) -> None:
        self.r, self.site, self.profiles, self.tariffs = r, site, profiles, tariffs
        self.overrides = dict(overrides)
        self.used_overrides: set[str] = set()
        self.accounts: dict[str, Account] = {}
        self.building_ids: set[str] = set()
        self.twin_ids: set[str] = set()

    def _profile(self, name: str, where: tuple[Any, ...]) -> str:
        if name not in self.profiles and name != "household":
            known = ", ".join(["household", *sorted(self.profiles)])
            raise self.r.fail(where, f"profile {name!r} is not defined; known: {known}")
        return name

    def _tariff(self, table: dict[str, Any], where: tuple[Any, ...]) -> str | None:
        name = self.r.get(table, "tariff", where, str)
        if name is not None and name not in self.tariffs:
            known = ", ".join(sorted(self.tariffs)) or "none defined"
            raise self.r.fail((*where, "tariff"), f"tariff {name!r} is not defined in [tariffs]; known: {known}")
        return name

    def _meter_table(self, value: Any, where: tuple[Any, ...], keys: tuple[str, ...]) -> dict[str, Any] | None:
        if value is None or value is False:
            return None
        if value is True:
            return {}
        return self.r.table(value, where, keys)

    def block(self, raw: Any, where: tuple[Any, ...]) -> None:
        r = self.r
        raw = r.table(raw, where, BLOCK_KEYS, required=("floors", "rooms_per_floor"))
        if ("id" in raw) == ("ids" in raw):
            raise r.fail(where, "give exactly one of id = \"B01\" or ids = \"B01..B06\"")
        if "ids" in raw:
            try:
                ids = expand_ids(r.get(raw, "ids", where, str))
            except ValueError as err:
                raise r.fail((*where, "ids"), str(err)) from None
        else:
            ids = [r.get(raw, "id", where, str)]
        floors = r.get(raw, "floors", where, int, check=lambda v: 0 < v <= 200, rule="floors must be 1..200")
        per_floor = r.get(raw, "rooms_per_floor", where, int, check=lambda v: 0 < v <= 99,
                          rule="rooms_per_floor must be 1..99")
        areas = raw.get("room_area_m2", 90.0)
        if isinstance(areas, list):
            if len(areas) != per_floor or not all(isinstance(a, int | float) and not isinstance(a, bool) and a > 0
                                                  for a in areas):
                raise r.fail((*where, "room_area_m2"), f"give one positive area per room number ({per_floor})")
            areas = [float(a) for a in areas]
        else:
            area = r.get(raw, "room_area_m2", where, float, 90.0, check=lambda v: v > 0,
                         rule="room_area_m2 must be > 0")
            areas = [area] * per_floor
        use = r.get(raw, "use", where, str, "flat", check=("flat", "shop").__contains__, rule="use is flat or shop")
        profile = self._profile(r.get(raw, "profile", where, str, "household"), (*where, "profile"))
        vacant_share = r.get(raw, "vacant_share", where, float, 0.0, check=lambda v: 0 <= v < 1,
                             rule="vacant_share must be in [0, 1)")
        electric = self._meter_table(raw.get("electric"), (*where, "electric"), ELECTRIC_KEYS)
        water = self._meter_table(raw.get("water"), (*where, "water"), WATER_KEYS)
        e_args = self._electric_args(electric, (*where, "electric")) if electric is not None else None
        w_args = self._water_args(water, (*where, "water")) if water is not None else None
        master = self._meter_table(raw.get("master"), (*where, "master"), MASTER_KEYS)
        lifts = self._meter_table(raw.get("elevators"), (*where, "elevators"), ELEVATOR_KEYS)
        shared = raw.get("shared", [])
        if not isinstance(shared, list):
            raise r.fail((*where, "shared"), "must be an array of tables: [[buildings.shared]]")
        circuits = [self._circuit(c, (*where, "shared", i)) for i, c in enumerate(shared)]
        name_pattern = r.get(raw, "name", where, str, "")
        for bid in ids:
            if bid in self.building_ids:
                raise r.fail((*where, "ids" if "ids" in raw else "id"), f"building {bid} is defined twice")
            self.building_ids.add(bid)
            try:
                building = Building(bid, name_pattern.replace("{id}", bid))
            except ValueError as err:
                raise r.fail((*where, "ids" if "ids" in raw else "id"), str(err)) from None
            self.site.buildings.append(building)
            self._building_twins(building, master, lifts, circuits, where, e_args, w_args)
            for f in range(1, floors + 1):
                floor = Floor(f)
                building.floors.append(floor)
                for n in range(1, per_floor + 1):
                    room_id = f"{bid}-{f:02d}-{n:02d}"
                    self._room(floor, building, room_id, f, areas[n - 1], use, profile, vacant_share,
                               e_args, w_args)

    def _electric_args(self, table: dict[str, Any], where: tuple[Any, ...]) -> dict[str, Any]:
        return {
            "phases": self.r.get(table, "phases", where, int, 1, check=(1, 3).__contains__,
                                 rule="phases must be 1 or 3"),
            "tariff": self._tariff(table, where),
            "prepaid": self.r.get(table, "prepaid", where, bool, True),
        }

    def _water_args(self, table: dict[str, Any], where: tuple[Any, ...]) -> dict[str, Any]:
        return {
            "tariff": self._tariff(table, where),
            "prepaid": self.r.get(table, "prepaid", where, bool, True),
            "valve": self.r.get(table, "valve", where, bool, False),
        }

    def _circuit(self, raw: Any, where: tuple[Any, ...]) -> dict[str, Any]:
        r = self.r
        raw = r.table(raw, where, SHARED_KEYS, required=("name", "power_kw"))
        name = r.get(raw, "name", where, str, check=lambda v: re.fullmatch(r"[A-Za-z0-9_\-]+", v),
                     rule="name uses letters, digits, '-' and '_'")
        schedule = r.get(raw, "schedule", where, str, "always")
        try:
            parse_schedule(schedule)
        except ValueError as err:
            raise r.fail((*where, "schedule"), str(err)) from None
        return {
            "name": name,
            "circuit": r.get(raw, "circuit", where, str, "other", check=CIRCUITS.__contains__,
                             rule=f"circuit is one of {', '.join(CIRCUITS)}"),
            "power_kw": r.get(raw, "power_kw", where, float, check=lambda v: v > 0, rule="power_kw must be > 0"),
            "schedule": schedule,
            "duty": r.get(raw, "duty", where, float, 1.0, check=lambda v: 0 < v <= 1, rule="duty must be in (0, 1]"),
        }

    def _building_twins(self, building: Building, master: dict[str, Any] | None, lifts: dict[str, Any] | None,
                        circuits: list[dict[str, Any]], where: tuple[Any, ...],
                        e_args: dict[str, Any] | None, w_args: dict[str, Any] | None) -> None:
        r, bid = self.r, building.id
        specs: list[TwinSpec] = []
        mm = mw = None
        if master is not None:
            mwhere = (*where, "master")
            loss = {
                "loss_pct": r.get(master, "loss_pct", mwhere, float, 2.0, check=lambda v: 0 <= v < 50,
                                  rule="loss_pct must be in [0, 50)"),
                "fixed_loss_w": r.get(master, "fixed_loss_w", mwhere, float, 0.0, check=lambda v: v >= 0,
                                      rule="fixed_loss_w must be >= 0"),
            }
            if r.get(master, "electric", mwhere, bool, True):
                mm = f"{bid}.mm"
                specs.append(TwinSpec(mm, Kind.ELECTRIC_METER, bid, role="master", phases=3, prepaid=False,
                                      params=dict(loss)))
            if r.get(master, "water", mwhere, bool, False):
                mw = f"{bid}.mw"
                specs.append(TwinSpec(mw, Kind.WATER_METER, bid, role="master", prepaid=False, params=dict(loss)))
        self.mm, self.mw = mm, mw
        if lifts is not None:
            lw = (*where, "elevators")
            count = r.get(lifts, "count", lw, int, 1, check=lambda v: 0 <= v <= 20, rule="count must be 0..20")
            params = {
                "trip_kwh": r.get(lifts, "trip_kwh", lw, float, 0.06, check=lambda v: v > 0, rule="must be > 0"),
                "standby_w": r.get(lifts, "standby_w", lw, float, 250.0, check=lambda v: v >= 0, rule="must be >= 0"),
                "trips_per_day": r.get(lifts, "trips_per_day", lw, float, 300.0, check=lambda v: v >= 0,
                                       rule="must be >= 0"),
            }
            specs += [TwinSpec(f"{bid}.el{n}", Kind.ELEVATOR, bid, master=mm, prepaid=False, params=dict(params))
                      for n in range(1, count + 1)]
        names: set[str] = set()
        for i, c in enumerate(circuits):
            if c["name"] in names:
                raise r.fail((*where, "shared", i, "name"), f"circuit {c['name']!r} appears twice")
            names.add(c["name"])
            params = {k: v for k, v in c.items() if k != "name"}
            specs.append(TwinSpec(f"{bid}.sc-{c['name']}", Kind.SHARED_CIRCUIT, bid, master=mm, prepaid=False,
                                  params=params))
        for spec in specs:
            self._add(spec)
            building.twins.append(spec.id)

    def _room(self, floor: Floor, building: Building, room_id: str, f: int, area: float, use: str,
              profile: str, vacant_share: float, e_args: dict[str, Any] | None,
              w_args: dict[str, Any] | None) -> None:
        vacant = vacant_share > 0 and (zlib.crc32(room_id.encode()) % 10_000) < vacant_share * 10_000
        account: str | None = None
        override = self.overrides.get(room_id)
        if override is not None:
            raw, where = override
            self.used_overrides.add(room_id)
            r = self.r
            if "profile" in raw:
                profile = self._profile(r.get(raw, "profile", where, str), (*where, "profile"))
            area = r.get(raw, "area_m2", where, float, area, check=lambda v: v > 0, rule="area_m2 must be > 0")
            use = r.get(raw, "use", where, str, use, check=("flat", "shop").__contains__, rule="use is flat or shop")
            vacant = r.get(raw, "vacant", where, bool, vacant)
            account = r.get(raw, "account", where, str, None)
            if "electric" in raw:
                e_args = self._merge(e_args, raw["electric"], (*where, "electric"), ELECTRIC_KEYS,
                                     self._electric_args)
            if "water" in raw:
                w_args = self._merge(w_args, raw["water"], (*where, "water"), WATER_KEYS, self._water_args)
        if vacant:
            account, profile = None, "vacant"
        elif account is None:
            account = f"A-{room_id}"
        room = Room(room_id, building.id, f, area_m2=area, use=use, account=account)
        floor.rooms.append(room)
        specs: list[TwinSpec] = []
        if e_args is not None:
            specs.append(TwinSpec(f"{room_id}.em", Kind.ELECTRIC_METER, building.id, f, room_id, account,
                                  self.mm, phases=e_args["phases"], prepaid=e_args["prepaid"], profile=profile,
                                  tariff=e_args["tariff"]))
        if w_args is not None:
            wm = f"{room_id}.wm"
            specs.append(TwinSpec(wm, Kind.WATER_METER, building.id, f, room_id, account, self.mw,
                                  prepaid=w_args["prepaid"], profile=profile, tariff=w_args["tariff"]))
            if w_args["valve"]:
                specs.append(TwinSpec(f"{room_id}.vl", Kind.VALVE, building.id, f, room_id, account,
                                      prepaid=w_args["prepaid"], valve_of=wm))
        for spec in specs:
            self._add(spec)
            room.twins.append(spec.id)
        if account is not None:
            holder = self.accounts.get(account)
            if holder is None:
                holder = self.accounts[account] = Account(account, f"Resident of {room_id}")
                self.site.accounts.append(holder)
            holder.rooms.append(room_id)
            holder.meters += [s.id for s in specs if s.kind is not Kind.VALVE]
            holder.prepaid = holder.prepaid and all(s.prepaid for s in specs if s.kind is not Kind.VALVE)

    def _merge(self, base: dict[str, Any] | None, value: Any, where: tuple[Any, ...], keys: tuple[str, ...],
               parse: Any) -> dict[str, Any] | None:
        if value is False:
            return None
        table = self._meter_table(value, where, keys) or {}
        parsed = parse(table, where)
        merged = dict(base or parse({}, where))
        merged.update({k: parsed[k] for k in table})
        return merged

    def _add(self, spec: TwinSpec) -> None:
        self.site.twins.append(spec)
        self.twin_ids.add(spec.id)

    def finish(self) -> None:
        unused = set(self.overrides) - self.used_overrides
        if unused:
            room_id = sorted(unused)[0]
            raise self.r.fail(self.overrides[room_id][1], f"room {room_id} does not exist in any [[buildings]] block")
        if len(self.twin_ids) != len(self.site.twins):
            seen: set[str] = set()
            for t in self.site.twins:
                if t.id in seen:
                    raise self.r.fail(("buildings",), f"twin id {t.id} is produced twice")
                seen.add(t.id)
        try:
            self.site.check()
        except ValueError as err:
            raise self.r.fail(("buildings",), str(err)) from None


def _injections(r: _Reader, raw: Any, twin_ids: set[str]) -> list[Injection]:
    if not isinstance(raw, list):
        raise r.fail(("inject",), "must be an array of tables: [[inject]]")
    out = []
    for i, table in enumerate(raw):
        where = ("inject", i)
        if not isinstance(table, dict):
            raise r.fail(where, "must be a table")
        kind = r.get(table, "kind", where, str)
        if kind is None:
            raise r.fail(where, "missing required key 'kind'")
        if kind not in INJECTION_PARAMS:
            raise r.fail((*where, "kind"), f"unknown kind {kind!r}; known: {', '.join(INJECTION_PARAMS)}")
        r.table(table, where, INJECT_KEYS + tuple(INJECTION_PARAMS[kind]), required=("twin", "kind", "start"))
        twin = r.get(table, "twin", where, str)
        if twin not in twin_ids:
            raise r.fail((*where, "twin"), f"no twin {twin!r} in this site (ids look like B01-03-02.em)")
        times = {}
        for key in ("start", "end"):
            if key in table:
                try:
                    times[key] = parse_when(table[key])
                except ValueError as err:
                    raise r.fail((*where, key), str(err)) from None
        params = {k: r.get(table, k, where, float) for k in INJECTION_PARAMS[kind] if k in table}
        try:
            out.append(Injection(twin, kind, times["start"], times.get("end"), params))
        except ValueError as err:
            raise r.fail(where, str(err)) from None
    return out


def _randoms(r: _Reader, raw: Any) -> list[RandomInjections]:
    if not isinstance(raw, list):
        raise r.fail(("random_inject",), "must be an array of tables: [[random_inject]]")
    out = []
    for i, table in enumerate(raw):
        where = ("random_inject", i)
        table = r.table(table, where, RANDOM_KEYS, required=("kinds",))
        kinds = table["kinds"]
        if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
            raise r.fail((*where, "kinds"), "must be a list of kind names")
        for k in kinds:
            if k not in INJECTION_PARAMS:
                raise r.fail((*where, "kinds"), f"unknown kind {k!r}; known: {', '.join(INJECTION_PARAMS)}")
        values = {key: r.get(table, key, where, int if key in ("per_kind", "first_day", "last_day") else float)
                  for key in RANDOM_KEYS[1:] if key in table}
        try:
            out.append(RandomInjections(tuple(kinds), **values))
        except ValueError as err:
            raise r.fail(where, str(err)) from None
    return out
