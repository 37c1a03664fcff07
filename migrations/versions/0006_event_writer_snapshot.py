"""the outbox keeps each event's writer snapshot and is searchable by transaction id

Revision ID: 0006
Revises: 0005

Ids are taken at insert and become visible at commit, so an event below a client's cursor may
commit after the client passed it. Only transactions still running when the event at the cursor
was written can do that: ``snapshot`` (its writing statement's ``pg_current_snapshot()``) names
them, and ``ix_event_xid`` finds their events (``traitortrack.realtime.outbox``). Rows written
before this migration have no snapshot (NULL) and are replayed as before, from the id on.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Added without a default, then given one: existing rows are not rewritten.
    op.execute("ALTER TABLE event ADD COLUMN snapshot text")
    op.execute("ALTER TABLE event ALTER COLUMN snapshot SET DEFAULT pg_current_snapshot()::text")
    op.execute("CREATE INDEX ix_event_xid ON event (xid, id)")


def downgrade() -> None:
    op.execute("DROP INDEX ix_event_xid")
    op.execute("ALTER TABLE event DROP COLUMN snapshot")
