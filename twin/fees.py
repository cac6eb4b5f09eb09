"""Fee items and common-area apportionment (公摊), computed exactly in fen.

Fee items come from the scenario's `[[fee_items]]`:

    [[fee_items]]
    name = "property fee"
    basis = "area"             # "area": yuan_per_m2_month x the account's floor area; "fixed": yuan_month
    yuan_per_m2_month = 1.8    # or yuan_month = 300 (fixed), or yuan = 500 with period = "once"
    charge = "balance"         # "balance": taken from the prepaid balance; "bill": billed (receivable)
    period = "month"           # "month" or "once"

Apportionment splits a total in fen over accounts by weights (a ratio, floor area, or
usage) with the largest-remainder rule: every share is its exact share rounded down,
and the fen left over go one each to the largest remainders (ties to the earlier
account), so the shares always add up to the total, to the fen, and none is more than
one fen from its exact share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twin.ledger import round_half_up
from twin.model import Site


class FeeError(ValueError):
    """A fee item that breaks a rule; the message names the item and the field."""


@dataclass(frozen=True, slots=True)
class FeeItem:
    """One fee item. Example: ``FeeItem("property fee", "area", 180.0, "balance", "month")``."""

    name: str  #: shown on bills and as revenue:fee:<name>
    basis: str  #: "area" or "fixed"
    fen: float  #: fen per m2 per month (area), or fen per month or once (fixed)
    charge: str  #: "balance" (prepaid) or "bill" (receivable)
    period: str  #: "month" or "once"


def parse_fee_items(items: list[dict[str, Any]]) -> list[FeeItem]:
    """Fee items from scenario tables; FeeError names the item and field."""
    out = []
    for i, item in enumerate(items):
        where = f"fee_items[{i}]"
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise FeeError(f"{where}.name: give the fee's name")
        basis = item.get("basis", "fixed")
        if basis not in ("area", "fixed"):
            raise FeeError(f"{where}.basis: 'area' or 'fixed', not {basis!r}")
        period = item.get("period", "month")
        if period not in ("month", "once"):
            raise FeeError(f"{where}.period: 'month' or 'once', not {period!r}")
        key = "yuan_per_m2_month" if basis == "area" else ("yuan" if period == "once" else "yuan_month")
        value = item.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise FeeError(f"{where}.{key}: give the amount in yuan, >= 0")
        charge = item.get("charge", "balance")
        if charge not in ("balance", "bill"):
            raise FeeError(f"{where}.charge: 'balance' or 'bill', not {charge!r}")
        out.append(FeeItem(name, basis, 100.0 * float(value), charge, period))
    return out


def fees_due(site: Site, items: list[FeeItem], *, first_month: bool = False) -> list[tuple[str, FeeItem, int]]:
    """(account, item, fen) for a month's fee run: monthly items every month, one-off items
    only when `first_month`. Area fees use the floor area of all the account's rooms;
    each amount is rounded half-up to the fen once."""
    area: dict[str, float] = {}
    for room in site.rooms:
        if room.account:
            area[room.account] = area.get(room.account, 0.0) + room.area_m2
    out = []
    for item in items:
        if item.period == "once" and not first_month:
            continue
        for account in (a.id for a in site.accounts):
            exact = item.fen * area.get(account, 0.0) if item.basis == "area" else item.fen
            fen = round_half_up(exact)
            if fen > 0:
                out.append((account, item, fen))
    return out


def apportion(total_fen: int, weights: dict[str, float]) -> dict[str, int]:
    """Split `total_fen` over accounts by `weights` (>= 0, not all 0), exactly."""
    if total_fen < 0:
        raise ValueError("apportion a total >= 0; credit a negative gap by reversing instead")
    if any(w < 0 for w in weights.values()):
        raise ValueError("weights must be >= 0")
    whole = sum(weights.values())
    if not whole > 0:
        raise ValueError("weights are all zero: nobody to apportion to")
    exact = {a: total_fen * w / whole for a, w in weights.items()}
    shares = {a: int(x) for a, x in exact.items()}
    left = total_fen - sum(shares.values())
    position = {a: i for i, a in enumerate(weights)}
    order = sorted(weights, key=lambda a: (-(exact[a] - shares[a]), position[a]))
    for account in order[:left]:
        shares[account] += 1
    return shares


@dataclass(frozen=True, slots=True)
class Apportionment:
    """Common-area apportionment (公摊) of one source over a building's accounts, monthly.

    Written in the scenario as::

        [[apportion]]
        name = "corridor lighting"   # shown as revenue:fee:<name>
        source = "B01.sc-corridor"   # a shared circuit, or a master meter (B01.mm): its gap,
                                     #   the master's reading less everything it feeds
        basis = "area"               # "area" (room floor area), "usage" (the accounts' own use
                                     #   of the same utility that month) or "equal"
        price_yuan = 0.6             # per kWh (or m3) apportioned
        charge = "balance"           # or "bill"

    Example: ``Apportionment("corridor", "B01.sc-corridor", "B01", "electric", "area", 60.0, "balance")``.
    """

    name: str  #: fee name
    source: str  #: shared circuit or master meter id
    building: str  #: whose accounts share it
    utility: str  #: electric or water
    basis: str  #: area, usage or equal
    price_fen: float  #: fen per unit
    charge: str  #: balance or bill
    gap: bool = False  #: the source is a master meter: its gap is apportioned


def parse_apportionments(items: list[dict[str, Any]], site: Site) -> list[Apportionment]:
    """Apportionments from scenario tables; FeeError names the entry and field."""
    twins = {t.id: t for t in site.twins}
    out = []
    for i, item in enumerate(items):
        where = f"apportion[{i}]"
        unknown = set(item) - {"name", "source", "basis", "price_yuan", "charge"}
        if unknown:
            raise FeeError(f"{where}.{sorted(unknown)[0]}: unknown field; use name, source, basis, price_yuan, charge")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise FeeError(f"{where}.name: give the apportionment's name")
        source = twins.get(str(item.get("source")))
        if source is None:
            raise FeeError(f"{where}.source: no twin {item.get('source')!r}; name a shared circuit (B01.sc-corridor)"
                           " or a master meter (B01.mm)")
        gap = source.role == "master"
        if not gap and source.kind.value != "shared_circuit":
            raise FeeError(f"{where}.source: {source.id} is a {source.kind.value}; name a shared circuit or a "
                           "master meter")
        basis = item.get("basis", "area")
        if basis not in ("area", "usage", "equal"):
            raise FeeError(f"{where}.basis: 'area', 'usage' or 'equal', not {basis!r}")
        price = item.get("price_yuan")
        if not isinstance(price, int | float) or isinstance(price, bool) or price < 0:
            raise FeeError(f"{where}.price_yuan: give the price per unit in yuan, >= 0")
        charge = item.get("charge", "balance")
        if charge not in ("balance", "bill"):
            raise FeeError(f"{where}.charge: 'balance' or 'bill', not {charge!r}")
        utility = source.utility or "electric"
        out.append(Apportionment(name, source.id, source.building, utility, basis, 100.0 * float(price), charge, gap))
    return out
