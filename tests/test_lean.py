"""The lean stand-ins for what Hypercorn keeps per connection (``traitortrack.lean``): they
behave as the asyncio queue and event they replace, and a worker installs them only over the
Hypercorn they were made for."""

import asyncio

from hypercorn.asyncio import run, tcp_server, worker_context
from hypercorn.protocol import h11, ws_stream

from traitortrack import lean


async def test_the_app_queue_hands_out_messages_in_the_order_they_came():
    queue = lean.AppQueue(10)
    for n in range(3):
        await queue.put({"type": "websocket.receive", "text": str(n)})
    assert [(await queue.get())["text"] for _ in range(3)] == ["0", "1", "2"]


async def test_a_full_app_queue_holds_the_sender_until_the_app_takes_a_message():
    queue = lean.AppQueue(1)
    await queue.put({"type": "websocket.connect"})
    second = asyncio.create_task(queue.put({"type": "websocket.disconnect"}))
    await asyncio.sleep(0.01)
    assert not second.done() and len(queue) == 1
    assert (await queue.get())["type"] == "websocket.connect"
    await asyncio.wait_for(second, 1)
    assert (await queue.get())["type"] == "websocket.disconnect"


async def test_a_getter_cancelled_as_a_message_arrives_leaves_it_for_the_next_getter():
    queue = lean.AppQueue(10)
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    await queue.put({"type": "websocket.connect"})  # wakes the first getter...
    first.cancel()  # ...which is cancelled before it runs
    assert (await asyncio.wait_for(second, 1))["type"] == "websocket.connect"
    assert first.cancelled()


async def test_an_idle_app_queue_and_event_keep_no_waiter_lists():
    queue, event = lean.AppQueue(10), lean.LeanEvent()
    await queue.put({"type": "websocket.connect"})
    await queue.get()
    assert queue._getters is None and queue._putters is None and event._waiters is None


async def test_the_lean_event_wakes_every_waiter_when_set_and_can_be_cleared():
    event = lean.LeanEvent()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters) and not event.is_set()
    await event.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert event.is_set()
    await event.clear()
    assert not event.is_set()


def test_installing_replaces_hypercorns_pieces_once_and_again_is_harmless(restore_hypercorn):
    assert lean.install() and lean.install()
    assert tcp_server.TaskGroup is lean.LeanTaskGroup
    assert run.TCPServer is lean.LeanTCPServer
    assert h11.WSStream is lean.LeanWSStream
    assert worker_context.WorkerContext.event_class is lean.LeanEvent
    assert ws_stream.PerMessageDeflate() is ws_stream.PerMessageDeflate() is lean.NO_COMPRESSION


def test_another_hypercorn_release_keeps_its_own_and_says_so(
    restore_hypercorn, monkeypatch, caplog
):
    monkeypatch.setattr(lean, "MADE_FOR", "0.99.")
    assert not lean.install()
    assert tcp_server.TaskGroup is not lean.LeanTaskGroup
    assert "hypercorn_internals_changed" in caplog.text


def test_a_hypercorn_whose_internals_moved_keeps_its_own_and_says_so(
    restore_hypercorn, monkeypatch, caplog
):
    monkeypatch.setattr(tcp_server, "TaskGroup", type("SomethingElse", (), {}))
    assert not lean.install()
    assert run.TCPServer is not lean.LeanTCPServer
    assert "hypercorn_internals_changed" in caplog.text
