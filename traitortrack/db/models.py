"""The schema. The database enforces what must never be false; code gives the friendly message."""

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Codes are stored normalised (upper case) in the "C" collation, so one b-tree both enforces
# case-insensitive uniqueness (with the upper() check) and serves prefix searches (LIKE 'SB1%').
CODE = String(100, collation="C")


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Area(Base):
    __tablename__ = "area"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    label: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = _now()


class User(Base):
    __tablename__ = "user"
    __table_args__ = (
        CheckConstraint("role IN ('admin', 'biller', 'dispatcher', 'supervisor')", name="role"),
        CheckConstraint("role <> 'dispatcher' OR area IS NOT NULL", name="dispatcher_has_area"),
        Index("uq_user_username_lower", text("lower(username)"), unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    area: Mapped[str | None] = mapped_column(ForeignKey("area.name", onupdate="CASCADE"))
    active: Mapped[bool] = mapped_column(server_default=text("true"))
    session_version: Mapped[int] = mapped_column(server_default=text("1"))
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    totp_enabled: Mapped[bool] = mapped_column(server_default=text("false"))
    totp_last_step: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # Wrong second-factor codes in a row; the fifth pauses the second factor (migration 0005).
    totp_failures: Mapped[int] = mapped_column(server_default=text("0"))
    totp_locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    recovery_codes: Mapped[list[str]] = mapped_column(
        ARRAY(String(200)), server_default=text("'{}'")
    )
    created_at: Mapped[datetime] = _now()
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class UserSession(Base):
    """A signed-in session, so that the server can end it (sign-out, revocation) and knows when
    it was last used (the idle limit holds on websockets as on pages). The cookie carries the
    token; only its hash is kept."""

    __tablename__ = "user_session"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("user.id", ondelete="CASCADE"), index=True, nullable=False
    )
    signed_in_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class SignInGuard(Base):
    """Failed passwords for one account from one client address (migration 0005).

    The address is kept only as a keyed hash. Pausing the pair, not the account, means that
    nobody can lock the real user out from somewhere else.
    """

    __tablename__ = "sign_in_guard"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("user.id", ondelete="CASCADE"), primary_key=True
    )
    client: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(server_default=text("0"))
    last_failure_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Bag(Base):
    __tablename__ = "bag"
    __table_args__ = (
        CheckConstraint("code = upper(code)", name="code_upper"),
        CheckConstraint("kind IN ('parent', 'child')", name="kind"),
        CheckConstraint("status IN ('pending', 'completed')", name="status"),
        CheckConstraint("child_count BETWEEN 0 AND 30", name="child_count"),
        UniqueConstraint("code"),
        Index("ix_bag_area_kind_created", "area", "kind", "created_at"),
        Index("ix_bag_kind_created", "kind", "created_at"),
        Index("ix_bag_owner_created", "owner_id", "created_at"),
        # Keyset pages of the bag search, newest first (migration 0002).
        Index("ix_bag_created_id", "created_at", "id"),
        Index("ix_bag_area_created_id", "area", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    code: Mapped[str] = mapped_column(CODE)
    kind: Mapped[str] = mapped_column(String(8))
    area: Mapped[str | None] = mapped_column(ForeignKey("area.name", onupdate="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), server_default=text("'pending'"))
    child_count: Mapped[int] = mapped_column(server_default=text("0"))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class Link(Base):
    """A child in a parent. The child is the primary key: a child can only ever have one parent."""

    __tablename__ = "link"
    __table_args__ = (Index("ix_link_parent_created", "parent_id", "created_at"),)

    child_id: Mapped[int] = mapped_column(
        ForeignKey("bag.id", ondelete="RESTRICT"), primary_key=True
    )
    parent_id: Mapped[int] = mapped_column(ForeignKey("bag.id", ondelete="RESTRICT"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _now()


class Scan(Base):
    """Every recorded command, keyed by the client's id so a replay answers as the first time."""

    __tablename__ = "scan"
    __table_args__ = (
        UniqueConstraint("user_id", "client_id"),
        CheckConstraint("outcome IN ('ok', 'duplicate', 'rejected')", name="outcome"),
        Index("ix_scan_code_created", "code", "created_at"),
        Index("ix_scan_user_created", "user_id", "created_at"),
        Index("ix_scan_created", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    client_id: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    code: Mapped[str | None] = mapped_column(CODE)
    parent_code: Mapped[str | None] = mapped_column(CODE)
    area: Mapped[str | None] = mapped_column(String(40))
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)
    result: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'"))
    created_at: Mapped[datetime] = _now()


class Bill(Base):
    __tablename__ = "bill"
    __table_args__ = (
        CheckConstraint("capacity BETWEEN 1 AND 100", name="capacity"),
        CheckConstraint("status IN ('new', 'processing', 'completed')", name="status"),
        Index("uq_bill_number_lower", text("lower(number)"), unique=True),
        Index("ix_bill_status_created", "status", "created_at"),
        # The bill list: keyset pages newest first, and number prefix search (migration 0002).
        Index("ix_bill_created_id", "created_at", "id"),
        # Really ``lower(number) COLLATE "C"`` (byte order: a prefix is one range), as migration
        # 0002 creates it; written without the collation because reflection drops it, and the
        # migrations-match-models test compares the reflected schema.
        Index("ix_bill_number_search", text("lower(number)")),
    )

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    number: Mapped[str] = mapped_column(String(50))
    description: Mapped[str] = mapped_column(Text, server_default=text("''"))
    capacity: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), server_default=text("'new'"))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class BillParent(Base):
    """A parent bag on a bill; the parent is unique, so it is on at most one bill."""

    __tablename__ = "bill_parent"
    __table_args__ = (Index("ix_bill_parent_bill", "bill_id"),)

    parent_id: Mapped[int] = mapped_column(
        ForeignKey("bag.id", ondelete="RESTRICT"), primary_key=True
    )
    bill_id: Mapped[int] = mapped_column(ForeignKey("bill.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _now()


class Event(Base):
    """The transactional outbox: written with the change, published after commit."""

    __tablename__ = "event"
    # Range partitions by id, made and dropped by ``traitortrack.db.retention`` (migration 0003).
    __table_args__ = (
        Index("ix_event_at", "at"),
        Index("ix_event_xid", "xid", "id"),
        {"postgresql_partition_by": "RANGE (id)"},
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    area: Mapped[str | None] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    at: Mapped[datetime] = _now()
    # The writing transaction, and its statement's snapshot (migration 0006): only transactions
    # running in it (or begun just after) can still commit an id below this one.
    xid: Mapped[int] = mapped_column(
        BigInteger, server_default=text("pg_current_xact_id()::text::bigint")
    )
    snapshot: Mapped[str | None] = mapped_column(
        Text, server_default=text("pg_current_snapshot()::text")
    )


class Audit(Base):
    __tablename__ = "audit"
    __table_args__ = (
        Index("ix_audit_at", "at"),
        Index("ix_audit_actor_at", "actor_id", "at"),
        Index("ix_audit_entity", "entity_type", "entity_id", "at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    at: Mapped[datetime] = _now()
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    actor_name: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    entity_type: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[str | None] = mapped_column(String(100))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    request_id: Mapped[str | None] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64))


class DisplayLink(Base):
    """A revocable read-only link for a wall screen, scoped to dispatch areas."""

    __tablename__ = "display_link"

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    label: Mapped[str] = mapped_column(String(80))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    areas: Mapped[list[str]] = mapped_column(ARRAY(String(40)), server_default=text("'{}'"))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
