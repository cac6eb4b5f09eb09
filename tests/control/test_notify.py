"""Webhooks: a receiver that is down never blocks the platform and gets every alarm, in
order, once it is back; a full queue drops the oldest."""

from __future__ import annotations

import asyncio
import time

from control.notify import Notifier, Webhook
from tests.support import Receiver, free_tcp_port


def test_a_receiver_that_is_down_gets_everything_in_order_when_back():
    """Publishing while the receiver is down returns at once; once it is up, every
    message arrives, in the order published."""
    port = free_tcp_port()

    async def scenario() -> list:
        notifier = Notifier()
        notifier.webhooks = [Webhook(f"http://127.0.0.1:{port}/alarms", backoff_start_s=0.05)]
        notifier.start()
        started = time.perf_counter()
        for i in range(5):
            notifier.publish({"event": "raised", "id": i, "kind": "offline", "twin": f"B01-01-0{i}.em"})
        assert time.perf_counter() - started < 1.0  # not waiting on the dead receiver
        await asyncio.sleep(0.3)
        assert notifier.webhooks[0].failing_since is not None and notifier.webhooks[0].sent == 0
        receiver = Receiver(port)
        try:
            for _ in range(400):
                if len(receiver.received) == 5:
                    break
                await asyncio.sleep(0.05)
        finally:
            await notifier.stop()
            receiver.close()
        return receiver.received

    received = asyncio.run(scenario())
    assert [m["id"] for m in received] == [0, 1, 2, 3, 4]


def test_a_full_queue_drops_the_oldest():
    """With the receiver away and the queue full, the oldest messages go first and are
    counted."""
    webhook = Webhook("http://127.0.0.1:9/none", limit=2)
    for i in range(5):
        webhook.put({"id": i})
    assert [m["id"] for m in webhook.queue] == [3, 4]
    assert webhook.dropped == 3
