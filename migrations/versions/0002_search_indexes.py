"""indexes for bag and bill lists: keyset pages in (created_at, id) order, bill number search

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Newest-first lists page on (created_at, id): each index ends with both, so any page is
    # a short backward index range scan, however deep.
    op.create_index("ix_bag_created_id", "bag", ["created_at", "id"], unique=False)
    op.create_index("ix_bag_area_created_id", "bag", ["area", "created_at", "id"], unique=False)
    op.create_index("ix_bill_created_id", "bill", ["created_at", "id"], unique=False)
    # Bill-number prefix search: byte order ("C"), so a prefix is one index range.
    op.create_index(
        "ix_bill_number_search",
        "bill",
        [sa.literal_column('(lower(number) COLLATE "C")')],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_bill_number_search", table_name="bill")
    op.drop_index("ix_bill_created_id", table_name="bill")
    op.drop_index("ix_bag_area_created_id", table_name="bag")
    op.drop_index("ix_bag_created_id", table_name="bag")
