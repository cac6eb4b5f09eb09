"""Group commit for top-ups under load: top-ups that arrive together are written in one
ledger transaction (one fsync for many), and each is acknowledged only after the commit
that holds it. A refused top-up (a reused payment id) fails alone; the others commit.
The queue is bounded: when it is full, callers wait (back-pressure), nothing is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from twin.ledger import Ledger, LedgerError, TopUp

#: At most this many top-ups per transaction, and this many waiting.
MAX_BATCH = 256
QUEUE_LIMIT = 10_000


class TopUpBatcher:
    """Example (inside the loop)::

        batcher = TopUpBatcher(ledger, clock=platform.now)
        batcher.start()
        result = await batcher.submit("pay-1", "A-B01-01-01", 10000)
    """

    def __init__(self, ledger: Ledger, clock: Callable[[], float]) -> None:
        self.ledger = ledger
        self.clock = clock
        self.queue: asyncio.Queue[tuple[str, str, int, asyncio.Future[TopUp]]] = asyncio.Queue(QUEUE_LIMIT)
        self.batches = 0
        self.committed = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the writer in the running loop."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Finish what is queued, the batch being committed included (every caller hears
        its result), then stop."""
        if self._task is not None and not self._task.done():
            await self.queue.join()  # not just an empty queue: the last batch may still be committing
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def submit(self, payment_id: str, account: str, amount_fen: int) -> TopUp:
        """Queue a top-up and wait for the commit that holds it; LedgerError if refused."""
        future: asyncio.Future[TopUp] = asyncio.get_running_loop().create_future()
        await self.queue.put((payment_id, account, amount_fen, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < MAX_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                results = await asyncio.to_thread(self.ledger.top_up_many, [(p, a, f) for p, a, f, _ in batch],
                                                  at=self.clock())
            except Exception as err:  # the whole transaction failed: every caller hears it
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(err)
            else:
                self.batches += 1
                for (*_, future), result in zip(batch, results, strict=True):
                    if isinstance(result, TopUp):
                        self.committed += 1
                    if future.done():  # the caller went away; the top-up stands, a retry replays it
                        continue
                    if isinstance(result, LedgerError):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
            finally:
                for _ in batch:
                    self.queue.task_done()
