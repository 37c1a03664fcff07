"""The slow-query log: every statement slower than ``SLOW_QUERY_MS``, by its shape.

Two paths reach PostgreSQL and both are timed: SQLAlchemy's (its cursor events on the sync
engine) and the scan path's direct asyncpg calls (asyncpg's query logger on each pooled
connection). Each slow statement is logged once, with its shape (literals replaced by ``?``)
and duration, and counted per shape in a bounded table that the health page shows.
"""

import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

KEEP_SHAPES = 200
SHAPE_LENGTH = 400

_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_STRINGS = re.compile(r"'(?:[^']|'')*'")
_NUMBERS = re.compile(r"(?<![\w])(?:-?\d+(?:\.\d+)?|\$\d+)\b")
_LISTS = re.compile(r"\((?:\s*\?\s*,)+\s*\?\s*\)")
_SPACE = re.compile(r"\s+")


def statement_shape(statement: str) -> str:
    """The statement with its literals and parameters taken out, so that its runs group
    together however they were sent."""
    shape = _COMMENTS.sub(" ", statement)
    shape = _STRINGS.sub("?", shape)
    shape = _NUMBERS.sub("?", shape)
    shape = _LISTS.sub("(?, ...)", shape)
    shape = _SPACE.sub(" ", shape).strip()
    return shape if len(shape) <= SHAPE_LENGTH else shape[: SHAPE_LENGTH - 1] + "…"


@dataclass
class SlowShape:
    shape: str
    count: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0
    last_ms: float = 0.0
    last_at: float = 0.0


class SlowQueryLog:
    """Slow statements of this process, by shape; the least recently seen shape goes first
    when the table is full, so memory stays flat however varied the statements are."""

    def __init__(
        self, threshold_ms: float = 100.0, on_slow: Callable[[], None] = lambda: None
    ) -> None:
        self.threshold_ms = threshold_ms
        self.on_slow = on_slow
        self.shapes: dict[str, SlowShape] = {}

    def observe(self, statement: str, ms: float) -> None:
        if ms >= self.threshold_ms:
            self.record(statement, ms)

    def record(self, statement: str, ms: float) -> None:
        shape = statement_shape(statement)
        found = self.shapes.pop(shape, None) or SlowShape(shape)
        found.count += 1
        found.total_ms += ms
        found.max_ms = max(found.max_ms, ms)
        found.last_ms = ms
        found.last_at = time.time()
        self.shapes[shape] = found  # re-inserted: the dict's order is "least recently seen first"
        while len(self.shapes) > KEEP_SHAPES:
            del self.shapes[next(iter(self.shapes))]
        self.on_slow()
        log.warning("slow query", extra={"ms": round(ms, 1), "shape": shape})

    def top(self, limit: int = 20) -> list[dict[str, Any]]:
        """The shapes that cost the most time in all."""
        ranked = sorted(self.shapes.values(), key=lambda s: s.total_ms, reverse=True)
        return [
            {**asdict(s), "total_ms": round(s.total_ms, 1), "max_ms": round(s.max_ms, 1),
             "last_ms": round(s.last_ms, 1)}
            for s in ranked[:limit]
        ]  # fmt: skip


class _Timings:
    """Per pooled connection: when its SQLAlchemy statement started, and the last slow one
    SQLAlchemy reported (asyncpg logs ``executemany`` too: that one must not count twice)."""

    __slots__ = ("reported", "started")

    def __init__(self) -> None:
        self.started = 0.0
        self.reported: str | None = None


def watch(engine: AsyncEngine, slow: SlowQueryLog) -> Callable[[], None]:
    """Time every statement on ``engine``; returns the function that stops watching."""

    def timings(conn: Any) -> _Timings:
        found = conn.info.get("slow_query_timings")
        if found is None:
            found = conn.info["slow_query_timings"] = _Timings()
        return found

    def before(conn: Any, _cursor: Any, _statement: str, *_: Any) -> None:
        timings(conn).started = time.perf_counter()

    def after(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        found = timings(conn)
        ms = (time.perf_counter() - found.started) * 1000
        if ms >= slow.threshold_ms:
            found.reported = statement
            slow.record(statement, ms)

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        found = record.info.setdefault("slow_query_timings", _Timings())

        def direct(query: Any) -> None:  # asyncpg's LoggedQuery, called soon after the statement
            if query.query == found.reported:
                found.reported = None
                return
            slow.observe(query.query, query.elapsed * 1000)

        dbapi_connection.driver_connection.add_query_logger(direct)

    hooks = [
        ("before_cursor_execute", before),
        ("after_cursor_execute", after),
        ("connect", on_connect),
    ]
    for name, hook in hooks:
        event.listen(engine.sync_engine, name, hook)

    def stop() -> None:
        for name, hook in hooks:
            event.remove(engine.sync_engine, name, hook)

    return stop
