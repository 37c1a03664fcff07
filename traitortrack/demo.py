"""Demo data: users of every role, parents and children, links, scans, outbox events and bills.

Rows go in with binary COPY, a batch of parents per transaction on a few connections at once,
never row by row. Re-runnable: parent codes continue after the highest demo-shaped code stored
(SB00000..SB99999, then M444-00000..M444-99999: 200,000 parents in all); child codes (``CB`` +
the parent's 6-digit ordinal + 2-digit index) and scan client ids derive from the parent, so a
second run never collides with the first. Demo accounts (``demo_*``) are reused, never reset.
Each batch commits on its own: an interrupted run leaves whole parents, and the next continues.

At warehouse scale (``bags``/``history``: totals to fill the database up to, so a second run with
the same totals adds nothing) the parents span a year, and each may carry re-scans, with their
``parent.scanned`` events, to make up a year of scan and event history.
"""

import asyncio
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine
from tqdm import tqdm

from traitortrack.db.retention import reserve_ids
from traitortrack.domain import linking
from traitortrack.domain.bills import BillStatus, BillTotals
from traitortrack.domain.events import EventKind, parent_json
from traitortrack.domain.linking import MAX_CHILDREN, ParentState, status_for
from traitortrack.domain.roles import DEFAULT_AREAS, MAX_DISPATCHERS_PER_AREA, Role
from traitortrack.security import hash_password

DEMO_PASSWORD = "Demo-pass1"
DISPATCHERS_PER_AREA = 3
BATCH_PARENTS = 1000
WORKERS = 3
PER_PREFIX = 100_000
FULL_SHARE = 0.85  # of parents with all 30 children; the rest are part-filled
BILL_EVENTS_PER_PARENT = 3  # at most: a bill's created, bag-linked and completed events
DESCRIPTION = "Demo dispatch"
Rec = tuple[Any, ...]
Bill = tuple[int, list[int], bool]  # capacity, indexes of its parents, completed
TABLES = {  # in FK order
    "bag": "id code kind area status child_count owner_id created_at updated_at",
    "link": "child_id parent_id user_id created_at",
    "scan": "user_id client_id action code parent_code area outcome message result created_at",
    "bill": "id number description capacity status created_by created_at updated_at",
    "bill_parent": "parent_id bill_id user_id created_at",
    "event": "kind area payload at",
}
COLUMNS = {table: columns.split() for table, columns in TABLES.items()}
START_SQL = r"""SELECT greatest(0,
  (SELECT max(substr(code, 3)::int) + 1 FROM bag WHERE code LIKE 'SB%' AND code ~ '^SB\d{5}$'),
  (SELECT max(substr(code, 6)::int) + 100001 FROM bag
    WHERE code LIKE 'M444-%' AND code ~ '^M444-\d{5}$'),
  (SELECT max(substr(code, 3, 6)::int) + 1 FROM bag WHERE code LIKE 'CB%' AND code ~ '^CB\d{8}$'))
"""
OTHER_DISPATCHERS_SQL = r"""SELECT area, count(*) FROM "user"
  WHERE role = 'dispatcher' AND username NOT LIKE 'demo\_%' GROUP BY area"""
TOTALS_SQL = """SELECT (SELECT count(*) FROM bag),
  (SELECT count(*) FROM scan) + (SELECT count(*) FROM event)"""
RESERVE_SQL = """SELECT
  array(SELECT nextval(pg_get_serial_sequence('bag', 'id')) FROM generate_series(1, $1)),
  array(SELECT nextval(pg_get_serial_sequence('bill', 'id')) FROM generate_series(1, $2))"""


def parent_code(ordinal: int) -> str:
    return f"SB{ordinal:05d}" if ordinal < PER_PREFIX else f"M444-{ordinal - PER_PREFIX:05d}"


def child_code(ordinal: int, index: int) -> str:
    return f"CB{ordinal:06d}{index:02d}"


