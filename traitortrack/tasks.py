"""Stopping a component's background tasks."""

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)

RECANCEL_AFTER_S = 0.5


async def stop_tasks(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait until each has ended; what one raised other than its
    cancellation is raised here.

    A cancel can be lost: a bus stopped right after it started had its outbox relay carry on
    with its loop, and the stop waited forever (seen in the test suite, about one start in
    fifteen). Python 3.11's ``asyncio.wait_for``, which asyncpg uses, is known to swallow a
    cancel that lands just as what it waits for completes (bpo-42130). A task still running
    shortly after its cancel is cancelled again.
    """
    for task in tasks:
        task.cancel()
    for task in tasks:
        while not task.done():
            await asyncio.wait({task}, timeout=RECANCEL_AFTER_S)
            if not task.done():
                log.warning("task_cancel_lost", extra={"task": task.get_name()})
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
