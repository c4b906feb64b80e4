"""What the background loops share: the logger, the errors that mean the server is away,
and stopping tasks without hanging.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from redis import exceptions as rexc

log = logging.getLogger("tidings.transports.redis")

# Errors that mean "the server is (temporarily) not there": reconnect with backoff.
_GONE = (rexc.ConnectionError, rexc.TimeoutError, OSError)


async def _stop(tasks: Sequence[asyncio.Task[None]], grace: float = 2.0) -> None:
    """Cancel background loops and wait for them, but never forever.

    redis-py can swallow a cancellation that races with its own timeouts; the loops also check
    a closed flag, and this bound keeps close() from hanging if one still misses both.
    """
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        log.warning("redis transport: background task %s did not stop within %.1fs", task, grace)


async def _noop() -> None:
    return None
