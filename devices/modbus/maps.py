"""Register maps as data: one TOML file per device model in devices/modbus/maps/.

A map names the model, the twin kind it stands for, and every point::

    [model]
    name = "metertwin-pm1"          # the name scenarios and gateways use
    kind = "electric_meter"         # twin kind: electric_meter, water_meter, elevator, shared_circuit
    description = "..."
    word_order = "big"              # default for 32/64-bit points: "big" (high word first) or "little"
    byte_order = "big"              # default: bytes within a register, "big" or "little"
    max_read = 125                  # registers per read request the device takes (bits: 8 x that)
    read_gaps = true                # may a request span registers no point uses?
    max_rate_per_h = 13.2           # the most a counter can advance in an hour (the rating: kW
                                    #   for kWh, m3/h for m3); a total jumping past it is flagged

    [[points]]
    name = "energy_total"           # unique in the map
    table = "holding"               # coil, discrete, holding or input
    address = 0                     # 0-BASED protocol address (register 40001 in 1-based docs is 0)
    type = "u32"                    # u16, i16, u32, i32, u64, f32, f64; bool for coil and discrete
    word_order = "big"              # optional: overrides the model's
    byte_order = "big"              # optional: overrides the model's
    scale = 0.01                    # engineering value = raw x scale
    unit = "kWh"
    min = 0                         # valid range of the engineering value (inclusive)
    max = 1e8
    access = "read"                 # "read" or "read-write" (a control point)
    field = "energy_kwh"            # the twin field it feeds (optional)
    twin = "self"                   # "self" or "valve": the unit's valve twin (water meters)
    counter = true                  # a running total: going backwards or jumping is flagged
    max_rate_per_h = 200            # optional, counters: overrides the model's

A map with overlapping points, an unknown type, table or field, a bad address or a type
that does not fit its table fails to load with a `MapError` naming the file and point.
`encode` and `decode` turn engineering values into registers and back; `plan_reads` cuts
a map's readable points into as few contiguous requests as the model allows.
"""

from __future__ import annotations

import math
import struct
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from twin.model import Kind
from twin.state import FIELDS

MAPS_DIR = Path(__file__).parent / "maps"
TABLES = ("coil", "discrete", "holding", "input")
BIT_TABLES = ("coil", "discrete")
TYPES = {"bool": 1, "u16": 1, "i16": 1, "u32": 2, "i32": 2, "u64": 4, "f32": 2, "f64": 4}  #: registers per type
_STRUCT = {"u16": "H", "i16": "h", "u32": "I", "i32": "i", "u64": "Q", "f32": "f", "f64": "d"}
ORDERS = ("big", "little")
KINDS = {Kind.ELECTRIC_METER, Kind.WATER_METER, Kind.ELEVATOR, Kind.SHARED_CIRCUIT}
MODEL_KEYS = ("name", "kind", "description", "word_order", "byte_order", "max_read", "read_gaps",
              "max_rate_per_h")
POINT_KEYS = ("name", "table", "address", "type", "word_order", "byte_order", "scale", "unit", "min", "max",
              "access", "field", "twin", "counter", "max_rate_per_h")


class MapError(ValueError):
    """A register map that breaks a rule; the message names the file and the point."""


