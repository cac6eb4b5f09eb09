"""The ledger under SIGKILL: every payment lands exactly once after the client retries."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from twin.ledger import Ledger

WORKER = Path(__file__).with_name("ledger_worker.py")
KILL_POINTS = 20
PAYMENTS = 1000


def run_worker(ledger: Path, payments: Path, kill_after_acks: int | None,
               delay_s: float = 0.0) -> tuple[set[str], bool]:
    """Run the worker; kill it with SIGKILL once it has acknowledged `kill_after_acks`
    top-ups (it is mid-flight then: other threads are inside transactions); return the
    acknowledged ids."""
    proc = subprocess.Popen([sys.executable, str(WORKER), str(ledger), str(payments), "4"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked: set[str] = set()
    for line in proc.stdout:
        if line.startswith("ack "):
            acked.add(line.split()[1])
            if kill_after_acks is not None and len(acked) >= kill_after_acks:
                time.sleep(delay_s)  # land the kill anywhere: inside a transaction, between commit and ack
                proc.send_signal(signal.SIGKILL)
                break
    rest, _ = proc.communicate(timeout=300)
    acked |= {line.split()[1] for line in rest.splitlines() if line.startswith("ack ")}
    return acked, proc.returncode == -signal.SIGKILL


def test_every_payment_lands_exactly_once_across_kills(tmp_path, capsys):
    """A process doing 1,000 concurrent top-ups and deductions is killed with SIGKILL at
    20 random points; after each, the client retries every payment id it never saw
    acknowledged. In the end each payment landed exactly once, the integrity check is ok
    and the invariants hold."""
    rng = random.Random(20261122)
    ledger_path = tmp_path / "ledger.sqlite"
    amounts = {f"pay-{i:04d}": (f"A-{i % 37}", rng.randint(100, 50_000)) for i in range(PAYMENTS)}
    acked: set[str] = set()
    kills = 0
    landed_unacked = 0  # committed when the process died, before it could say so
    while True:
        pending = [p for p in amounts if p not in acked]
        if ledger_path.exists():
            probe = Ledger(ledger_path)
            landed = {r[0] for r in probe.db.execute("SELECT payment_id FROM payments")}
            probe.close()
            landed_unacked += len(landed - acked)
        if not pending:
            break
        payments = tmp_path / f"batch-{kills}.txt"
        payments.write_text("\n".join(f"{p},{amounts[p][0]},{amounts[p][1]}" for p in pending))
        last = kills >= KILL_POINTS or len(pending) < 2
        kill_after = None if last else rng.randint(1, 15)
        now_acked, killed = run_worker(ledger_path, payments, kill_after, rng.uniform(0.0, 0.008))
        acked |= now_acked
        kills += killed
    assert acked == set(amounts)
    assert kills >= KILL_POINTS
    ledger = Ledger(ledger_path)
    ledger.check()
    rows = ledger.db.execute("SELECT ref, amount FROM transfers WHERE kind = 'topup'").fetchall()
    assert sorted(r[0] for r in rows) == sorted(amounts)  # once each: never lost, never doubled
    assert all(amount == amounts[ref][1] for ref, amount in rows)
    deducted = ledger.db.execute("SELECT COALESCE(SUM(amount), 0) FROM transfers WHERE kind = 'deduction'")
    deducted = deducted.fetchone()[0]
    residents = sum(ledger.balance(f"A-{i}") for i in range(37))
    assert residents == sum(a for _, a in amounts.values()) - deducted
    with capsys.disabled():
        print(f"\nledger crash test: {kills} SIGKILLs, {len(rows)} payments landed once each "
              f"({landed_unacked} had landed unacknowledged and were replayed, not doubled), "
              f"{deducted} fen deducted, integrity ok")
