"""Group commit for child scans (ARCHITECTURE: "Group commit").

Child scans that arrive while a batch is being committed wait in their lane and go together in
the next transaction: one idempotency lookup, one lock of every parent involved (in id order, so
batches never deadlock on each other), one read of the scanned children, the linking rules
applied in memory in arrival order, then one statement that writes every new child, link, count,
scan record and event. Each scan keeps its own answer, recorded under its own client id; a
refused scan is recorded as refused and changes nothing.

A parent's scans always go to the same lane, so two batches of one worker never wait for the
same parent; several lanes let PostgreSQL use more than one core. A lane runs one batch at a
time: under light load a batch is a single scan (no waiting for company), under heavy load it
is whatever queued up during the previous commit.

When another transaction got in between (a child created or linked by another worker, the same
client id recorded elsewhere, a deadlock) the batch rolls back and its scans run again one at a
time, so one scan's trouble never fails its neighbours.
"""

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from traitortrack.db.engine import is_unavailable
from traitortrack.domain import linking
from traitortrack.domain.events import Event, EventKind, NewEvent, parent_json
from traitortrack.domain.linking import BagStatus, ExistingChild, ParentState
from traitortrack.domain.outcomes import BadInput, Outcome, RuleBroken
from traitortrack.monitoring import prometheus
from traitortrack.services.commands import (
    CHANGED_WHILE_SAVING,
    LOCK_WAIT_S,
    Actor,
    Answer,
    NotSaved,
    Result,
    busy,
    check_area,
    connect,
    json_text,
    rejected,
    stored_result,
    transaction,
)

log = logging.getLogger(__name__)

LANES = 4
MAX_BATCH = 64
ATTEMPTS = 3
ACTION = "link_child"
# After a batch's lock wait ran out, how long each of its parents may still wait on its own.
RECHECK_WAIT_S = 0.1

# Everything a batch reads, in one round trip: the parents, locked in id order (so batches
# never deadlock on each other), the scanned children with the parent each is in, and the
# answers already recorded for the batch's client ids. ``stale`` marks a parent that another
# transaction changed after this statement's snapshot was taken (the lock waited for it, or it
# committed just before): the children read in the same snapshot may then be out of date.
# The scanned children, with the parent each is in (the codes are parameter ``$n``).
_CHILDREN = """
    FROM bag AS b LEFT JOIN link AS l ON l.child_id = b.id LEFT JOIN bag AS p ON p.id = l.parent_id
    WHERE b.code = ANY(${n}::text[])
"""
_READ = f"""
    WITH locked AS (
        SELECT id, code, kind, area, child_count, status, xmin::text AS version FROM bag
        WHERE code = ANY($1::text[]) ORDER BY id FOR UPDATE
    )
    SELECT 'parent' AS what, l.id, l.code, l.kind, l.area, l.child_count, l.status,
           l.version <> b.xmin::text AS stale, NULL AS parent_code, NULL::bigint AS user_id,
           NULL AS client_id, NULL AS outcome, NULL AS message, NULL AS error,
           NULL::jsonb AS result
    FROM locked AS l JOIN bag AS b ON b.id = l.id
    UNION ALL
    SELECT 'child', b.id, b.code, b.kind, NULL, b.child_count, NULL, NULL, p.code,
           NULL, NULL, NULL, NULL, NULL, NULL
    {_CHILDREN.format(n=2)}
    UNION ALL
    SELECT 'stored', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           s.user_id, s.client_id, s.outcome, s.message, s.error, s.result
    FROM unnest($3::bigint[], $4::text[]) AS k(user_id, client_id)
    JOIN scan AS s ON s.user_id = k.user_id AND s.client_id = k.client_id
"""
_FIND_CHILDREN = (
    "SELECT b.code, b.id, b.kind, b.child_count, p.code AS parent_code" + _CHILDREN.format(n=1)
)
# Rows are inserted in code order so that concurrent batches take index locks in one order.
_WRITE = """
    WITH created AS (
        INSERT INTO bag (code, kind, area, owner_id)
        SELECT n.code, 'child', n.area, n.owner_id
        FROM unnest($1::text[], $2::text[], $3::bigint[]) AS n(code, area, owner_id)
        ORDER BY n.code
        ON CONFLICT (code) DO NOTHING
        RETURNING id, code
    ), linked AS (
        INSERT INTO link (child_id, parent_id, user_id, created_at)
        SELECT coalesce(l.child_id, created.id), l.parent_id, l.user_id, clock_timestamp()
        FROM unnest($4::text[], $5::bigint[], $6::bigint[], $7::bigint[])
             AS l(code, child_id, parent_id, user_id)
        LEFT JOIN created ON created.code = l.code
        WHERE coalesce(l.child_id, created.id) IS NOT NULL
        ORDER BY l.code
        ON CONFLICT (child_id) DO NOTHING
        RETURNING child_id
    ), counted AS (
        UPDATE bag SET child_count = c.children, status = c.status, updated_at = now()
        FROM unnest($8::bigint[], $9::int[], $10::text[]) AS c(id, children, status)
        WHERE bag.id = c.id
    ), recorded AS (
        INSERT INTO scan (user_id, client_id, action, code, parent_code, area,
                          outcome, error, message, result)
        SELECT r.user_id, r.client_id, $23, r.code, r.parent_code, r.area,
               r.outcome, r.error, r.message, r.result::jsonb
        FROM unnest($11::bigint[], $12::text[], $13::text[], $14::text[], $15::text[],
                    $16::text[], $17::text[], $18::text[], $19::text[])
             AS r(user_id, client_id, code, parent_code, area, outcome, error, message, result)
        ON CONFLICT (user_id, client_id) DO NOTHING
        RETURNING id
    ), written AS (
        INSERT INTO event (kind, area, payload)
        SELECT e.kind, e.area, e.payload::jsonb
        FROM unnest($20::text[], $21::text[], $22::text[]) WITH ORDINALITY
             AS e(kind, area, payload, n)
        ORDER BY e.n
        RETURNING id, at
    )
    SELECT (SELECT count(*) FROM created) AS created, (SELECT count(*) FROM linked) AS linked,
           (SELECT count(*) FROM recorded) AS recorded,
           written.id, written.at
    FROM (SELECT 1) AS one LEFT JOIN written ON true
    ORDER BY written.id
"""


