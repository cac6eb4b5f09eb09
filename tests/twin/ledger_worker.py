"""A separate process for the ledger crash test: top-ups and deductions from several
threads, each with its own connection; prints `ack <payment id>` once a top-up is
committed. Usage: python ledger_worker.py LEDGER_PATH PAYMENTS_FILE THREADS."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from twin.ledger import Ledger  # noqa: E402

lock = threading.Lock()


def work(path: Path, jobs: list[tuple[str, str, int]]) -> None:
    ledger = Ledger(path)
    for n, (payment, account, amount) in enumerate(jobs):
        ledger.top_up(payment, account, amount, at=float(n))
        with lock:
            sys.stdout.write(f"ack {payment}\n")
            sys.stdout.flush()
        if n % 3 == 0:
            ledger.deduct(account, 1 + amount // 10, "electric", at=float(n))
    ledger.close()


def main() -> None:
    path, payments_file, threads = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    jobs = [tuple(line.split(",")) for line in payments_file.read_text().split()]
    parsed = [(p, a, int(x)) for p, a, x in jobs]
    workers = [threading.Thread(target=work, args=(path, parsed[i::threads])) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    sys.stdout.write("done\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