@dataclass(frozen=True, slots=True)
class Point:
    """One point of a register map.

    Example: ``Point("energy_total", "holding", 0, "u32", scale=0.01, unit="kWh", field="energy_kwh")``
    """

    name: str  #: unique in its map
    table: str  #: coil, discrete, holding or input
    address: int  #: 0-based protocol address of its first register (or bit)
    type: str  #: u16, i16, u32, i32, u64, f32, f64, or bool
    scale: float = 1.0  #: engineering value = raw x scale
    unit: str = ""  #: engineering unit
    low: float = -math.inf  #: smallest valid engineering value
    high: float = math.inf  #: largest valid engineering value
    access: str = "read"  #: "read" or "read-write"
    field: str | None = None  #: twin field it feeds, if any
    twin: str = "self"  #: "self", or "valve" for the unit's valve twin
    counter: bool = False  #: a running total (backwards or jumps are flagged)
    max_rate_per_h: float = math.inf  #: counters: the most it can advance per hour
    word_order: str = "big"  #: high word first ("big") or last
    byte_order: str = "big"  #: bytes within a register

    def __post_init__(self) -> None:
        if self.table not in TABLES:
            raise ValueError(f"table must be one of {', '.join(TABLES)}, not {self.table!r}")
        if self.type not in TYPES:
            raise ValueError(f"type must be one of {', '.join(TYPES)}, not {self.type!r}")
        if (self.table in BIT_TABLES) != (self.type == "bool"):
            raise ValueError(f"a {self.table} point is {'bool' if self.table in BIT_TABLES else 'not bool'}")
        if not 0 <= self.address or self.address + self.size > 65536:
            raise ValueError(f"0 <= address and address + {self.size} registers <= 65536, not {self.address}")
        if self.access not in ("read", "read-write"):
            raise ValueError(f"access is 'read' or 'read-write', not {self.access!r}")
        if self.access == "read-write" and self.table in ("discrete", "input"):
            raise ValueError(f"a {self.table} point cannot be written: use coil or holding")
        if self.word_order not in ORDERS or self.byte_order not in ORDERS:
            raise ValueError("word_order and byte_order are 'big' or 'little'")
        if self.scale == 0 or not math.isfinite(self.scale):
            raise ValueError("scale must be a finite number other than 0")
        if self.low > self.high:
            raise ValueError(f"min {self.low} is above max {self.high}")

    @property
    def size(self) -> int:
        """Registers (or bits) it takes."""
        return TYPES[self.type]

    @property
    def writable(self) -> bool:
        """True for a control point."""
        return self.access == "read-write"

    def valid(self, value: float) -> bool:
        """True when a decoded value is a number inside the valid range."""
        return not math.isnan(value) and self.low <= value <= self.high


@dataclass(frozen=True, slots=True)
class Read:
    """One read request: `count` registers (or bits) of `table` from `address`."""

    table: str  #: coil, discrete, holding or input
    address: int  #: first address
    count: int  #: registers or bits
    points: tuple[Point, ...]  #: the points it covers, by address


@dataclass(frozen=True)
class RegisterMap:
    """A device model's map. Example: ``load_map("sdm630")``."""

    name: str  #: model name
    kind: Kind  #: twin kind it stands for
    points: tuple[Point, ...]  #: every point, by table and address
    description: str = ""  #: what the device is
    max_read: int = 125  #: registers per request (bits: 16 x that, at most 2000)
    read_gaps: bool = True  #: requests may span unused registers
    path: str = ""  #: file it came from
    by_name: dict[str, Point] = field(default_factory=dict, compare=False)  #: points by name

    def __post_init__(self) -> None:
        self.by_name.update({p.name: p for p in self.points})

    def feeding(self, name: str, twin: str = "self") -> Point | None:
        """The point that reports a twin field: a read-only one when there is one, else the
        control point itself (read back)."""
        feeds = [p for p in self.points if p.field == name and p.twin == twin]
        reads = [p for p in feeds if not p.writable]
        chosen = reads or feeds
        return chosen[0] if chosen else None

    def polled(self) -> tuple[Point, ...]:
        """What a poll cycle reads: the point feeding each twin field (control points are
        read back only after a write)."""
        feeding = {self.feeding(p.field, p.twin) for p in self.points if p.field is not None}
        return tuple(p for p in self.points if p in feeding)

    def control(self, name: str, twin: str = "self") -> Point | None:
        """The control point that writes a twin field, if the model has one."""
        return next((p for p in self.points if p.field == name and p.twin == twin and p.writable), None)


# -- encoding ----------------------------------------------------------------------------


def _order_words(words: list[int], point: Point) -> list[int]:
    if point.byte_order == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    return words[::-1] if point.word_order == "little" else words


