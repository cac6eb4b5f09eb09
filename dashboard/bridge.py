"""The way from Dash's worker threads to the platform.

Dash runs as a WSGI application in a2wsgi's thread pool; the platform lives on the asyncio
loop and guards its world and books with an asyncio lock. `Bridge.locked(fn)` runs `fn` in
a worker thread while the loop holds that lock for it, so a page never reads a half-moved
world and the loop never waits on a page. `Bridge.wait(coro)` runs a coroutine on the loop
(a top-up through the group-commit batcher). The loop is learnt from the first request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from control.runtime import Platform

T = TypeVar("T")
#: Seconds a page waits for the lock or the loop before it gives up with an error.
TIMEOUT_S = 30.0


class Bridge:
    """Runs work for Dash callbacks under the platform's lock, on the platform's loop."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.loop: asyncio.AbstractEventLoop | None = None

    def locked(self, fn: Callable[[], T]) -> T:
        """`fn()` in a worker thread while the platform lock is held; its result."""
        if self.loop is None:  # no loop seen yet (a test driving the WSGI app alone)
            return fn()

        async def hold() -> T:
            async with self.platform.lock:
                return await asyncio.to_thread(fn)

        return asyncio.run_coroutine_threadsafe(hold(), self.loop).result(TIMEOUT_S)

    def wait(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the platform's loop and wait for its result."""
        if self.loop is None:
            return asyncio.run(coro)
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT_S)

    def asgi(self, app: Any) -> Any:
        """Wrap an ASGI app so the first request teaches the bridge its loop."""

        async def learn(scope: Any, receive: Any, send: Any) -> None:
            if self.loop is None:
                self.loop = asyncio.get_running_loop()
            await app(scope, receive, send)

        return learn
