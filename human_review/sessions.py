"""Login sessions kept on the server: create at login, look up per request, revoke on logout/reset/disable.

The browser's cookie holds only a random session id (plus the CSRF token); the database holds its
sha256, so neither a cookie nor a leaked database carries password-hash material or a live session.
"""

from __future__ import annotations

import secrets
import time

from lorafleet.human_review import security
from lorafleet.human_review.models import LoginSession, User
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

TOUCH_EVERY_S = 60.0  # last_seen is written at most once a minute: a page view is not a write each time
PURGE_AFTER_S = 86_400.0  # ended sessions are deleted a day after they end (kept a while for forensics)


def create(session: Session, *, user: User, max_seconds: float, now: float | None = None) -> str:
    """A new session for `user`; returns the id for the cookie (only its hash is stored). Caller commits."""
    now = time.time() if now is None else now
    sid = secrets.token_urlsafe(32)
    session.add(LoginSession(id_hash=security.token_hash(sid), user_id=user.id, created_at=now, last_seen=now,
                             expires_at=now + max_seconds))
    # Housekeeping on login (rare, and a write anyway): drop sessions that ended a while ago.
    session.execute(delete(LoginSession).where(
        (LoginSession.expires_at < now - PURGE_AFTER_S) | (LoginSession.revoked_at < now - PURGE_AFTER_S)))
    return sid


def lookup(session: Session, *, sid: str, idle_seconds: float, now: float | None = None) -> LoginSession | None:
    """The live session with this id, or None (unknown, revoked, expired, idle too long, user disabled)."""
    now = time.time() if now is None else now
    row = session.get(LoginSession, security.token_hash(sid))
    if row is None or row.revoked_at is not None or row.expires_at <= now or row.last_seen + idle_seconds <= now:
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled_at is not None:
        return None
    return row


def needs_touch(row: LoginSession, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    return now - row.last_seen >= TOUCH_EVERY_S


def touch(session: Session, *, row: LoginSession, now: float | None = None) -> None:
    """Record activity (keeps an idle timeout from ending a session in use). Caller commits."""
    now = time.time() if now is None else now
    session.execute(update(LoginSession).where(LoginSession.id_hash == row.id_hash).values(last_seen=now))


def revoke(session: Session, *, sid: str, now: float | None = None) -> None:
    """End one session (logout). Caller commits."""
    now = time.time() if now is None else now
    session.execute(update(LoginSession).where(LoginSession.id_hash == security.token_hash(sid),
                                               LoginSession.revoked_at.is_(None)).values(revoked_at=now))


def revoke_all(session: Session, *, user_id: int, now: float | None = None) -> int:
    """End every session of a user (password reset, disable); returns how many were live. Caller commits."""
    now = time.time() if now is None else now
    res = session.execute(update(LoginSession).where(LoginSession.user_id == user_id,
                                                     LoginSession.revoked_at.is_(None)).values(revoked_at=now))
    return res.rowcount


def live_count(session: Session, *, user_id: int, now: float | None = None) -> int:
    now = time.time() if now is None else now
    return len(session.scalars(select(LoginSession.id_hash).where(
        LoginSession.user_id == user_id, LoginSession.revoked_at.is_(None), LoginSession.expires_at > now)).all())
