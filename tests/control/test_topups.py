"""Group commit: concurrent top-ups share transactions, each acknowledged after its commit,
a refused one fails alone."""

from __future__ import annotations

import asyncio

import pytest

from control.topups import TopUpBatcher
from twin.ledger import Ledger, LedgerError


def test_concurrent_top_ups_share_commits_and_fail_alone(tmp_path):
    """500 concurrent top-ups land once each in fewer transactions than top-ups; a reused
    payment id with another amount is refused without taking the others with it."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.top_up("dup", "A-1", 100, at=0.0)

    async def scenario() -> tuple[list, TopUpBatcher]:
        batcher = TopUpBatcher(ledger, clock=lambda: 1.0)
        batcher.start()
        jobs = [batcher.submit(f"p-{i}", f"A-{i % 7}", 10 + i) for i in range(500)]
        jobs.append(batcher.submit("dup", "A-1", 999))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        await batcher.stop()
        return results, batcher

    results, batcher = asyncio.run(scenario())
    assert isinstance(results[-1], LedgerError)
    assert all(not isinstance(r, Exception) and not r.replay for r in results[:-1])
    assert batcher.committed == 500 and batcher.batches < 500
    assert sum(ledger.balance(f"A-{k}") for k in range(7)) == 100 + sum(10 + i for i in range(500))
    ledger.check()
    with pytest.raises(LedgerError):
        ledger.top_up("dup", "A-1", 999, at=2.0)
