"""Engine and sessions: SQLite in WAL mode by default, PostgreSQL (psycopg 3) by URL."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (SQLAlchemy would pick psycopg2 otherwise)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and foreign keys on every connection."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1].split("?", 1)[0]
        private = bool(path) and path != ":memory:" and not path.startswith("file:")
        if private:
            _private_file(Path(path))
        # Connections are cheap here; a pool as large as the request thread pool means a request
        # never waits for a connection while the ones holding them queue on the write lock.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=40, max_overflow=40, pool_timeout=120)
        event.listen(engine, "connect", _sqlite_pragmas)
        if private:
            event.listen(engine, "connect", lambda _c, _r: _private_companions(Path(path)))
        return engine
    return create_engine(url, pool_size=20, max_overflow=30, pool_timeout=120, pool_pre_ping=True)


def _private_file(path: Path) -> None:
    """Create the database file 0600 (it holds password and token hashes), or tighten an older 0644 one.

    SQLite creates -wal and -shm with the main file's mode, so they follow; `_private_companions`
    re-checks them in case they were made by an older version.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    _chmod_private(path)


def _private_companions(path: Path) -> None:
    for suffix in ("-wal", "-shm", "-journal"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            _chmod_private(companion)


def _chmod_private(path: Path) -> None:
    with contextlib.suppress(OSError):  # not ours to change (another owner): leave it as its owner set it
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI types
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on `engine`. On SQLite they share one in-process write lock (see `writing`)."""
    info = {"write_lock": threading.Lock()} if engine.dialect.name == "sqlite" else {}
    return sessionmaker(bind=engine, expire_on_commit=False, info=info)


@contextmanager
def writing(session: Session) -> Iterator[None]:
    """Hold around a write transaction (first write → commit).

    SQLite has one writer; threads that collide wait in SQLite's busy handler, which sleeps in
    coarse steps (up to 100 ms) — the p95 killer under 20 reviewers. Queuing on a Python lock
    instead wakes the next writer at once. Other processes still meet the busy timeout.
    PostgreSQL needs nothing: row locks do the job.
    """
    lock = session.info.get("write_lock")
    if lock is None:
        yield
        return
    # Check a connection out *before* queuing on the lock: a lock holder must never wait for the
    # pool while pool holders wait for the lock (a deadlock under load).
    session.connection()
    with lock:
        yield


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (run on every start; a no-op when current)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
