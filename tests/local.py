"""Local plumbing for tests: a free port on 127.0.0.1, and waiting for what another task, thread
or process makes true."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

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
