"""pause sign-in per (account, client address) and the second factor per account

Revision ID: 0005
Revises: 0004

The account-wide lock (``user.failed_logins``, ``user.locked_until``) let anyone lock out the
real user: failures now count per account and client address in ``sign_in_guard``, and wrong
second-factor codes count on the user. Pauses in progress are not carried over: they lapse
within 15 minutes anyway.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sign_in_guard",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["user.id"], name="fk_sign_in_guard_user_id_user", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "client", name="pk_sign_in_guard"),
    )
    op.add_column(
        "user",
        sa.Column("totp_failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column("user", sa.Column("totp_locked_until", sa.DateTime(timezone=True), nullable=True))
    op.drop_column("user", "locked_until")
    op.drop_column("user", "failed_logins")


def downgrade() -> None:
    op.add_column(
        "user",
        sa.Column("failed_logins", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column("user", sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True))
    op.drop_column("user", "totp_locked_until")
    op.drop_column("user", "totp_failures")
    op.drop_table("sign_in_guard")
