"""API keys: stored hashed (SQLAlchemy; SQLite by default, Postgres by URL), printed once.

A key is `lf-<random>`; only its sha256 is stored. Keys are 32 random bytes, so a fast hash is
enough (no dictionary to attack) and lets a lookup be one indexed query.
"""

from __future__ import annotations

import fnmatch
import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Boolean, DateTime, Integer, String, create_engine, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from lorafleet.errors import ConfigError, NotFoundError

KEY_PREFIX = "lf-"


class Base(DeclarativeBase):
    pass


class ApiKeyRow(Base):
    __tablename__ = "serve_api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    hint: Mapped[str] = mapped_column(String(16))
    adapters: Mapped[str] = mapped_column(String(2000), default="*")
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass(frozen=True)
class KeyInfo:
    """What a verified key may do."""

    name: str
    patterns: tuple[str, ...]
    admin: bool = False
    rpm: int | None = None
    revoked: bool = False
    created_at: datetime | None = None
    hint: str = ""

    def allows(self, ref: str) -> bool:
        """May this key use `ref` (as the client wrote it: name, name@vN or name@alias)?"""
        return self.admin or allows(self.patterns, ref)


def allows(patterns: tuple[str, ...], ref: str) -> bool:
    """fnmatch scopes: `support-*` allows every version/alias of matching names; a pattern with
    '@' (`clauses@prod`, `clauses@v*`) is matched against the ref itself (bare name = name@latest)."""
    name, _, selector = ref.partition("@")
    full = f"{name}@{selector or 'latest'}"
    for pattern in patterns:
        if "@" in pattern:
            if fnmatch.fnmatchcase(full, pattern):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def parse_patterns(adapters: str) -> tuple[str, ...]:
    patterns = tuple(p.strip() for p in adapters.split(",") if p.strip())
    if not patterns:
        raise ConfigError("no adapter patterns given", hint="e.g. --adapters 'support-*,clauses@prod' or '*'")
    return patterns


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def _info(row: ApiKeyRow) -> KeyInfo:
    return KeyInfo(name=row.name, patterns=parse_patterns(row.adapters), admin=row.admin, rpm=row.rpm,
                   revoked=row.revoked_at is not None, created_at=row.created_at, hint=row.hint)


class KeyStore:
    """Create, list, revoke and verify keys in the database at `url`."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = _engine(url)
        Base.metadata.create_all(self.engine)

    def create(self, *, name: str, adapters: str = "*", admin: bool = False,
               rpm: int | None = None) -> tuple[KeyInfo, str]:
        """Store a new key; returns its info and the plaintext, which is never stored."""
        if rpm is not None and rpm < 1:
            raise ConfigError(f"--rpm {rpm}", hint="give a positive number of requests per minute")
        patterns = parse_patterns(adapters)
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKeyRow(name=name, key_hash=hash_key(plaintext), hint=plaintext[:7], adapters=",".join(patterns),
                        admin=admin, rpm=rpm, created_at=datetime.now(UTC))
        with Session(self.engine) as session:
            if session.scalar(select(ApiKeyRow).where(ApiKeyRow.name == name)) is not None:
                raise ConfigError(f"a key named {name!r} exists", hint="pick another --name or revoke it first")
            session.add(row)
            session.commit()
            return _info(row), plaintext

    def list(self) -> list[KeyInfo]:
        with Session(self.engine) as session:
            return [_info(r) for r in session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id))]

    def revoke(self, name: str) -> None:
        with Session(self.engine) as session:
            row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.name == name))
            if row is None:
                raise NotFoundError(f"no key named {name!r}", hint="see `lorafleet keys list`")
            row.revoked_at = datetime.now(UTC)
            session.commit()

    def verify(self, plaintext: str) -> KeyInfo | None:
        """The key's info if it exists and is not revoked."""
        if not plaintext.startswith(KEY_PREFIX):
            return None
        with Session(self.engine) as session:
            row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == hash_key(plaintext)))
            if row is None or row.revoked_at is not None:
                return None
            return _info(row)

    def close(self) -> None:
        self.engine.dispose()


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def _wal(dbapi_conn, _record) -> None:  # several processes share the file
            dbapi_conn.execute("PRAGMA journal_mode=WAL")

        return engine
    return create_engine(url, pool_pre_ping=True)
