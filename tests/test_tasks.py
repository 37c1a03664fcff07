"""Stopping background tasks (``traitortrack.tasks.stop_tasks``)."""

import asyncio
import contextlib

import pytest

from traitortrack.tasks import stop_tasks


async def test_a_task_that_loses_its_cancel_is_still_stopped(caplog):
    async def swallows_one_cancel() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # as asyncio.wait_for can on 3.11
            await asyncio.sleep(60)
        await asyncio.sleep(60)

    task = asyncio.create_task(swallows_one_cancel())
    await asyncio.sleep(0)
    await asyncio.wait_for(stop_tasks(task), 5)
    assert task.cancelled()
    assert "task_cancel_lost" in caplog.text


async def test_stopping_raises_what_a_task_failed_with():
    async def fails() -> None:
        raise RuntimeError("broken")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="broken"):
        await stop_tasks(task)


async def test_tasks_that_take_their_cancel_stop_at_once():
    tasks = [asyncio.create_task(asyncio.sleep(60)) for _ in range(3)]
    await asyncio.sleep(0)
    await asyncio.wait_for(stop_tasks(*tasks), 0.2)
    assert all(task.cancelled() for task in tasks)
