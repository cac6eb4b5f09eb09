"""Notifications: every alarm transition goes to the log and to each HTTP webhook.

A webhook has its own bounded queue and worker: a receiver that is slow or down never
slows the platform. The worker retries the oldest message with exponential backoff (1 s
doubling to 60 s) until the receiver takes it, so messages arrive in order and none is
lost while the queue has room; when the queue is full the oldest message is dropped and
the drop counted and logged (once per outage). `publish` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

import httpx

log = logging.getLogger("metertwin.notify")

#: Messages a webhook keeps while its receiver is away.
QUEUE_LIMIT = 10_000
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 60.0
POST_TIMEOUT_S = 5.0


class Webhook:
    """One receiver URL with its queue. Example: ``Webhook("http://127.0.0.1:9000/alarms")``."""

    def __init__(self, url: str, limit: int = QUEUE_LIMIT, backoff_start_s: float = BACKOFF_START_S) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook {url!r}: use an http:// or https:// URL")
        self.url = url
        self.queue: collections.deque[dict[str, Any]] = collections.deque()
        self.limit = limit
        self.backoff_start_s = backoff_start_s
        self.sent = 0
        self.dropped = 0
        self.failing_since: float | None = None
        self._wake = asyncio.Event()

    def put(self, message: dict[str, Any]) -> None:
        """Queue a message (loop thread only); the oldest goes when the queue is full."""
        if len(self.queue) >= self.limit:
            self.queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("webhook %s: queue full, %d oldest messages dropped", self.url, self.dropped)
        self.queue.append(message)
        self._wake.set()

    async def run(self, client: httpx.AsyncClient) -> None:
        """Deliver queued messages in order, forever, retrying with backoff."""
        backoff = self.backoff_start_s
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            message = self.queue[0]
            try:
                response = await client.post(self.url, json=message, timeout=POST_TIMEOUT_S)
                response.raise_for_status()
            except (httpx.HTTPError, OSError) as err:
                if self.failing_since is None:  # an outage is logged once, then quietly
                    self.failing_since = time.monotonic()
                    log.error("webhook %s failing (%s); retrying with backoff, queue kept", self.url, err)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            self.queue.popleft()
            self.sent += 1
            backoff = self.backoff_start_s
            if self.failing_since is not None:
                log.warning("webhook %s back after %.0fs", self.url, time.monotonic() - self.failing_since)
                self.failing_since = None


class Notifier:
    """The channels: the log always, and webhooks. Start with `start()` inside the loop."""

    def __init__(self, webhook_urls: list[str] | None = None) -> None:
        self.webhooks = [Webhook(url) for url in webhook_urls or []]
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._early: list[dict[str, Any]] = []  # published before the loop started

    def start(self) -> None:
        """Start the webhook workers in the running loop."""
        self.loop = asyncio.get_running_loop()
        self._client = httpx.AsyncClient()
        self._tasks = [asyncio.create_task(w.run(self._client)) for w in self.webhooks]
        for message in self._early:
            for webhook in self.webhooks:
                webhook.put(message)
        self._early.clear()

    async def stop(self) -> None:
        """Stop the workers (what is still queued is logged, not sent)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._client is not None:
            await self._client.aclose()
        for w in self.webhooks:
            if w.queue:
                log.warning("webhook %s: %d messages not delivered at shutdown", w.url, len(w.queue))

    def publish(self, message: dict[str, Any]) -> None:
        """Send a message to every channel; safe from any thread, never blocks."""
        level = logging.WARNING if message.get("severity") in ("major", "critical") else logging.DEBUG
        log.log(level, "alarm %s: %s %s %s", message.get("event"), message.get("kind"), message.get("twin") or
                message.get("account"), message.get("evidence"))  # minor ones: /api/alarms, webhooks
        if not self.webhooks:
            return
        if self.loop is None:
            self._early.append(message)
            return
        for webhook in self.webhooks:
            self.loop.call_soon_threadsafe(webhook.put, message)

    def status(self) -> list[dict[str, Any]]:
        """Per webhook: queued, sent, dropped, failing."""
        return [{"url": w.url, "queued": len(w.queue), "sent": w.sent, "dropped": w.dropped,
                 "failing": w.failing_since is not None} for w in self.webhooks]
