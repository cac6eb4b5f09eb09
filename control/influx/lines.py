"""InfluxDB line protocol, built as strings (influxdb-client `Point` objects are 5 to 8
times slower).

A line is ``measurement,tag=value,... field=value,... timestamp``. Escaping follows the
line-protocol spec: in measurements, backslash, comma and space; in tag keys, tag values
and field keys, backslash, comma, equals sign and space; in string field values, backslash
and double quote. Newline, carriage return and tab cannot stand in a line, so they are
written as the two characters ``\\n``, ``\\r`` and ``\\t`` (influxdb-client does the same);
a backslash is always doubled, so ``\\n`` written for a newline and a real backslash before
an ``n`` stay apart. Tags whose value is empty are left out (the protocol has no empty
tag), and tags are sorted by key, as InfluxDB prefers.

Readings: measurement ``electric`` or ``water`` (the utility), tags ``building, floor,
kind, role, room, site, twin``, one field named after the unit (``kwh`` or ``m3``), the
interval's UTC start as the time. VictoriaMetrics names the series ``electric_kwh`` and
``water_m3``. Ledger entries: measurement ``ledger``, tags ``account, counterpart, kind,
ref, site``, fields ``amount_fen`` (signed: + credit, - debit) and ``transfer`` (the
ledger's transfer id); every transfer gives two lines, one per side. Times are whole
milliseconds (write precision ``ms``): VictoriaMetrics keeps milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import repeat

import numpy as np

from twin.history import Topology

PRECISION = "ms"
_CONTROL = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPE_MEASUREMENT = str.maketrans({"\\": "\\\\", ",": "\\,", " ": "\\ ", **_CONTROL})
_ESCAPE_KEY = str.maketrans({"\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ ", **_CONTROL})
_ESCAPE_STRING = str.maketrans({"\\": "\\\\", '"': '\\"', **_CONTROL})

FieldValue = float | int | bool | str


class LineError(ValueError):
    """A value that line protocol cannot carry (an empty key, a non-finite number)."""


def escape_measurement(name: str) -> str:
    """A measurement name escaped for line protocol; LineError when it is empty or
    starts with '#' (a comment line)."""
    if not name or name.startswith("#"):
        raise LineError(f"measurement {name!r}: must be non-empty and not start with '#'")
    return name.translate(_ESCAPE_MEASUREMENT)


def escape_key(text: str) -> str:
    """A tag key, tag value or field key escaped for line protocol."""
    return text.translate(_ESCAPE_KEY)


def tag_set(tags: Mapping[str, object]) -> str:
    """``,k=v,k=v`` for the tags with a non-empty value, sorted by key ('' when none)."""
    parts = []
    for key in sorted(tags):
        value = tags[key]
        if value is None or value == "":
            continue
        if not key:
            raise LineError(f"a tag key is empty (value {value!r})")
        parts.append(f",{escape_key(key)}={escape_key(str(value))}")
    return "".join(parts)


def field_value(value: FieldValue) -> str:
    """A field value: integers end in 'i', floats are written exactly (repr), strings are
    quoted; LineError for NaN and infinities, which line protocol cannot carry."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return f"{int(value)}i"
    if isinstance(value, float | np.floating):
        if not math.isfinite(value):
            raise LineError(f"field value {value!r}: line protocol has no NaN or infinity")
        return repr(float(value))
    if isinstance(value, str):
        return '"' + value.translate(_ESCAPE_STRING) + '"'
    raise LineError(f"field value {value!r}: use a number, a bool or a string")


def line(measurement: str, tags: Mapping[str, object], fields: Mapping[str, FieldValue], time_ms: int) -> str:
    """One line. Example: ``line("ledger", {"account": "resident:A1"}, {"amount_fen": 500},
    1767225600000)`` -> ``'ledger,account=resident:A1 amount_fen=500i 1767225600000'``."""
    if not fields:
        raise LineError(f"{measurement}: a line needs at least one field")
    field_text = ",".join(f"{escape_key(k)}={field_value(v)}" for k, v in fields.items())
    return f"{escape_measurement(measurement)}{tag_set(tags)} {field_text} {int(time_ms)}"


class ReadingLines:
    """Lines for interval rows of a history's columns. Each column's line up to the field
    value is built once; a row then costs one format per reading. Example::

        lines = ReadingLines(topology)
        body = lines.build(start_utc, row)   # row: [columns] float32, NaN = missing
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.prefixes: list[str] = []
        for c in topology.columns:
            tags = {"site": topology.site, "building": c.building, "floor": c.floor, "room": c.room,
                    "twin": c.id, "kind": c.kind, "role": c.role}
            self.prefixes.append(f"{escape_measurement(c.utility)}{tag_set(tags)} {escape_key(c.unit.lower())}=")
        encoded = [p.encode() for p in self.prefixes]
        self._prefix_bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in encoded], out=self._offsets[1:])

    def build_bytes(self, start_utc: int, row: np.ndarray) -> tuple[bytes, int]:
        """(bytes, lines) for one interval row, as `build` writes them, by the Numba kernel
        (control/influx/kernel.py; several times faster, and without the GIL)."""
        from control.influx.kernel import VALUE_BYTES, build_row

        stamp = np.frombuffer(f" {int(start_utc) * 1000}".encode(), dtype=np.uint8)
        out = np.empty(self._prefix_bytes.size + row.shape[0] * (VALUE_BYTES + stamp.size + 1), dtype=np.uint8)
        used, n = build_row(self._prefix_bytes, self._offsets, np.ascontiguousarray(row), stamp, out)
        return out[:used].tobytes(), int(n)

    def build(self, start_utc: int, row: np.ndarray) -> tuple[str, int]:
        """(text, lines) for one interval row: a line per finite reading, joined by
        newlines; float32 values written with 9 significant digits, which round-trip.
        The plain-Python reference of `build_bytes`."""
        finite = np.isfinite(row)
        n = int(finite.sum())
        if n == 0:
            return "", 0
        if n == row.shape[0]:
            prefixes, values = self.prefixes, row.tolist()
        else:
            keep = np.flatnonzero(finite)
            prefixes, values = [self.prefixes[i] for i in keep.tolist()], row[keep].tolist()
        # one join over [prefix, value, stamp, prefix, ...]: about 1.5x an f-string per line
        parts: list[str] = [""] * (3 * n)
        parts[0::3] = prefixes
        parts[1::3] = map(format, values, repeat(".9g"))
        parts[2::3] = repeat(f" {int(start_utc) * 1000}\n", n)
        parts[-1] = parts[-1][:-1]
        return "".join(parts), n



def ledger_lines(site: str, transfer: int, at: float, kind: str, debit: str, credit: str, amount: int,
                 ref: str | None) -> str:
    """The two lines of one ledger transfer: the debit side (-amount) and the credit side."""
    ms = round(at * 1000)
    common = {"site": site, "kind": kind, "ref": ref}
    fields_debit: dict[str, FieldValue] = {"amount_fen": -int(amount), "transfer": int(transfer)}
    fields_credit: dict[str, FieldValue] = {"amount_fen": int(amount), "transfer": int(transfer)}
    return (line("ledger", {**common, "account": debit, "counterpart": credit}, fields_debit, ms) + "\n"
            + line("ledger", {**common, "account": credit, "counterpart": debit}, fields_credit, ms))
