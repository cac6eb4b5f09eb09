"""The ledger: double-entry bookkeeping in integer fen, in SQLite (WAL, synchronous=FULL,
`BEGIN IMMEDIATE` for every write).

Every movement of money is a transfer of a positive amount from a debit account to a
credit account, stored once; its two entries (-amount on the debit, +amount on the
credit) are the `entries` view over the transfers, so no entry can exist without its
twin. Each transfer updates both accounts' balances in the same transaction. After every
transaction: all entries sum to zero, and each account's balance is the sum of its
entries (`check()` verifies both). Transfers are never edited: a correction is a
reversing transfer that names the one it reverses.

Accounts (ids are text):
    resident:<account>       money a resident or tenant holds with the company (prepaid
                             balance; negative = arrears)
    revenue:<utility>        electric, water
    revenue:fee:<item>       property fee, parking, ...
    clearing:payments        money coming in from payments and going out in refunds

A top-up is idempotent on its payment id: a replay returns the first result; the same id
with another amount or account is refused. A refund never exceeds the balance. Charges
accrue unrounded (float fen from the billing kernel) and post at a billing tick: one
transfer per account per tick, rounded half-up, the unrounded remainder carried into the
next posting, so posted charges never drift more than one fen from the exact total.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections import defaultdict
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twin.transactions import immediate

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, balance INTEGER NOT NULL DEFAULT 0, remainder REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS transfers (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL, debit TEXT NOT NULL,
    credit TEXT NOT NULL, amount INTEGER NOT NULL CHECK (amount > 0), ref TEXT, reverses INTEGER, memo TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS transfers_reverses ON transfers(reverses) WHERE reverses IS NOT NULL;
CREATE VIEW IF NOT EXISTS entries(transfer, account, amount) AS
    SELECT id, debit, -amount FROM transfers UNION ALL SELECT id, credit, amount FROM transfers;
CREATE TABLE IF NOT EXISTS payments (
    payment_id TEXT PRIMARY KEY, account TEXT NOT NULL, amount INTEGER NOT NULL, transfer INTEGER NOT NULL
);
"""
CLEARING = "clearing:payments"


class LedgerError(ValueError):
    """An operation the ledger refuses; the message says which rule it breaks."""


@dataclass(frozen=True, slots=True)
class TopUp:
    """The result of a top-up: the transfer, the balance after it, and whether this call
    was a replay of a payment already recorded."""

    transfer: int  #: transfer id
    balance_fen: int  #: the account's balance right after the top-up
    replay: bool  #: True when the payment id was seen before


def round_half_up(value: float) -> int:
    """Round to the nearest whole fen, halves away from zero (0.5 -> 1, -0.5 -> -1)."""
    return int(math.floor(abs(value) + 0.5)) * (1 if value >= 0 else -1)


def resident(account: str) -> str:
    """The ledger account of a resident or tenant account id."""
    return f"resident:{account}"