def _json(**value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def plan_children(rng: random.Random, parents: int, bags: int, codes_left: int) -> list[int]:
    """Children per new parent, 85 % full and the rest part-filled: ``parents`` of them, or as
    many as it takes to add ``bags`` bags, part-filled ones filled up if codes run short."""
    counts: list[int] = []
    added = 0
    while len(counts) < (parents or codes_left) and (parents or added < bags):
        counts.append(MAX_CHILDREN if rng.random() < FULL_SHARE else rng.randint(0, 29))
        added += 1 + counts[-1]
    for i, n in enumerate(counts):
        if added >= bags:
            break
        more = min(MAX_CHILDREN - n, bags - added)
        counts[i], added = n + more, added + more
    if added < bags:
        raise ValueError(f"Only {len(counts)} demo parent codes are left: {added} more bags fit.")
    return counts


@dataclass(frozen=True)
class SeedReport:
    parents: int
    children: int
    bills: int
    history: int  # scan and event rows added
    codes: str  # first..last parent code
    seconds: float
    password: str
    users: tuple[tuple[str, str, str | None], ...]  # username, role, area

    def __str__(self) -> str:
        head = (
            f"Seeded {self.parents} parents ({self.codes}), {self.children} children, "
            f"{self.bills} bills, {self.history} scan and event rows in {self.seconds:.1f}s.\n"
            f"Demo users, password {self.password!r} (accounts that existed keep theirs):"
        )
        return "\n".join([head, *(f"  {n:<24} {r:<11} {a or ''}" for n, r, a in self.users)])


async def _demo_users(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Create the missing demo accounts, each area's dispatchers within the limit; the password
    is hashed once for all of them. Returns every demo account."""
    areas = {row["name"] for row in await conn.fetch("SELECT name FROM area")}
    others = dict(await conn.fetch(OTHER_DISPATCHERS_SQL))
    wanted = [("demo_biller", Role.BILLER, None), ("demo_supervisor", Role.SUPERVISOR, None)]
    for area in (a for a in DEFAULT_AREAS if a in areas):
        room = min(DISPATCHERS_PER_AREA, MAX_DISPATCHERS_PER_AREA - others.get(area, 0))
        wanted += [(f"demo_{area}_{i}", Role.DISPATCHER, area) for i in range(1, room + 1)]
    names = [name for name, _, _ in wanted]
    hashed = hash_password(DEMO_PASSWORD)
    await conn.executemany(
        'INSERT INTO "user" (username, password_hash, role, area) VALUES ($1, $2, $3, $4)'
        " ON CONFLICT DO NOTHING",
        [(name, hashed, role.value, area) for name, role, area in wanted],
    )
    return await conn.fetch(
        'SELECT id, username, role, area FROM "user" WHERE username = ANY($1) ORDER BY id', names
    )


class _Seeder:
    def __init__(self, users: list[asyncpg.Record], start: int, counts: list[int], seed: int,
                 rescans: int) -> None:  # fmt: skip
        self.owners: dict[str, list[tuple[int, str]]] = {}
        for user in users:
            if user["role"] == Role.DISPATCHER:
                self.owners.setdefault(user["area"], []).append((user["id"], user["username"]))
        if not self.owners:
            raise ValueError("No dispatch area has room for a demo dispatcher.")
        self.areas = sorted(self.owners)
        self.biller = next(user for user in users if user["role"] == Role.BILLER)
        self.start, self.counts, self.seed, self.bills = start, counts, seed, 0
        self.rescans, self.history = rescans, 0
        # Parents start every `step` (at most 3 minutes) over up to a year, ending two hours ago.
        self.step = min(timedelta(minutes=3), timedelta(days=365) / max(len(counts), 1))
        self.t0 = datetime.now(UTC) - self.step * len(counts) - timedelta(hours=2)

    @staticmethod
    def plan_bills(rng: random.Random, batch: range) -> list[Bill]:
        """Bills over about half of the batch's parents: most full, some part-filled."""
        bills, at = [], batch.start
        while at < batch.stop:
            capacity = rng.randint(1, 50)
            fill = capacity if rng.random() < 0.7 else rng.randint(0, capacity - 1)
            chosen = list(range(at, min(at + fill, batch.stop)))
            bills.append((capacity, chosen, len(chosen) == capacity and rng.random() < 0.5))
            at += fill + rng.randint(0, fill + 1)
        return bills

    def records(
        self, rng: random.Random, batch: range, ids: Iterator[int], bills: list[Bill],
        bill_ids: list[int],
    ) -> dict[str, list[Rec]]:  # fmt: skip
        out: dict[str, list[Rec]] = {table: [] for table in TABLES}
        bag, link, scan, event = out["bag"], out["link"], out["scan"], out["event"]
        parents: dict[int, tuple[int, str, int, datetime]] = {}
        for i in batch:
            ordinal, n, area = self.start + i, self.counts[i], self.areas[i % len(self.areas)]
            uid, by = rng.choice(self.owners[area])
            pid, code, at = next(ids), parent_code(ordinal), self.t0 + self.step * i
            state, created = ParentState(code, 0, status_for(0)), at
            pj = parent_json(code, 0, state.status)
            message = linking.parent_scanned_message(state, True)
            scan.append((uid, f"seed-{code}", "scan_parent", code, None, area, "ok", message,
                         _json(parent=pj), at))  # fmt: skip
            event.append(
                (EventKind.PARENT_SCANNED, area, _json(parent=pj, created=True, by=by), at)
            )
            for k in range(1, n + 1):
                cid, child = next(ids), child_code(ordinal, k)
                state = ParentState(code, k, status_for(k))
                at += timedelta(seconds=rng.uniform(3, 20))
                pj = parent_json(code, k, state.status)
                bag.append((cid, child, "child", area, "pending", 0, uid, at, at))
                link.append((cid, pid, uid, at))
                message = linking.linked_message(child, state)
                scan.append((uid, f"seed-{child}", "link_child", child, code, area, "ok", message,
                             _json(parent=pj), at))  # fmt: skip
                event.append(
                    (EventKind.CHILD_LINKED, area, _json(parent=pj, child=child, by=by), at)
                )
            if n == MAX_CHILDREN:
                event.append((EventKind.PARENT_COMPLETED, area, _json(parent=pj, by=by), at))
            self.rescan(out, (uid, by, area), state, at)
            bag.append((pid, code, "parent", area, state.status.value, n, uid, created, at))
            parents[i] = (pid, code, n, at)
        for (capacity, chosen, done), bid in zip(bills, bill_ids, strict=True):
            self.bill(out, bid, capacity, [parents[i] for i in chosen], done, batch)
        return out

    def rescan(
        self, out: dict[str, list[Rec]], owner: tuple[int, str, str], state: ParentState,
        at: datetime,
    ) -> None:  # fmt: skip
        """The parent scanned again now and then after its last child, by its owner."""
        uid, by, area = owner
        pj = parent_json(state.code, state.children, state.status)
        message, result = linking.parent_scanned_message(state, False), _json(parent=pj)
        payload = _json(parent=pj, created=False, by=by)
        gap = self.step / (self.rescans + 1)
        for k in range(1, self.rescans + 1):
            at += gap
            out["scan"].append((uid, f"seed-{state.code}-{k}", "scan_parent", state.code, None,
                                area, "ok", message, result, at))  # fmt: skip
            out["event"].append((EventKind.PARENT_SCANNED, area, payload, at))

    def bill(
        self, out: dict[str, list[Rec]], bid: int, capacity: int,
        parents: list[tuple[int, str, int, datetime]], done: bool, batch: range,
    ) -> None:  # fmt: skip
        number, uid, by = f"DEMO-{bid:06d}", self.biller["id"], self.biller["username"]
        at = max((p[3] for p in parents), default=self.t0 + self.step * batch.start)
        created = at = at + timedelta(minutes=10)

        def emit(kind: EventKind, status: BillStatus, linked: int, children: int, **extra: Any
                 ) -> None:  # fmt: skip
            totals = BillTotals(capacity, linked, children)
            bill = {"number": number, "description": DESCRIPTION, "status": status.value,
                    "capacity": capacity, "linked": linked, "children": children,
                    "actual_weight_kg": totals.actual_weight_kg,
                    "expected_weight_kg": totals.expected_weight_kg}  # fmt: skip
            out["event"].append((kind.value, None, _json(bill=bill, **extra, by=by), at))

        emit(EventKind.BILL_CREATED, BillStatus.NEW, 0, 0)
        children, status = 0, BillStatus.PROCESSING if parents else BillStatus.NEW
        for linked, (pid, code, n, _) in enumerate(parents, 1):
            at, children = at + timedelta(seconds=30), children + n
            out["bill_parent"].append((pid, bid, uid, at))
            emit(EventKind.BILL_BAG_LINKED, status, linked, children,
                 parent=parent_json(code, n, status_for(n)))  # fmt: skip
        if done:
            status = BillStatus.COMPLETED
            emit(EventKind.BILL_COMPLETED, status, len(parents), children)
        out["bill"].append((bid, number, DESCRIPTION, capacity, status.value, uid, created, at))

    async def write(self, conn: asyncpg.Connection, batch: range) -> int:
        rng = random.Random(f"{self.seed}:{self.start + batch.start}")
        bills = self.plan_bills(rng, batch)
        size = len(batch) + sum(self.counts[i] for i in batch)
        async with conn.transaction():
            bag_ids, bill_ids = await conn.fetchrow(RESERVE_SQL, size, len(bills))
            out = self.records(rng, batch, iter(bag_ids), bills, bill_ids)
            for table, columns in COLUMNS.items():
                if out[table]:
                    await conn.copy_records_to_table(table, records=out[table], columns=columns)
        self.bills += len(bills)
        self.history += len(out["scan"]) + len(out["event"])
        return size


async def seed_demo(
    engine: AsyncEngine,
    parents: int = 0,
    *,
    bags: int = 0,
    history: int = 0,
    spare_parents: int = 0,
    progress: bool = True,
    seed: int = 1,
) -> SeedReport:
    """Add the demo users and ``parents`` parent bags (85 % with 30 children, the rest
    partial), or parents until the database holds ``bags`` bags, with their children, links,
    scans and events, bills over about half of them, and re-scans of each until the database
    holds about ``history`` scan and event rows. The last ``spare_parents`` parent codes are
    left unused."""
    began = time.monotonic()
    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    conns = [await asyncpg.connect(dsn)]
    try:
        users = await _demo_users(conns[0])
        start = await conns[0].fetchval(START_SQL)
        codes_left = 2 * PER_PREFIX - spare_parents - start
        if parents > codes_left:
            raise ValueError(f"Only {codes_left} demo parent codes are left.")
        stored, rows = await conns[0].fetchrow(TOTALS_SQL) if bags or history else (0, 0)
        rng = random.Random(seed)
        counts = plan_children(rng, parents, max(bags - stored, 0), codes_left)
        children = sum(counts)
        # Each parent brings a scan and an event per bag, and a completion if full; re-scans
        # (a scan and an event each) make up the rest of the history asked for.
        base = 2 * (len(counts) + children) + counts.count(MAX_CHILDREN)
        rescans = max(0, -(-(history - rows - base) // (2 * len(counts)))) if counts else 0
        events = len(counts) * (1 + rescans + BILL_EVENTS_PER_PARENT) + children
        await reserve_ids(engine, events)
        conns += [
            await asyncpg.connect(dsn)
            for _ in range(min(WORKERS, 1 + len(counts) // BATCH_PARENTS) - 1)
        ]
        seeder = _Seeder(list(users), start, counts, seed, rescans)
        starts = range(0, len(counts), BATCH_PARENTS)
        batches = (range(a, min(a + BATCH_PARENTS, len(counts))) for a in starts)
        with tqdm(total=len(counts) + children, unit="bag", disable=not progress) as bar:

            async def work(conn: asyncpg.Connection) -> None:
                for batch in batches:  # shared by the workers: each takes the next batch
                    bar.update(await seeder.write(conn, batch))

            await asyncio.gather(*(work(conn) for conn in conns))
        if counts:
            # Fresh pages have neither hint bits nor visibility bits: the first reads would set
            # them (writing pages back) and index-only scans would visit the heap. Autovacuum
            # would catch up eventually; a bulk load should not leave it that work.
            await conns[0].execute(f"VACUUM (ANALYZE) {', '.join(TABLES)}")
    finally:
        await asyncio.gather(*(conn.close() for conn in conns))
    last = start + len(counts) - 1
    codes = f"{parent_code(start)}..{parent_code(last)}" if counts else "none"
    accounts = tuple((user["username"], user["role"], user["area"]) for user in users)
    seconds = time.monotonic() - began
    return SeedReport(
        len(counts), children, seeder.bills, seeder.history, codes, seconds, DEMO_PASSWORD,
        accounts,
    )  # fmt: skip
