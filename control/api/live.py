"""Live state as the API shows it: a twin's record (its three faces, with nothing a JSON
body cannot carry) and one status word per twin, room and account.

Status, worst first; the first that holds wins:

    offline      the device reports online = 0
    alarm        an open alarm names the twin (or, for a room, its account)
    cut_off      a relay open or a valve closed (reported)
    arrears      the account owes on bills, or (platform billing) its available balance
                 is below zero
    low_balance  the prepaid policy has the account at a low-balance level (1 to 3)
    normal       none of these

A room takes the worst status of its twins and its account; a vacant room with no twin
reporting is `normal`. Take a `Snapshot` and build records under the platform lock (they
read the world's arrays); statuses from a snapshot read only the snapshot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from twin.model import Kind, TwinSpec
from twin.state import FACES

if TYPE_CHECKING:
    from control.runtime import Platform

STATUSES = ("normal", "low_balance", "arrears", "cut_off", "alarm", "offline")
_RANK = {s: i for i, s in enumerate(STATUSES)}


def plain(value: Any) -> Any:
    """A face value a JSON body can carry: a float that is not finite becomes None."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def twin_record(platform: Platform, spec: TwinSpec, status: str) -> dict[str, Any]:
    """A twin's place in the site, its reported, desired and derived state with their
    stamps, and its status."""
    return twin_records(platform, [spec], [status])[0]


def twin_records(platform: Platform, specs: list[TwinSpec], statuses: list[str]) -> list[dict[str, Any]]:
    """`twin_record` of many twins, reading each field of each kind once for all of them."""
    fleet = platform.state
    where = [fleet.locate(spec.id) for spec in specs]
    out: list[dict[str, Any]] = [{} for _ in specs]
    by_kind: dict[Kind, list[int]] = {}
    for i, (kind, _) in enumerate(where):
        by_kind.setdefault(kind, []).append(i)
    for kind, members in by_kind.items():
        table = fleet.tables[kind]
        rows = np.array([where[i][1] for i in members], dtype=np.int64)
        faces = {face: {name: [plain(v) for v in array[rows].tolist()] for name, array in table.faces[face].items()}
                 for face in FACES}
        stamps = {face: table.stamps[face][rows].tolist() for face in FACES}
        for j, i in enumerate(members):
            spec = specs[i]
            out[i] = {"id": spec.id, "kind": kind.value,
                      **{face: {name: values[j] for name, values in fields.items()} for face, fields in faces.items()},
                      "stamps": {face: int(stamps[face][j]) for face in FACES},
                      "building": spec.building, "floor": spec.floor, "room": spec.room, "account": spec.account,
                      "master": spec.master, "role": spec.role, "status": statuses[i]}
    return out


@dataclass
class Snapshot:
    """What statuses need, read once per request: twins offline and cut off, twins and
    accounts with open alarms, accounts below zero or owing, and policy levels."""

    offline: set[str]
    cut: set[str]
    alarmed_twins: set[str]
    alarmed_accounts: set[str]
    in_arrears: set[str]
    low: set[str]

    @classmethod
    def take(cls, platform: Platform, accounts: list[str] | None = None) -> Snapshot:
        """Read the world and the books; `accounts` limits the balance check to those
        (default: all)."""
        offline: set[str] = set()
        cut: set[str] = set()
        for kind, table in platform.state.tables.items():
            reported = table.faces["reported"]
            offline.update(table.ids[r] for r in np.flatnonzero(reported["online"] == 0).tolist())
            field = "relay_closed" if kind is Kind.ELECTRIC_METER else "open" if kind is Kind.VALVE else None
            if field is not None:
                cut.update(table.ids[r] for r in np.flatnonzero(reported[field] == 0).tolist())
        twins: set[str] = set()
        owners: set[str] = set()
        for alarm in platform.alarms.open_alarms():
            if alarm.twin:
                twins.add(alarm.twin)
            elif alarm.account and not alarm.kind.startswith("low_balance"):  # those show as low_balance
                owners.add(alarm.account)
        chosen = list(platform.accounts) if accounts is None else [a for a in accounts if a in platform.accounts]
        # a prepaid balance means something only where the ledger holds the credit (platform billing)
        prepaid = [a for a in chosen if platform.accounts[a].prepaid] if platform.platform_billing else []
        arrears = {a for a, _ in platform.ledger.arrears()}
        if prepaid:
            available = platform.billing.available_many(list(prepaid))
            arrears |= {a for a, fen in zip(prepaid, available.tolist(), strict=True) if fen < 0}
        low = {a for a, s in platform.policy.states.items() if s.level > 0}
        return cls(offline, cut, twins, owners, arrears, low)

    def of_account(self, account: str | None) -> str:
        """The status an account alone gives."""
        if account is None:
            return "normal"
        if account in self.alarmed_accounts:
            return "alarm"
        if account in self.in_arrears:
            return "arrears"
        return "low_balance" if account in self.low else "normal"

    def of_twin(self, spec: TwinSpec) -> str:
        """A twin's status."""
        if spec.id in self.offline:
            return "offline"
        if spec.id in self.alarmed_twins:
            return "alarm"
        if spec.id in self.cut:
            return "cut_off"
        return self.of_account(spec.account)


def worst(statuses: list[str]) -> str:
    """The worst of some statuses ('normal' for none)."""
    return max(statuses, key=_RANK.__getitem__, default="normal")
