"""Reports from the ledger: income by day, month or year, and orders, as rows or CSV.

Income is counted in the site's time zone: money in (top-ups and bill payments), money
out (refunds), and revenue posted (charges by utility, fee items). A resident's opening
balance (a top-up whose payment id starts with `OPENING`, recorded once when the platform
first opens the account) is money the resident already had, not income: it is left out of
paid in. Orders are every
top-up, refund, fee, bill and bill payment, newest first. Reports read; they never write.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from twin.ledger import Ledger

PERIODS = {"day": "%Y-%m-%d", "month": "%Y-%m", "year": "%Y"}
ORDER_KINDS = ("topup", "refund", "fee", "bill", "bill_payment")
#: Payment id prefix of the opening balances the platform records (control.runtime).
OPENING = "opening:"


def paid_in_fen(ledger: Ledger, since: float, until: float | None = None) -> int:
    """Money paid in (top-ups and bill payments, opening balances left out) at or after
    `since` (and at or before `until`), fen: the paid-in figure of `income` for that span."""
    sql = ("SELECT COALESCE(SUM(amount), 0) FROM transfers WHERE kind IN ('topup', 'bill_payment') "
           "AND NOT (kind = 'topup' AND substr(COALESCE(ref, ''), 1, ?) = ?) AND at >= ?")
    args: list[Any] = [len(OPENING), OPENING, since]
    if until is not None:
        sql += " AND at <= ?"
        args.append(until)
    return int(ledger.db.execute(sql, args).fetchone()[0])


def income(ledger: Ledger, timezone: str, period: str = "day") -> list[dict[str, Any]]:
    """Per period (site-local): paid in, refunded, and revenue posted by utility and fee, in fen."""
    if period not in PERIODS:
        raise ValueError(f"period is day, month or year, not {period!r}")
    tz = ZoneInfo(timezone)
    rows: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for at, kind, debit, credit, amount, ref in ledger.db.execute(
            "SELECT at, kind, debit, credit, amount, ref FROM transfers ORDER BY at, id"):
        key = datetime.fromtimestamp(at, tz=tz).strftime(PERIODS[period])
        row = rows[key]
        if kind == "topup" and (ref or "").startswith(OPENING):
            continue  # an opening balance: the resident's own money, not income
        if kind in ("topup", "bill_payment"):
            row["paid_in_fen"] += amount
        elif kind == "refund":
            row["refunded_fen"] += amount
        elif credit.startswith("revenue:"):
            row[f"revenue_{credit[len('revenue:'):].replace(':', '_')}_fen"] += amount
        elif debit.startswith("revenue:"):  # a credit back (reversal, a register that ran back)
            row[f"revenue_{debit[len('revenue:'):].replace(':', '_')}_fen"] -= amount
    return [{"period": key, **values} for key, values in sorted(rows.items())]


def orders(ledger: Ledger, timezone: str, account: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """Top-ups, refunds, fees, bills and bill payments, newest first."""
    tz = ZoneInfo(timezone)
    marks = ",".join("?" * len(ORDER_KINDS))
    sql = f"SELECT id, at, kind, debit, credit, amount, ref FROM transfers WHERE kind IN ({marks})"  # noqa: S608
    args: list[Any] = list(ORDER_KINDS)
    if account is not None:
        sql += " AND (debit IN (?, ?) OR credit IN (?, ?))"
        args += [f"resident:{account}", f"receivable:{account}"] * 2
    sql += " ORDER BY at DESC, id DESC LIMIT ?"
    args.append(limit)
    out = []
    for transfer, at, kind, debit, credit, amount, ref in ledger.db.execute(sql, args):
        party = credit if kind in ("topup", "bill_payment") else debit
        out.append({"transfer": transfer, "time": datetime.fromtimestamp(at, tz=tz).isoformat(timespec="seconds"),
                    "kind": kind, "account": party.split(":", 1)[1], "amount_fen": amount, "ref": ref})
    return out


def to_csv(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV, with every column any row has."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, restval=0)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
