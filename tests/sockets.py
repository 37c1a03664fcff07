"""Helpers for tests that talk to ``/ws`` through the Quart test client."""

import asyncio
import json
from typing import Any

from quart.testing.connections import WebsocketDisconnectError


async def receive_until(ws: Any, kind: str, seconds: float = 3.0) -> dict[str, Any]:
    """The next message of ``kind``, skipping the others."""
    async with asyncio.timeout(seconds):
        while True:
            message = json.loads(await ws.receive())
            if message["type"] == kind:
                return message


async def opened(ws: Any, last_event_id: int | None = None) -> dict[str, Any]:
    """Say hello; returns the welcome."""
    await ws.send(json.dumps({"type": "hello", "last_event_id": last_event_id}))
    return await receive_until(ws, "welcome")


async def scan(ws: Any, scan_id: str, code: str, parent: str | None = None) -> dict[str, Any]:
    """Send a parent scan (or a child scan into ``parent``); returns its answer: the ack, or the
    error that refused it."""
    message = {"type": "scan", "id": scan_id, "code": code, "as": "child" if parent else "parent"}
    await ws.send(json.dumps(message | ({"parent": parent} if parent else {})))
    async with asyncio.timeout(3):
        while True:
            answer = json.loads(await ws.receive())
            if answer["type"] in {"ack", "error"}:
                return answer


async def close_code(ws: Any, seconds: float) -> int:
    """Wait for the server to close the socket; returns its close code."""
    async with asyncio.timeout(seconds):
        while True:
            try:
                await ws.receive()
            except WebsocketDisconnectError as closed:
                return int(closed.args[0])


async def events_seen(ws: Any, seconds: float) -> list[dict[str, Any]]:
    """Every event the socket is sent within ``seconds``."""
    seen: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = json.loads(await ws.receive())
                if message["type"] == "events":
                    seen.extend(message["events"])
    except TimeoutError:
        return seen