@dataclass(slots=True)
class ChildScan:
    """One child scan waiting for its batch: checked and normalised, not yet decided."""

    actor: Actor
    client_id: str
    parent: str
    child: str
    answer: asyncio.Future[Result]
    connections_lost: int = 0

    @property
    def key(self) -> tuple[int, str]:
        return self.actor.user_id, self.client_id

    def settle(self, result: Result | BaseException) -> None:
        if self.answer.done():  # the caller went away; the scan is recorded all the same
            return
        if isinstance(result, BaseException):
            self.answer.set_exception(result)
        else:
            self.answer.set_result(result)


class _Retry(Exception):
    """Another transaction changed what the batch read; the batch wrote nothing."""


class _Lost(Exception):
    """The connection (or the database) failed under a scan."""

    def __init__(self, error: Exception) -> None:
        super().__init__(repr(error))
        self.error = error


@dataclass
class _Batch:
    """A batch's decisions, made in memory from what it read, and the rows they write."""

    parents: dict[str, asyncpg.Record]
    children: dict[str, tuple[int | None, ExistingChild]]
    states: dict[str, ParentState] = field(default_factory=dict)
    created: list[tuple[str, str | None, int]] = field(default_factory=list)
    links: list[tuple[str, int | None, int, int]] = field(default_factory=list)
    counts: dict[int, tuple[int, str]] = field(default_factory=dict)
    records: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[int, NewEvent]] = field(default_factory=list)  # (scan index, event)

    def decide(self, index: int, scan: ChildScan) -> Result:
        """Apply the linking rules to one scan; a refusal is recorded, bad input is not."""
        try:
            answer = self._link(index, scan)
        except BadInput as error:
            return rejected(error)
        except RuleBroken as error:
            self._record(scan, Answer(Outcome.REJECTED, error.message, {}), error.code)
            return rejected(error)
        self._record(scan, answer, None)
        return Result(answer.outcome, answer.message, None, answer.data)

    def _link(self, index: int, scan: ChildScan) -> Answer:
        row = self.parents.get(scan.parent)
        if row is None:
            raise linking.parent_not_registered(scan.parent)
        if row["kind"] != "parent":
            raise linking.registered_as_child(scan.parent)
        check_area(scan.actor, scan.parent, row["area"])
        parent = self.states.get(scan.parent) or parent_state(row)
        found = self.children.get(scan.child)
        if not linking.check_link(parent, scan.child, found[1] if found else None):
            data = {"parent": parent_json(parent.code, parent.children, parent.status)}
            return Answer(Outcome.DUPLICATE, linking.duplicate_message(scan.child, parent), data)
        child_id = found[0] if found else None
        if found is None:
            self.created.append((scan.child, row["area"], scan.actor.user_id))
        self.links.append((scan.child, child_id, row["id"], scan.actor.user_id))
        self.children[scan.child] = (child_id, ExistingChild(False, 0, parent.code))
        children = parent.children + 1
        after = self.states[scan.parent] = ParentState(
            parent.code, children, linking.status_for(children)
        )
        self.counts[row["id"]] = (children, after.status.value)
        data = {"parent": parent_json(after.code, after.children, after.status)}
        by = scan.actor.username
        linked = {**data, "child": scan.child, "by": by}
        self.events.append((index, NewEvent(EventKind.CHILD_LINKED, row["area"], linked)))
        if after.status == BagStatus.COMPLETED:
            self.events.append(
                (index, NewEvent(EventKind.PARENT_COMPLETED, row["area"], {**data, "by": by}))
            )
        return Answer(Outcome.OK, linking.linked_message(scan.child, after), data)

    def _record(self, scan: ChildScan, answer: Answer, error: str | None) -> None:
        self.records.append(
            (
                scan.actor.user_id,
                scan.client_id,
                scan.child,
                scan.parent,
                scan.actor.area,
                answer.outcome.value,
                error,
                answer.message,
                json_text(answer.data),
            )
        )

    async def write(self, pg: asyncpg.Connection) -> list[asyncpg.Record]:
        """Write every decision in one statement; :class:`_Retry` if another transaction won a
        race for one of its rows (the caller rolls back)."""
        if not self.records:
            return []
        rows = await pg.fetch(
            _WRITE,
            *_columns(self.created, 3),
            *_columns(self.links, 4),
            list(self.counts),
            [c for c, _ in self.counts.values()],
            [s for _, s in self.counts.values()],
            *_columns(self.records, 9),
            [e.kind.value for _, e in self.events],
            [e.area for _, e in self.events],
            [json_text(e.data) for _, e in self.events],
            ACTION,
        )
        first = rows[0]
        if (first["created"], first["linked"], first["recorded"]) != (
            len(self.created),
            len(self.links),
            len(self.records),
        ):
            raise _Retry
        return rows if self.events else []


