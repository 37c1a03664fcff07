"""What every list shares: filters read from query arguments, keyset cursors, date ranges.

Lists page by keyset, never by offset: a page is "the next ``size`` rows after this one" in the
order of an index, so page 10,000 costs what page 1 costs. A cursor is an opaque string the
page hands back in its "Next" link.
"""

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Generic, TypeVar

T = TypeVar("T")

PAGE_SIZE = 50
BATCH_SIZE = 1_000  # rows per read when an export streams a whole list
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MAX_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    rows: list[T]
    next: str | None  # pass as ?after= for the next page; None on the last page


async def batches(
    fetch: Callable[[str | None], Awaitable[Page[T]]],
) -> AsyncIterator[list[T]]:
    """Every row of a keyset-paged list, a page at a time (one short query each: no connection
    or transaction is held while a batch is being sent)."""
    after = None
    while True:
        page = await fetch(after)
        if page.rows:
            yield page.rows
        if page.next is None:
            return
        after = page.next


def page_of(rows: list[T], size: int, cursor_of: Any) -> Page[T]:
    """Cut a ``size + 1`` read to a page: the extra row only says that there is more."""
    kept = rows[:size]
    return Page(kept, cursor_of(kept[-1]) if len(rows) > size and kept else None)


class Problems(list[str]):
    """What could not be read from the query arguments; shown to the person, never raised."""


def text_arg(args: Mapping[str, Any], key: str, limit: int) -> str:
    """Trimmed, cut to ``limit``, without control characters (PostgreSQL text holds no NUL)."""
    raw = str(args.get(key, "")).strip()[:limit]
    return raw if raw.isprintable() else "".join(c for c in raw if c.isprintable())


def choice_arg(
    args: Mapping[str, Any], key: str, choices: tuple[str, ...], problems: Problems, what: str
) -> str:
    raw = text_arg(args, key, 40)
    if raw and raw not in choices:
        problems.append(f"{what} must be one of: {', '.join(choices)}. Pick one from the list.")
        return ""
    return raw


def day_arg(args: Mapping[str, Any], key: str, problems: Problems) -> date | None:
    raw = text_arg(args, key, 40)
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        problems.append(f"{raw!r} is not a date: use YYYY-MM-DD (or the date picker).")
        return None


def midnight(day: date) -> datetime:
    """The start of a UTC day."""
    return datetime.combine(day, time.min, tzinfo=UTC)


def day_range(since: date | None, until: date | None) -> tuple[datetime | None, datetime | None]:
    """``[since 00:00, the day after until 00:00)``: both days included."""
    return (
        midnight(since) if since else None,
        midnight(until) + timedelta(days=1) if until else None,
    )


def time_cursor(at: datetime, row_id: int) -> str:
    """A position in (created_at, id) order, exact to the microsecond."""
    return f"{(at - EPOCH) // _MICROSECOND}.{row_id}"


def read_time_cursor(raw: str | None) -> tuple[datetime, int] | None:
    """None for a missing or unreadable cursor: the list then starts from the top."""
    if not raw:
        return None
    micros, _, row_id = raw.partition(".")
    if not (micros.lstrip("-").isdigit() and row_id.isdigit()) or len(raw) > 40:
        return None
    try:
        at = EPOCH + int(micros) * _MICROSECOND
    except OverflowError:
        return None
    number = int(row_id)
    return (at, number) if number <= _MAX_ID else None
