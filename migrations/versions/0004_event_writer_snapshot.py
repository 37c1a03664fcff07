"""the outbox keeps each event's writer snapshot bounds and is searchable by transaction id

Revision ID: 0004
Revises: 0003

Ids are taken at insert and become visible at commit, so an event below a client's cursor may
commit after the client passed it. ``snapshot_xmin``/``snapshot_xmax`` bound the transactions
that were still running when an event was written (those are the only ones that can commit an
id below it later), and ``ix_event_xid`` finds their events: ``traitortrack.realtime.outbox``
replays them to a client resuming from that event's id. Rows written before this migration have
no bounds (NULL) and are replayed as before, from the id on.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The writing statement's snapshot: every transaction below xmin had ended, none from xmax on
# had begun.
BOUNDS = {
    "snapshot_xmin": "pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
    "snapshot_xmax": "pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
}


def upgrade() -> None:
    for column, default in BOUNDS.items():
        # Added without a default, then given one: existing rows are not rewritten.
        op.execute(f"ALTER TABLE event ADD COLUMN {column} bigint")
        op.execute(f"ALTER TABLE event ALTER COLUMN {column} SET DEFAULT {default}")
    op.execute("CREATE INDEX ix_event_xid ON event (xid)")


def downgrade() -> None:
    op.execute("DROP INDEX ix_event_xid")
    for column in BOUNDS:
        op.execute(f"ALTER TABLE event DROP COLUMN {column}")