def parent_state(row: asyncpg.Record) -> ParentState:
    return ParentState(row["code"], row["child_count"], BagStatus(row["status"]))


def _existing(row: asyncpg.Record) -> ExistingChild:
    return ExistingChild(row["kind"] == "parent", row["child_count"], row["parent_code"])


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows to the column arrays that ``unnest`` takes."""
    return [[row[i] for row in rows] for i in range(width)]


class GroupCommit:
    """The lanes of one engine on one event loop."""

    def __init__(self, engine: AsyncEngine, lanes: int = LANES, max_batch: int = MAX_BATCH) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.loop = asyncio.get_running_loop()
        self._queues: list[deque[ChildScan]] = [deque() for _ in range(lanes)]
        self._drains: list[asyncio.Task[None] | None] = [None] * lanes

    async def link(self, actor: Actor, client_id: str, parent: str, child: str) -> Result:
        scan = ChildScan(actor, client_id, parent, child, self.loop.create_future())
        lane = hash(parent) % len(self._queues)
        self._queues[lane].append(scan)
        if self._drains[lane] is None:
            self._drains[lane] = asyncio.create_task(self._drain(lane))
        return await scan.answer

    async def idle(self) -> None:
        """Wait until every queued scan has its answer (before the engine is disposed)."""
        while drains := [task for task in self._drains if task is not None]:
            await asyncio.gather(*drains, return_exceptions=True)

    async def _drain(self, lane: int) -> None:
        """Commit the lane's batches one after another, on one connection while it works."""
        queue = self._queues[lane]
        try:
            while queue:
                async with connect(self.engine) as (_, pg):
                    while queue:
                        batch = [queue.popleft() for _ in range(min(len(queue), self.max_batch))]
                        if not await self._commit(pg, batch, queue):
                            break  # the connection may be broken: take another
        except NotSaved as error:  # no connection at all: answer what waits, then stop
            _not_saved(queue, error)
            queue.clear()
        finally:
            self._drains[lane] = None

    async def _commit(
        self,
        pg: asyncpg.Connection,
        batch: list[ChildScan],
        queue: deque[ChildScan],
        lock_wait_s: float = LOCK_WAIT_S,
    ) -> bool:
        """Commit a batch and answer its scans; False when the connection failed (scans not
        yet tried go back to the front of the lane's queue)."""
        try:
            results = await self._attempt(pg, batch, lock_wait_s)
        except asyncpg.LockNotAvailableError:
            return await self._around_busy_parents(pg, batch, queue)
        except (_Retry, asyncpg.IntegrityConstraintViolationError,
                asyncpg.TransactionRollbackError) as error:  # fmt: skip
            why = type(error).__name__
            log.info("group commit retried one by one", extra={"scans": len(batch), "why": why})
            return await self._commit_each(pg, batch, queue)
        except Exception as error:
            if _lost(pg, error):
                _again_or_not_saved(batch, queue, error)
                return False
            # The culprit is found (and logged, with its traceback) when each is tried alone.
            log.warning("group commit failed; trying its scans one by one",
                        extra={"scans": len(batch), "error": repr(error)})  # fmt: skip
            return await self._commit_each(pg, batch, queue)
        except asyncio.CancelledError as error:
            for scan in batch:
                scan.settle(error)
            raise
        prometheus.SCAN_BATCH.observe(len(batch))
        for scan, result in zip(batch, results, strict=True):
            scan.settle(result)
        return True

    async def _around_busy_parents(
        self, pg: asyncpg.Connection, batch: list[ChildScan], queue: deque[ChildScan]
    ) -> bool:
        """A parent stayed locked elsewhere past the lock wait: its scans are answered busy and
        the other parents' scans are committed. PostgreSQL does not say which parent it was,
        so each parent is tried on its own, now waiting only briefly for its lock."""
        parents = list(dict.fromkeys(scan.parent for scan in batch))
        if len(parents) == 1:
            for scan in batch:
                scan.settle(rejected(busy(scan.parent)))
            return True
        for index, parent in enumerate(parents):
            scans = [scan for scan in batch if scan.parent == parent]
            if not await self._commit(pg, scans, queue, RECHECK_WAIT_S):
                queue.extendleft(reversed([s for s in batch if s.parent in parents[index + 1 :]]))
                return False
        return True

    async def _commit_each(
        self, pg: asyncpg.Connection, batch: list[ChildScan], queue: deque[ChildScan]
    ) -> bool:
        for index, scan in enumerate(batch):
            try:
                await self._commit_alone(pg, scan)
            except _Lost as lost:
                queue.extendleft(reversed(batch[index + 1 :]))
                _again_or_not_saved([scan], queue, lost.error)
                return False
        return True

    async def _commit_alone(self, pg: asyncpg.Connection, scan: ChildScan) -> None:
        """Commit one scan; :class:`_Lost` when the connection failed under it."""
        for _ in range(ATTEMPTS):
            try:
                [result] = await self._attempt(pg, [scan])
            except (_Retry, asyncpg.TransactionRollbackError):
                continue
            except asyncpg.IntegrityConstraintViolationError:
                # A constraint caught a race the checks could not see (a bag deleted while it
                # was being linked). Nothing was written; a retry sees the new state.
                result = rejected(CHANGED_WHILE_SAVING)
            except asyncpg.LockNotAvailableError:
                result = rejected(busy(scan.parent))
            except Exception as error:
                if _lost(pg, error):
                    raise _Lost(error) from error
                log.exception("a scan could not be saved", extra={"action": ACTION})
                result = NotSaved(repr(error))
            except asyncio.CancelledError as error:
                scan.settle(error)
                raise
            prometheus.SCAN_BATCH.observe(1)
            scan.settle(result)
            return
        busy_child = f"{scan.child} is being scanned elsewhere right now; scan it again."
        scan.settle(rejected(BadInput("BUSY", busy_child)))

    async def _attempt(
        self, pg: asyncpg.Connection, batch: list[ChildScan], lock_wait_s: float = LOCK_WAIT_S
    ) -> list[Result]:
        child_codes = sorted({s.child for s in batch})
        async with transaction(pg, lock_wait_s):
            rows = await pg.fetch(
                _READ,
                sorted({s.parent for s in batch}),
                child_codes,
                [s.actor.user_id for s in batch],
                [s.client_id for s in batch],
            )
            parents = [row for row in rows if row["what"] == "parent"]
            children = [row for row in rows if row["what"] == "child"]
            if any(row["stale"] for row in parents):  # read them again, after the locks
                children = await pg.fetch(_FIND_CHILDREN, child_codes)
            stored = {
                (row["user_id"], row["client_id"]): stored_result(row)
                for row in rows
                if row["what"] == "stored"
            }
            decisions = _Batch(
                {row["code"]: row for row in parents},
                {row["code"]: (row["id"], _existing(row)) for row in children},
            )
            results: list[Result] = []
            first: dict[tuple[int, str], int] = {}
            for index, scan in enumerate(batch):
                if scan.key in stored:
                    results.append(stored[scan.key])
                elif scan.key in first:  # the same scan sent twice in one batch
                    results.append(replace(results[first[scan.key]], replayed=True))
                else:
                    first[scan.key] = index
                    results.append(decisions.decide(index, scan))
            written = await decisions.write(pg)
        return _with_events(results, decisions.events, written)


