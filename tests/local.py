"""Local plumbing for tests: a free port on 127.0.0.1, waiting for what another task, thread or
process makes true, and a stand-in served from a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

T = TypeVar("T")

POLL_SECONDS = 0.01  # a condition is seen within 10 ms of becoming true


def free_port() -> int:
    """A port nothing listens on right now (for a fixed web.port, or a refused connection)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_until(condition: Callable[[], object], seconds: float = 20) -> None:
    """Poll `condition` until it is truthy; TimeoutError after `seconds` (generous for a loaded
    machine: it returns as soon as the condition holds). For state that no event announces, such
    as a log line, a row another thread wrote, or a fake's counter."""
    async with asyncio.timeout(seconds):
        while True:
            if condition():
                return
            await asyncio.sleep(POLL_SECONDS)


@contextlib.contextmanager
def in_background(service: AbstractAsyncContextManager[T]) -> Iterator[T]:
    """Enter an async stand-in (a fake Slack or Discord) on an event loop in another thread, so
    a test can call the synchronous CLI (`main([...])`, which runs its own loop) against it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        entered = asyncio.run_coroutine_threadsafe(service.__aenter__(), loop).result(30)
        try:
            yield entered
        finally:
            closing = service.__aexit__(None, None, None)
            asyncio.run_coroutine_threadsafe(closing, loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