def encode(point: Point, value: float) -> list[int]:
    """Registers (or one bit, as 0/1) carrying an engineering value; ValueError if it
    does not fit the type."""
    if point.type == "bool":
        return [1 if value else 0]
    raw: float | int = value / point.scale
    if point.type[0] in "ui":  # whole numbers stay exact (a u64 counter past 2**53)
        raw = int(value) if isinstance(value, int) and point.scale == 1 else int(round(raw))
    try:
        packed = struct.pack(">" + _STRUCT[point.type], raw)
    except struct.error:
        raise ValueError(f"{point.name}: {value} does not fit {point.type} at scale {point.scale}") from None
    words = [int.from_bytes(packed[i:i + 2], "big") for i in range(0, len(packed), 2)]
    return _order_words(words, point)


def decode(point: Point, registers: list[int]) -> float:
    """The engineering value of a point from its registers (or bit)."""
    if point.type == "bool":
        return 1.0 if registers[0] else 0.0
    words = _order_words(list(registers[:point.size]), point)  # the same swap undoes itself
    packed = b"".join(w.to_bytes(2, "big") for w in words)
    raw = struct.unpack(">" + _STRUCT[point.type], packed)[0]
    return float(raw) * point.scale


# -- loading -----------------------------------------------------------------------------


def _number(table: dict[str, Any], key: str, where: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MapError(f"{where}: {key} must be a number, not {value!r}")
    return float(value)


def parse_map(doc: dict[str, Any], path: str = "<map>") -> RegisterMap:
    """A map from a parsed TOML document; MapError names the file and point."""
    model = doc.get("model")
    if not isinstance(model, dict):
        raise MapError(f"{path}: [model]: missing; a map starts with a [model] table")
    for key in model:
        if key not in MODEL_KEYS:
            raise MapError(f"{path}: [model].{key}: unknown key; known: {', '.join(MODEL_KEYS)}")
    name = model.get("name")
    if not isinstance(name, str) or not name:
        raise MapError(f"{path}: [model].name: give the model's name")
    try:
        kind = Kind(str(model.get("kind")))
    except ValueError:
        raise MapError(f"{path}: [model].kind: one of {', '.join(k.value for k in KINDS)}, "
                       f"not {model.get('kind')!r}") from None
    if kind not in KINDS:
        raise MapError(f"{path}: [model].kind: a map stands for a metered twin, not {kind.value}")
    word_order, byte_order = model.get("word_order", "big"), model.get("byte_order", "big")
    max_read = int(_number(model, "max_read", f"{path}: [model]", 125))
    max_rate = _number(model, "max_rate_per_h", f"{path}: [model]", math.inf)
    if not max_rate > 0:
        raise MapError(f"{path}: [model].max_rate_per_h: must be > 0")
    if not 1 <= max_read <= 125:
        raise MapError(f"{path}: [model].max_read: 1 to 125 registers, not {max_read}")
    points = []
    raw_points = doc.get("points")
    if not isinstance(raw_points, list) or not raw_points:
        raise MapError(f"{path}: [[points]]: a map needs at least one point")
    seen: set[str] = set()
    for i, table in enumerate(raw_points):
        pname = table.get("name") if isinstance(table, dict) else None
        where = f"{path}: point {pname!r}" if isinstance(pname, str) and pname else f"{path}: points[{i}]"
        if not isinstance(table, dict):
            raise MapError(f"{where}: a point is a table")
        for key in table:
            if key not in POINT_KEYS:
                raise MapError(f"{where}: unknown key {key!r}; known: {', '.join(POINT_KEYS)}")
        if not isinstance(pname, str) or not pname:
            raise MapError(f"{where}: give the point a name")
        if pname in seen:
            raise MapError(f"{where}: a second point with this name")
        seen.add(pname)
        address = table.get("address")
        if isinstance(address, bool) or not isinstance(address, int):
            raise MapError(f"{where}: address must be a whole number (0-based), not {address!r}")
        twin = table.get("twin", "self")
        target = Kind.VALVE if twin == "valve" else kind
        if twin not in ("self", "valve") or (twin == "valve" and kind is not Kind.WATER_METER):
            raise MapError(f"{where}: twin is 'self', or 'valve' on a water meter's map, not {twin!r}")
        fname = table.get("field")
        known = {n for face in ("reported", "desired") for n, _, _ in FIELDS[target][face]}
        if fname is not None and fname not in known:
            raise MapError(f"{where}: field {fname!r} is not a field of a {target.value}; "
                           f"known: {', '.join(sorted(known))}")
        try:
            point = Point(pname, str(table.get("table")), address, str(table.get("type", "u16")),
                          scale=_number(table, "scale", where, 1.0), unit=str(table.get("unit", "")),
                          low=_number(table, "min", where, -math.inf), high=_number(table, "max", where, math.inf),
                          access=str(table.get("access", "read")), field=fname, twin=twin,
                          counter=bool(table.get("counter", False)),
                          max_rate_per_h=_number(table, "max_rate_per_h", where, max_rate),
                          word_order=str(table.get("word_order", word_order)),
                          byte_order=str(table.get("byte_order", byte_order)))
        except ValueError as err:
            raise MapError(f"{where}: {err}") from None
        points.append(point)
    points.sort(key=lambda p: (TABLES.index(p.table), p.address))
    for a, b in zip(points, points[1:], strict=False):
        if a.table == b.table and b.address < a.address + a.size:
            raise MapError(f"{path}: point {b.name!r} overlaps {a.name!r} ({a.table} {a.address}..."
                           f"{a.address + a.size - 1})")
    return RegisterMap(name, kind, tuple(points), str(model.get("description", "")), max_read,
                       bool(model.get("read_gaps", True)), path)


def load_map_file(path: str | Path) -> RegisterMap:
    """A map from a TOML file; MapError names the file (and line of a syntax error)."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as err:
        raise MapError(f"{path}: {err}") from None
    except OSError as err:
        raise MapError(f"{path}: cannot read: {err.strerror}") from None
    return parse_map(doc, str(path))


@cache
def load_map(model: str) -> RegisterMap:
    """A shipped map by model name (the file devices/modbus/maps/<model>.toml), or a path."""
    candidate = Path(model)
    if candidate.suffix == ".toml" and candidate.exists():
        return load_map_file(candidate)
    path = MAPS_DIR / f"{model}.toml"
    if not path.exists():
        shipped = ", ".join(sorted(p.stem for p in MAPS_DIR.glob("*.toml")))
        raise MapError(f"no register map {model!r}; shipped: {shipped}; or give a path to a .toml map")
    return load_map_file(path)


def plan_reads(regmap: RegisterMap, points: tuple[Point, ...] | None = None, max_gap: int = 8) -> list[Read]:
    """`points` (default: all of the map's) in as few contiguous read requests as the map
    allows: points of one table merge while the span stays within `max_read` registers
    (16 x that for bits) and, where the device allows reading unused registers, gaps of at
    most `max_gap`. A request reads every point inside its span, asked for or not."""
    wanted = regmap.points if points is None else points
    reads: list[Read] = []
    for table in TABLES:
        inside = [p for p in wanted if p.table == table]
        if not inside:
            continue
        points_t = [p for p in regmap.points if p.table == table]
        limit = regmap.max_read * (16 if table in BIT_TABLES else 1)
        gap_ok = max_gap if regmap.read_gaps else 0
        group: list[Point] = []
        for p in inside:
            if group:
                start, end = group[0].address, group[-1].address + group[-1].size
                # registers between that no point uses: read only where the device allows it
                unused = p.address - end - sum(q.size for q in points_t if end <= q.address < p.address)
                if unused <= gap_ok and p.address + p.size - start <= limit:
                    group.append(p)
                    continue
                reads.append(_read(table, group, points_t))
            group = [p]
        if group:
            reads.append(_read(table, group, points_t))
    return reads


def _read(table: str, group: list[Point], points_t: list[Point]) -> Read:
    """One request spanning `group`, carrying every point of the table inside the span."""
    start, end = group[0].address, group[-1].address + group[-1].size
    return Read(table, start, end - start, tuple(p for p in points_t if start <= p.address and
                                                 p.address + p.size <= end))


__all__ = ["MAPS_DIR", "MapError", "Point", "Read", "RegisterMap", "decode", "encode", "load_map", "load_map_file",
           "parse_map", "plan_reads"]