def _lost(pg: asyncpg.Connection, error: Exception) -> bool:
    """Whether the batch failed because the connection or the database did (not the batch)."""
    return pg.is_closed() or is_unavailable(error)


def _again_or_not_saved(scans: list[ChildScan], queue: deque[ChildScan], error: Exception) -> None:
    """The connection failed under these scans: they go once more, on a fresh connection (a
    killed backend or a connection that died in the pool unnoticed); a second loss means the
    database is in trouble, and they are not saved."""
    again = [scan for scan in scans if scan.connections_lost == 0]
    for scan in again:
        scan.connections_lost += 1
    queue.extendleft(reversed(again))
    if len(again) < len(scans):
        _not_saved((scan for scan in scans if scan not in again), error)


def _not_saved(scans: Iterable[ChildScan], error: Exception) -> None:
    scans = list(scans)
    log.warning("scans not saved: database unavailable",
                extra={"scans": len(scans), "error": repr(error)})  # fmt: skip
    for scan in scans:
        scan.settle(error if isinstance(error, NotSaved) else NotSaved(repr(error)))


def _with_events(
    results: list[Result], events: list[tuple[int, NewEvent]], rows: list[asyncpg.Record]
) -> list[Result]:
    """Give each scan's answer the events it published, with their ids and times."""
    published: dict[int, list[Event]] = {}
    for (index, event), row in zip(events, rows, strict=True):
        published.setdefault(index, []).append(
            Event(row["id"], event.kind.value, row["at"].isoformat(), event.area, event.data)
        )
    return [
        replace(result, events=tuple(published[i])) if i in published else result
        for i, result in enumerate(results)
    ]


_lanes: weakref.WeakKeyDictionary[AsyncEngine, GroupCommit] = weakref.WeakKeyDictionary()


def group_commit(engine: AsyncEngine) -> GroupCommit:
    """The engine's group commit on the running loop (created on first use)."""
    found = _lanes.get(engine)
    if found is None or found.loop is not asyncio.get_running_loop():
        found = _lanes[engine] = GroupCommit(engine)
    return found


async def settle(engine: AsyncEngine) -> None:
    """Answer every scan still queued for ``engine`` (a stop calls this before disposing it)."""
    found = _lanes.get(engine)
    if found is not None and found.loop is asyncio.get_running_loop():
        await found.idle()
