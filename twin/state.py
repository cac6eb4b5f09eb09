"""Columnar twin state: one table per twin kind, one row per twin, one numpy array per field.

A twin has three faces (Eclipse Ditto's properties and desiredProperties, plus ours):
reported (what the device last said), desired (what an operator or a policy asked for,
not yet confirmed) and derived (what the platform computed: balance, alarm level, scores).
Each face carries its own timestamp column (UTC epoch seconds, 0 = never). Kernels take
the arrays of a whole kind at once; `TwinView` is a light handle on one row for code that
wants one meter.

Desired fields use -1 for "no wish"; booleans are stored as int8 (0/1) so -1 fits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from twin.model import Kind, Site

#: Fields per kind and face: (name, numpy dtype, initial value).
FIELDS: dict[Kind, dict[str, tuple[tuple[str, str, float], ...]]] = {
    Kind.ELECTRIC_METER: {
        "reported": (
            ("energy_kwh", "f8", 0.0),  # register: total active energy
            ("power_w", "f4", 0.0),
            ("voltage_v", "f4", np.nan),
            ("current_a", "f4", np.nan),
            ("power_factor", "f4", np.nan),
            ("frequency_hz", "f4", np.nan),
            ("relay_closed", "i1", 1),
            ("credit_fen", "i8", 0),  # the meter's own credit, in meter-billing mode
            ("purchased_fen", "i8", 0),  # total credit ever bought on the meter (购电总额), meter billing
            ("online", "i1", 1),
        ),
        "desired": (("relay_closed", "i1", -1), ("purchased_fen", "i8", -1)),
        "derived": (("balance_fen", "i8", 0), ("alarm_level", "i1", 0)),
    },
    Kind.WATER_METER: {
        "reported": (
            ("volume_m3", "f8", 0.0),  # register: total volume
            ("flow_m3h", "f4", 0.0),
            ("online", "i1", 1),
        ),
        "desired": (),
        "derived": (("balance_fen", "i8", 0), ("alarm_level", "i1", 0)),
    },
    Kind.VALVE: {
        "reported": (("open", "i1", 1), ("online", "i1", 1)),
        "desired": (("open", "i1", -1),),
        "derived": (("alarm_level", "i1", 0),),
    },
    Kind.ELEVATOR: {
        "reported": (
            ("energy_kwh", "f8", 0.0),
            ("power_w", "f4", 0.0),
            ("trips", "i8", 0),
            ("online", "i1", 1),
        ),
        "desired": (),
        "derived": (("alarm_level", "i1", 0),),
    },
    Kind.SHARED_CIRCUIT: {
        "reported": (
            ("energy_kwh", "f8", 0.0),
            ("power_w", "f4", 0.0),
            ("on", "i1", 0),
            ("online", "i1", 1),
        ),
        "desired": (),
        "derived": (("alarm_level", "i1", 0),),
    },
}

FACES = ("reported", "desired", "derived")


@dataclass
class KindTable:
    """Every twin of one kind: ids in site order, and one array per field and face."""

    kind: Kind  #: the kind held
    ids: list[str]  #: twin ids, row order
    row_of: dict[str, int]  #: id -> row
    faces: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  #: face -> field -> array
    stamps: dict[str, np.ndarray] = field(default_factory=dict)  #: face -> timestamp column

    @classmethod
    def empty(cls, kind: Kind, ids: list[str]) -> KindTable:
        """A table for `ids` with every field at its initial value and no timestamps."""
        table = cls(kind, list(ids), {twin_id: row for row, twin_id in enumerate(ids)})
        n = len(ids)
        for face in FACES:
            table.faces[face] = {
                name: np.full(n, initial, dtype=dtype) for name, dtype, initial in FIELDS[kind][face]
            }
            table.stamps[face] = np.zeros(n, dtype=np.int64)
        return table

    def __len__(self) -> int:
        return len(self.ids)


class FleetState:
    """The live state of a whole site, one `KindTable` per twin kind."""

    def __init__(self, tables: dict[Kind, KindTable]) -> None:
        self.tables = tables
        self._where = {
            twin_id: (kind, row) for kind, t in tables.items() for twin_id, row in t.row_of.items()
        }

    @classmethod
    def from_site(cls, site: Site) -> FleetState:
        """Empty state for every twin of `site`, tables in `Kind` order, rows in site order."""
        ids: dict[Kind, list[str]] = {kind: [] for kind in Kind}
        for twin in site.twins:
            ids[twin.kind].append(twin.id)
        return cls({kind: KindTable.empty(kind, ids[kind]) for kind in Kind})

    def __len__(self) -> int:
        return len(self._where)

    def locate(self, twin_id: str) -> tuple[Kind, int]:
        """(kind, row) of a twin; KeyError names the id when unknown."""
        try:
            return self._where[twin_id]
        except KeyError:
            raise KeyError(f"no twin {twin_id!r}") from None

    def twin(self, twin_id: str) -> TwinView:
        """A light view on one twin's row."""
        kind, row = self.locate(twin_id)
        return TwinView(self.tables[kind], row)

    def report(self, kind: Kind, rows: np.ndarray, ts: int, **values: Any) -> None:
        """Write reported values for `rows` of one kind, stamped `ts` (UTC epoch s)."""
        table = self.tables[kind]
        for name, value in values.items():
            table.faces["reported"][name][rows] = value
        table.stamps["reported"][rows] = ts

    def desire(self, twin_id: str, name: str, value: int, ts: int) -> None:
        """Record what is asked of one twin (a command writes this face)."""
        kind, row = self.locate(twin_id)
        table = self.tables[kind]
        table.faces["desired"][name][row] = value
        table.stamps["desired"][row] = ts


class TwinView:
    """One twin's row, read through its table. Example: ``fleet.twin("B03-12-02.em")
    .reported["energy_kwh"]``."""

    __slots__ = ("table", "row")

    def __init__(self, table: KindTable, row: int) -> None:
        self.table = table
        self.row = row

    @property
    def id(self) -> str:
        """The twin id."""
        return self.table.ids[self.row]

    @property
    def kind(self) -> Kind:
        """The twin kind."""
        return self.table.kind

    def _face(self, face: str) -> dict[str, Any]:
        return {name: array[self.row].item() for name, array in self.table.faces[face].items()}

    @property
    def reported(self) -> dict[str, Any]:
        """Reported fields as plain Python values."""
        return self._face("reported")

    @property
    def desired(self) -> dict[str, Any]:
        """Desired fields (-1: nothing asked)."""
        return self._face("desired")

    @property
    def derived(self) -> dict[str, Any]:
        """Derived fields."""
        return self._face("derived")

    def stamp(self, face: str) -> int:
        """UTC epoch seconds of the face's last write, 0 if never."""
        return int(self.table.stamps[face][self.row])

    def as_dict(self) -> dict[str, Any]:
        """Everything about this twin's live state, for an API or a log line."""
        return {
            "id": self.id,
            "kind": str(self.kind),
            **{face: self._face(face) for face in FACES},
            "stamps": {face: self.stamp(face) for face in FACES},
        }

    def __repr__(self) -> str:
        return f"TwinView({self.id!r}, {self.kind.value})"
