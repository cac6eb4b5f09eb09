"""What a loaded scenario holds: the site's asset model plus everything the simulated
world needs to drive it (load-profile classes, building equipment, injections).

`scenarios.loader.load_scenario(path)` reads a TOML file into a `Scenario`. Records here
check their own rules in `__post_init__` and raise ValueError stating the rule; the loader
turns that into a `ScenarioError` naming file, line and field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from twin.model import Site

#: Fault kinds the world injects, and the twin kinds each applies to.
FAULT_KINDS: dict[str, tuple[str, ...]] = {
    "offline": ("electric_meter", "water_meter", "elevator", "shared_circuit"),
    "stuck": ("electric_meter", "water_meter"),
    "backwards": ("electric_meter", "water_meter"),
    "jump": ("electric_meter", "water_meter"),
    "leak": ("water_meter",),
    "valve_stuck_open": ("water_meter",),
    "elevator_drift": ("elevator",),
    "off_schedule": ("shared_circuit",),
}
#: Theft kinds (Jokar et al. 2016, h1..h6) plus a physical bypass; electric meters only.
THEFT_KINDS: tuple[str, ...] = ("h1", "h2", "h3", "h4", "h5", "h6", "bypass")

#: Parameters each injection kind accepts, with defaults. Keys not listed are refused.
INJECTION_PARAMS: dict[str, dict[str, float]] = {
    "offline": {},
    "stuck": {},
    "backwards": {"kwh_per_interval": 0.05},  # register runs back by this much each interval
    "jump": {"jump": 500.0},  # one jump of the register (kWh or m3) at the start
    "leak": {"flow_lph": 15.0},  # continuous extra flow, litres per hour
    "valve_stuck_open": {},  # the valve reports closed but water still flows
    "elevator_drift": {"growth_per_day": 0.03},  # energy per trip grows by this share a day
    "off_schedule": {},  # the circuit stays on outside its schedule
    "h1": {"factor": -1.0},  # -1: drawn from [0.1, 0.8]
    "h2": {"off_start_h": -1.0, "off_hours": -1.0},  # -1: drawn at random
    "h3": {},
    "h4": {},
    "h5": {},
    "h6": {},
    "bypass": {"share": -1.0},  # share of the load hidden from the meter; -1: [0.3, 0.7]
}


@dataclass(frozen=True, slots=True)
class When:
    """A point in simulated time: absolute (site-local datetime) or an offset from the
    simulation start. Example: ``When(offset=timedelta(days=2, hours=20))``."""

    at: datetime | None = None  #: naive site-local datetime, or None
    offset: timedelta | None = None  #: offset from the simulation start, or None

    def __post_init__(self) -> None:
        if (self.at is None) == (self.offset is None):
            raise ValueError("a time is either absolute ('2026-01-03T20:00') or relative ('2d 20h')")
        if self.offset is not None and self.offset < timedelta(0):
            raise ValueError("a relative time must not be negative")

    def resolve(self, start: datetime) -> datetime:
        """The site-local datetime this names, for a simulation starting at `start`."""
        return self.at if self.at is not None else start + self.offset  # type: ignore[operator]


@dataclass(frozen=True, slots=True)
class Injection:
    """A fault or theft to inject into one twin, from `start` to `end` (end None: to the
    end of the run). Example: ``Injection("B01-07-03.em", "h1", When(offset=timedelta(days=5)),
    None, {"factor": 0.4})``."""

    twin: str  #: twin id
    kind: str  #: a key of FAULT_KINDS or a member of THEFT_KINDS
    start: When  #: when it begins
    end: When | None = None  #: when it ends, None for the end of the run
    params: dict[str, float] = field(default_factory=dict)  #: see INJECTION_PARAMS

    def __post_init__(self) -> None:
        if self.kind not in INJECTION_PARAMS:
            known = ", ".join(INJECTION_PARAMS)
            raise ValueError(f"unknown injection kind {self.kind!r}; known: {known}")
        unknown = set(self.params) - set(INJECTION_PARAMS[self.kind])
        if unknown:
            raise ValueError(f"{self.kind} takes no parameter {sorted(unknown)[0]!r}")


@dataclass(frozen=True, slots=True)
class RandomInjections:
    """Injections the world draws itself from the run's seed: `per_kind` twins for each of
    `kinds`, each starting on a random day in [first_day, last_day] of the run and lasting
    `min_days` to `max_days`. Example: ``RandomInjections(("h1", "leak"), per_kind=3)``."""

    kinds: tuple[str, ...]  #: injection kinds to draw
    per_kind: int = 1  #: how many twins of each kind
    first_day: int = 1  #: earliest start day (0 is the first day of the run)
    last_day: int = 20  #: latest start day
    min_days: float = 3.0  #: shortest duration, days
    max_days: float = 10.0  #: longest duration, days

    def __post_init__(self) -> None:
        for kind in self.kinds:
            if kind not in INJECTION_PARAMS:
                raise ValueError(f"unknown injection kind {kind!r}")
        if self.per_kind < 0:
            raise ValueError("per_kind must be >= 0")
        if not 0 <= self.first_day <= self.last_day:
            raise ValueError("0 <= first_day <= last_day")
        if not 0 < self.min_days <= self.max_days:
            raise ValueError("0 < min_days <= max_days")


@dataclass(frozen=True, slots=True)
class ProfileClass:
    """How one class of consumer uses electricity and water.

    Example: ``ProfileClass("household", shape="household", monthly_kwh=220,
    water_m3_month=10)``
    """

    name: str  #: name used by rooms
    shape: str = "household"  #: daily shape: "household", "shop" or "office"
    monthly_kwh: float = 220.0  #: mean electricity per 30 days in spring months
    water_m3_month: float = 10.0  #: mean water per 30 days
    spread: float = 0.35  #: sigma of the lognormal size of a household around the mean
    daily_cv: float = 0.3  #: day-to-day variation of one household's energy
    away_prob: float = 0.04  #: chance a household is away on a given day
    seasonal: tuple[float, ...] = (1.25, 1.2, 1.05, 1.0, 1.05, 1.35, 1.7, 1.75, 1.3, 1.0, 1.05, 1.2)
    #: ^ month factors January..December on electricity (air conditioning, heating)

    def __post_init__(self) -> None:
        if self.shape not in ("household", "shop", "office"):
            raise ValueError(f"shape must be 'household', 'shop' or 'office', not {self.shape!r}")
        if not self.monthly_kwh >= 0 or not self.water_m3_month >= 0:
            raise ValueError("monthly_kwh and water_m3_month must be >= 0")
        if not 0 <= self.daily_cv <= 2 or not 0 <= self.spread <= 2:
            raise ValueError("0 <= daily_cv <= 2 and 0 <= spread <= 2")
        if not 0 <= self.away_prob < 1:
            raise ValueError("0 <= away_prob < 1")
        if len(self.seasonal) != 12 or min(self.seasonal) <= 0:
            raise ValueError("seasonal holds 12 positive month factors, January first")


@dataclass(frozen=True, slots=True)
class Residents:
    """How simulated residents of prepaid flats behave when their meter holds the credit
    (meter billing: the meter deducts locally and trips its relay at zero).

    Example: ``Residents(opening_yuan=(50, 300), topup_below_yuan=(10, 60))``
    """

    opening_yuan: tuple[float, float] = (50.0, 300.0)  #: opening credit, drawn in this range
    topup_below_yuan: tuple[float, float] = (10.0, 60.0)  #: a resident's top-up trigger, drawn
    topup_delay_hours: float = 18.0  #: median wait before topping up (lognormal; some wait days)
    topup_yuan: tuple[float, ...] = (100.0, 200.0, 300.0, 500.0)  #: amounts residents pay
    billing: str = "meter"  #: "meter": the meter holds the credit; "platform": the platform's ledger does

    def __post_init__(self) -> None:
        if self.billing not in ("meter", "platform"):
            raise ValueError("billing is 'meter' or 'platform'")
        for name in ("opening_yuan", "topup_below_yuan"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} is [low, high] with 0 <= low <= high")
        if not self.topup_delay_hours > 0:
            raise ValueError("topup_delay_hours must be > 0")
        if not self.topup_yuan or min(self.topup_yuan) <= 0:
            raise ValueError("topup_yuan lists positive amounts")


@dataclass(frozen=True, slots=True)
class ModbusSource:
    """A twin whose readings come from real (or separately emulated) Modbus hardware.
    Example: ``ModbusSource("B01.mm", "10.0.3.17", 502, 1, "sdm630")``."""

    twin: str  #: twin id
    host: str  #: gateway host, or the serial device for RTU
    port: int  #: TCP port (0 for serial)
    unit: int  #: Modbus unit id, 1..247
    model: str  #: register map name or path
    tls: bool = False  #: Modbus/TCP Security (modbus+tls://)
    baud: int = 0  #: serial baud rate (rtu://), 0 for TCP


@dataclass(frozen=True, slots=True)
class InfluxSettings:
    """Where the live platform sends readings and ledger movements (InfluxDB 2 write API;
    VictoriaMetrics speaks it too). Example: ``InfluxSettings("http://127.0.0.1:8428")``."""

    url: str  #: http(s)://HOST:PORT
    token: str = ""  #: API token ('' for none); METERTWIN_INFLUX_TOKEN keeps it out of the file
    org: str = "metertwin"  #: organisation
    bucket: str = "metertwin"  #: bucket

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url {self.url!r}: use http://HOST:PORT or https://HOST:PORT")
        if not self.org or not self.bucket:
            raise ValueError("org and bucket must not be empty")


#: What a mapped OPC UA method may carry out, by twin kind (the control core's operator actions).
OPCUA_ACTIONS: dict[str, tuple[str, ...]] = {"electric_meter": ("relay_open", "relay_close"),
                                              "valve": ("valve_open", "valve_close")}
#: A node id as OPC UA writes it: ns=2;s=Meter1.Energy, ns=3;i=1002, i=2258, ns=2;g=<uuid>, ns=2;b=<base64>.
NODE_ID_RE = r"^(ns=\d+;)?(i=\d+|s=.+|g=[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}|b=.+)$"


@dataclass(frozen=True, slots=True)
class OpcUaSource:
    """A twin kept in sync from an external OPC UA server: its reported fields follow the
    mapped nodes; a command writes the node mapped to its field, or calls the mapped method.
    Example: ``OpcUaSource("B01.mm", "opc.tcp://10.0.3.20:4840", {"energy_kwh": "ns=2;s=M1.Energy"})``."""

    twin: str  #: twin id
    url: str  #: opc.tcp://HOST:PORT[/path]
    nodes: dict[str, str]  #: reported field -> node id
    methods: dict[str, tuple[str, str]] = field(default_factory=dict)  #: action -> (object node id, method node id)
    security: str = "none"  #: "none", or "sign_encrypt" (Basic256Sha256 with a client certificate)
    username: str | None = None  #: user name to log in with; None: anonymous
    password_env: str | None = None  #: environment variable holding the password (never the file)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A loaded scenario: the site plus what drives its simulation."""

    path: str  #: file it came from
    site: Site  #: asset model, with every twin (params hold equipment figures)
    profiles: dict[str, ProfileClass]  #: load-profile classes by name
    tariffs: dict[str, dict[str, Any]]  #: tariff tables by name (billing reads them)
    fee_items: list[dict[str, Any]] = field(default_factory=list)  #: fee items, as written
    injections: list[Injection] = field(default_factory=list)  #: injections named in the file
    random_injections: list[RandomInjections] = field(default_factory=list)  #: drawn at run
    interval_s: int = 900  #: history interval, seconds
    start: datetime | None = None  #: default start (site-local), None: the CLI default
    days: float | None = None  #: default length of a run in days
    residents: Residents | None = None  #: simulated prepaid residents, None: meters hold no credit
    apportion: list[dict[str, Any]] = field(default_factory=list)  #: common-area apportionments, as written
    modbus: list[ModbusSource] = field(default_factory=list)  #: twins polled from Modbus hardware
    influx: InfluxSettings | None = None  #: the InfluxDB sink, None: off (the environment may still set it)
    opcua: list[OpcUaSource] = field(default_factory=list)  #: twins kept in sync from OPC UA servers
