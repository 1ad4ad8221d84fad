"""Tables (SQLAlchemy 2). Times are epoch seconds (float): portable across SQLite and PostgreSQL.

An item in a queue with overlap k owns exactly k *slots*. A reviewer leases a slot, grades it,
and the slot is done. `UNIQUE(item_id, reviewer_id)` on slots and on grades is what makes "never
twice by one reviewer" and "never more than k grades" hold under any interleaving.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # "admin" | "reviewer"
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[float] = mapped_column(Float)
    disabled_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # set: no login, sessions ended


class Queue(Base):
    __tablename__ = "queues"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    mode: Mapped[str] = mapped_column(String(16))  # "rubric" | "pairwise"
    overlap: Mapped[int] = mapped_column(Integer)
    rubric: Mapped[dict[str, Any]] = mapped_column(JSON)  # a snapshot: later YAML edits never rewrite grades
    token_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the queue's ingest token
    created_at: Mapped[float] = mapped_column(Float)
    # Soft delete: hidden from reviewers and the API, its grades kept for `review export --include-deleted`.
    deleted_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class QueueMember(Base):
    __tablename__ = "queue_members"

    queue_id: Mapped[int] = mapped_column(ForeignKey("queues.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("queue_id", "ext_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    queue_id: Mapped[int] = mapped_column(ForeignKey("queues.id", ondelete="CASCADE"))
    ext_id: Mapped[str] = mapped_column(String(200))
    # The ReviewItem's adapter as a column: card.review reads one version's items by it (indexed).
    adapter: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    # Random, unguessable: URLs never carry sequential ids that reveal other queues' sizes or items.
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)  # the ReviewItem as ingested
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)


class Slot(Base):
    __tablename__ = "slots"
    __table_args__ = (
        UniqueConstraint("item_id", "slot_no"),
        UniqueConstraint("item_id", "reviewer_id"),
        Index("ix_slots_queue_state", "queue_id", "state", "id"),
        Index("ix_slots_queue_reviewer", "queue_id", "reviewer_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    queue_id: Mapped[int] = mapped_column(ForeignKey("queues.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    slot_no: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(8), default="free")  # free | leased | done
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    lease_expires: Mapped[float | None] = mapped_column(Float, nullable=True)
    leased_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    flipped: Mapped[bool] = mapped_column(Boolean, default=False)  # pairwise: which side shows as A


class Grade(Base):
    __tablename__ = "grades"
    __table_args__ = (
        UniqueConstraint("item_id", "reviewer_id"),
        Index("ix_grades_queue", "queue_id", "id"),
        Index("ix_grades_reviewer", "reviewer_id", "queue_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    queue_id: Mapped[int] = mapped_column(ForeignKey("queues.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    scores: Mapped[dict[str, Any]] = mapped_column(JSON)  # criterion -> level (rubric mode)
    choice: Mapped[str | None] = mapped_column(String(200), nullable=True)  # pairwise: label | tie | both_bad
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)  # lease start → submit
    created_at: Mapped[float] = mapped_column(Float)


class Skip(Base):
    __tablename__ = "skips"

    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)


class CardUpdate(Base):
    """Outbox of adapter versions whose card.review is stale: written in the grade's own transaction, so a
    grade is never lost; the writer removes a row only if its `seq` did not move while it was writing."""

    __tablename__ = "card_updates"

    adapter: Mapped[str] = mapped_column(String(200), primary_key=True)  # exact version, name@vN
    seq: Mapped[int] = mapped_column(Integer)
    queued_at: Mapped[float] = mapped_column(Float)


class LoginSession(Base):
    """A browser login kept on the server: the cookie carries only a random id, stored here as its sha256.

    Logout, a password reset and disabling the user revoke it; a revoked or expired row lets nobody in.
    """

    __tablename__ = "login_sessions"
    __table_args__ = (Index("ix_login_sessions_user", "user_id"),)

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)  # absolute end (login + session_max_seconds)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