class Ledger:
    """Example::

        ledger = Ledger(Path("data/ledger.sqlite"))
        ledger.top_up("pay-001", "A-B01-01-01", 10000, at=now)
        ledger.post_charges({"A-B01-01-01": 1234.567}, "electric", at=now)
        ledger.balance("A-B01-01-01")     # 8765 fen; 0.567 fen carried to the next posting
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate(self.db, self._lock)  # one transaction at a time, whichever thread asks

    # -- accounts -----------------------------------------------------------------------

    def _ensure(self, db: sqlite3.Connection, account: str) -> None:
        kind = account.split(":", 1)[0]
        if kind not in ("resident", "revenue", "clearing", "receivable"):
            raise LedgerError(f"account {account!r}: ids start with resident:, revenue:, receivable: or clearing:")
        db.execute("INSERT OR IGNORE INTO accounts(id, kind) VALUES (?, ?)", (account, kind))

    def balance(self, account: str) -> int:
        """A resident account's posted balance in fen (0 if it never moved)."""
        row = self.db.execute("SELECT balance FROM accounts WHERE id = ?", (resident(account),)).fetchone()
        return 0 if row is None else int(row[0])

    def balances(self) -> dict[str, int]:
        """Every resident account's posted balance in fen, in one query."""
        rows = self.db.execute("SELECT id, balance FROM accounts WHERE kind = 'resident'").fetchall()
        return {account[len("resident:"):]: int(balance) for account, balance in rows}

    def account_balance(self, ledger_account: str) -> int:
        """Any ledger account's balance in fen (credits minus debits)."""
        row = self.db.execute("SELECT balance FROM accounts WHERE id = ?", (ledger_account,)).fetchone()
        return 0 if row is None else int(row[0])

    # -- transfers ----------------------------------------------------------------------

    def _transfer(self, db: sqlite3.Connection, kind: str, debit: str, credit: str, amount: int, at: float,
                  ref: str | None = None, reverses: int | None = None, memo: str | None = None) -> int:
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            raise LedgerError(f"{kind}: the amount must be a whole number of fen > 0, not {amount!r}")
        if debit == credit:
            raise LedgerError(f"{kind}: debit and credit are the same account {debit}")
        self._ensure(db, debit)
        self._ensure(db, credit)
        cur = db.execute("INSERT INTO transfers(at, kind, debit, credit, amount, ref, reverses, memo)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (at, kind, debit, credit, amount, ref, reverses, memo))
        transfer = int(cur.lastrowid or 0)
        db.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, debit))
        db.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, credit))
        return transfer

    def top_up(self, payment_id: str, account: str, amount_fen: int, *, at: float) -> TopUp:
        """Credit a resident account with a payment; idempotent on `payment_id`."""
        with self._write() as db:
            return self._top_up_in(db, payment_id, account, amount_fen, at)

    def top_up_many(self, payments: list[tuple[str, str, int]], *, at: float) -> list[TopUp | LedgerError]:
        """Group commit: many top-ups (payment id, account, fen) in one transaction, one
        fsync; each result is a TopUp, or the LedgerError that refused that one alone.
        The caller acknowledges each only after this returns (after the commit)."""
        results: list[TopUp | LedgerError] = []
        with self._write() as db:
            for payment_id, account, amount_fen in payments:
                db.execute("SAVEPOINT one")
                try:
                    results.append(self._top_up_in(db, payment_id, account, amount_fen, at))
                    db.execute("RELEASE one")
                except LedgerError as err:
                    db.execute("ROLLBACK TO one")
                    db.execute("RELEASE one")
                    results.append(err)
        return results

    def _top_up_in(self, db: sqlite3.Connection, payment_id: str, account: str, amount_fen: int, at: float) -> TopUp:
        if not payment_id:
            raise LedgerError("a top-up needs its payment id")
        seen = db.execute("SELECT account, amount, transfer FROM payments WHERE payment_id = ?",
                          (payment_id,)).fetchone()
        if seen is not None:
            if seen[0] != account or seen[1] != amount_fen:
                raise LedgerError(f"payment {payment_id!r} was recorded as {seen[1]} fen to {seen[0]}; "
                                  f"refusing {amount_fen} fen to {account}")
            balance = db.execute("SELECT balance FROM accounts WHERE id = ?", (resident(account),)).fetchone()
            return TopUp(int(seen[2]), int(balance[0]), True)
        transfer = self._transfer(db, "topup", CLEARING, resident(account), amount_fen, at, ref=payment_id)
        db.execute("INSERT INTO payments(payment_id, account, amount, transfer) VALUES (?, ?, ?, ?)",
                   (payment_id, account, amount_fen, transfer))
        balance = db.execute("SELECT balance FROM accounts WHERE id = ?", (resident(account),)).fetchone()
        return TopUp(transfer, int(balance[0]), False)

    def deduct(self, account: str, amount_fen: int, utility: str, *, at: float, ref: str | None = None) -> int:
        """Charge a resident account for a utility (the balance may go below zero: arrears)."""
        with self._write() as db:
            return self._transfer(db, "deduction", resident(account), f"revenue:{utility}", amount_fen, at, ref=ref)

    def charge_fee(self, account: str, item: str, amount_fen: int, *, at: float, ref: str | None = None,
                   billed: bool = False) -> int:
        """Charge a fee item (property fee, parking): from the prepaid balance, or, when
        `billed`, as a bill the account owes (receivable:<account>)."""
        debit = f"receivable:{account}" if billed else resident(account)
        with self._write() as db:
            return self._transfer(db, "bill" if billed else "fee", debit, f"revenue:fee:{item}", amount_fen, at,
                                  ref=ref)

    def pay_bill(self, payment_id: str, account: str, amount_fen: int, *, at: float) -> int:
        """A payment against an account's bills; idempotent on the payment id like a top-up."""
        with self._write() as db:
            seen = db.execute("SELECT account, amount, transfer FROM payments WHERE payment_id = ?",
                              (payment_id,)).fetchone()
            if seen is not None:
                if seen[0] != account or seen[1] != amount_fen:
                    raise LedgerError(f"payment {payment_id!r} was recorded as {seen[1]} fen to {seen[0]}")
                return int(seen[2])
            transfer = self._transfer(db, "bill_payment", CLEARING, f"receivable:{account}", amount_fen, at,
                                      ref=payment_id)
            db.execute("INSERT INTO payments(payment_id, account, amount, transfer) VALUES (?, ?, ?, ?)",
                       (payment_id, account, amount_fen, transfer))
            return transfer

    def arrears(self) -> list[tuple[str, int]]:
        """Accounts owing on bills, most owed first: (account, fen owed)."""
        rows = self.db.execute("SELECT id, balance FROM accounts WHERE kind = 'receivable' AND balance < 0"
                               " ORDER BY balance, id").fetchall()
        return [(account[len("receivable:"):], -int(balance)) for account, balance in rows]

    def refund(self, account: str, amount_fen: int, *, at: float, ref: str | None = None) -> int:
        """Pay money back (退费); never more than the balance."""
        with self._write() as db:
            row = db.execute("SELECT balance FROM accounts WHERE id = ?", (resident(account),)).fetchone()
            balance = 0 if row is None else int(row[0])
            if amount_fen > balance:
                raise LedgerError(f"refund of {amount_fen} fen exceeds the balance of {account} ({balance} fen)")
            return self._transfer(db, "refund", resident(account), CLEARING, amount_fen, at, ref=ref)

    def reverse(self, transfer: int, *, at: float, reason: str) -> int:
        """Undo a transfer with a new one in the other direction; a transfer is reversed
        at most once, and a reversal is never reversed (make a new transfer instead)."""
        with self._write() as db:
            row = db.execute("SELECT debit, credit, amount, kind, reverses FROM transfers WHERE id = ?",
                             (transfer,)).fetchone()
            if row is None:
                raise LedgerError(f"no transfer {transfer}")
            if row[4] is not None:
                raise LedgerError(f"transfer {transfer} is itself a reversal; record a new transfer instead")
            if db.execute("SELECT 1 FROM transfers WHERE reverses = ?", (transfer,)).fetchone():
                raise LedgerError(f"transfer {transfer} is already reversed")
            return self._transfer(db, "reversal", row[1], row[0], int(row[2]), at, reverses=transfer,
                                  memo=f"reverses {row[3]} {transfer}: {reason}")

    def post_charges(self, charges: dict[str, float], utility: str, *, at: float, ref: str | None = None) -> int:
        """Post accrued charges (float fen per account) in one transaction: one transfer
        per account, rounded half-up with the carried remainder; returns transfers made.
        Built with batched statements so a tick of 100,000 accounts is one short commit."""
        for account, exact in charges.items():
            if not math.isfinite(exact):
                raise LedgerError(f"charge for {account} is {exact}; refusing to post")
        revenue = f"revenue:{utility}"
        ids = [resident(a) for a in charges]
        with self._write() as db:
            self._ensure(db, revenue)
            carried = dict(db.execute("SELECT id, remainder FROM accounts WHERE kind = 'resident'").fetchall())
            new = [(i,) for i in ids if i not in carried]
            db.executemany("INSERT INTO accounts(id, kind) VALUES (?, 'resident')", new)
            carried.update((i, 0.0) for (i,) in new)
            next_id = int(db.execute("SELECT COALESCE(MAX(id), 0) FROM transfers").fetchone()[0]) + 1
            exact_fen = np.fromiter(charges.values(), dtype=np.float64, count=len(charges))
            due = exact_fen + np.array([carried[i] for i in ids], dtype=np.float64)
            fen = (np.floor(np.abs(due) + 0.5) * np.sign(due)).astype(np.int64)  # half-up, away from zero
            db.executemany("UPDATE accounts SET remainder = ?, balance = balance - ? WHERE id = ?",
                           zip((due - fen).tolist(), fen.tolist(), ids, strict=True))
            moved = np.flatnonzero(fen)
            transfers = [
                (next_id + n, at, "charge", ids[i], revenue, f, ref) if f > 0 else
                (next_id + n, at, "charge", revenue, ids[i], -f, ref)
                for n, (i, f) in enumerate(zip(moved.tolist(), fen[moved].tolist(), strict=True))]
            db.executemany("INSERT INTO transfers(id, at, kind, debit, credit, amount, ref)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?)", transfers)
            db.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (int(fen.sum()), revenue))
        return len(transfers)

    def charge_once(self, charges: list[tuple[str, str, int, bool]], *, at: float, ref: str) -> int:
        """Fee items and apportioned shares of one run, in one transaction, idempotent on
        (`ref`, account, item): (account, item, fen, billed) each, from the balance or as a
        bill (receivable); a row already charged under `ref` is skipped, so a run that is
        repeated after a crash charges nothing twice. Returns the transfers made."""
        made = 0
        with self._write() as db:
            seen = {(d, c) for d, c in db.execute("SELECT debit, credit FROM transfers WHERE ref = ?", (ref,))}
            for account, item, fen, billed in charges:
                debit = f"receivable:{account}" if billed else resident(account)
                credit = f"revenue:fee:{item}"
                if fen <= 0 or (debit, credit) in seen:
                    continue
                self._transfer(db, "bill" if billed else "fee", debit, credit, int(fen), at, ref=ref)
                seen.add((debit, credit))
                made += 1
        return made

    def issue_bills(self, accounts: list[str], usage_ref: str, *, at: float, ref: str) -> dict[str, int]:
        """Postpaid accounts: bill the charges posted to them under `usage_ref` (a period's
        usage) by moving that sum to receivable:<account>, in one transaction, idempotent
        on `ref` (one bill per account per period). Returns fen billed per account."""
        billed: dict[str, int] = {}
        with self._write() as db:
            done = {d for (d,) in db.execute("SELECT debit FROM transfers WHERE ref = ? AND kind = 'bill'", (ref,))}
            owed: dict[str, int] = defaultdict(int)
            for debit, credit, amount in db.execute(
                    "SELECT debit, credit, amount FROM transfers WHERE ref = ? AND kind = 'charge'", (usage_ref,)):
                if debit.startswith("resident:"):
                    owed[debit[len("resident:"):]] += int(amount)
                elif credit.startswith("resident:"):
                    owed[credit[len("resident:"):]] -= int(amount)
            for account in accounts:
                receivable = f"receivable:{account}"
                if receivable in done or owed.get(account, 0) <= 0:
                    continue
                self._transfer(db, "bill", receivable, resident(account), owed[account], at, ref=ref)
                billed[account] = owed[account]
        return billed

    # -- invariants ---------------------------------------------------------------------

    def check(self) -> None:
        """Raise LedgerError if an invariant fails: entries sum to zero, each balance is the
        sum of its entries, every entry's account exists, SQLite's integrity check."""
        total = self.db.execute("SELECT COALESCE(SUM(amount), 0) FROM entries").fetchone()[0]
        if total != 0:
            raise LedgerError(f"entries sum to {total}, not 0")
        bad = self.db.execute(
            "SELECT a.id, a.balance, COALESCE(SUM(e.amount), 0) FROM accounts a LEFT JOIN entries e ON e.account = a.id"
            " GROUP BY a.id HAVING a.balance != COALESCE(SUM(e.amount), 0) LIMIT 1").fetchone()
        if bad is not None:
            raise LedgerError(f"account {bad[0]} shows {bad[1]} fen but its entries sum to {bad[2]}")
        known = self.db.execute("SELECT COUNT(*) FROM entries e LEFT JOIN accounts a ON a.id = e.account"
                                " WHERE a.id IS NULL").fetchone()[0]
        if known:
            raise LedgerError(f"{known} entries name accounts that do not exist")
        integrity = self.db.execute("PRAGMA integrity_check").fetchone()[0]
        if integrity != "ok":
            raise LedgerError(f"SQLite integrity check: {integrity}")
