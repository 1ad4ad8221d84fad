"""The card_updates outbox: which adapter versions' card.review must be rewritten.

`enqueue` runs inside the transaction that adds grades or items, so the note commits with them (or not
at all); the card writer reads `pending`, rewrites each card, then `done` drops a row only when no
newer change bumped its `seq` meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from lorafleet.human_review.models import CardUpdate
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lorafleet.errors import InvalidNameError
from lorafleet.refs import parse_ref


def is_version(adapter: str | None) -> bool:
    """True for an exact version ref (`name@v3`): only those can name the card to write."""
    if not adapter:
        return False
    try:
        return parse_ref(adapter).is_version
    except InvalidNameError:
        return False


def enqueue(session: Session, adapters: Iterable[str | None], *, now: float | None = None) -> list[str]:
    """Mark these versions' cards stale (in the caller's transaction); returns the versions marked."""
    now = time.time() if now is None else now
    marked = sorted({a for a in adapters if is_version(a)})
    for adapter in marked:
        bump = update(CardUpdate).where(CardUpdate.adapter == adapter).values(seq=CardUpdate.seq + 1, queued_at=now)
        if session.execute(bump).rowcount:
            continue
        try:
            with session.begin_nested():
                session.add(CardUpdate(adapter=adapter, seq=1, queued_at=now))
        except IntegrityError:  # a concurrent transaction inserted it first: bump that row instead
            session.execute(bump)
    return marked


def pending(session: Session, *, limit: int = 100) -> list[tuple[str, int]]:
    """(version, seq) of stale cards, oldest first."""
    rows = session.execute(select(CardUpdate.adapter, CardUpdate.seq).order_by(CardUpdate.queued_at).limit(limit))
    return [(a, s) for a, s in rows]


def done(session: Session, *, adapter: str, seq: int) -> bool:
    """Drop the row if it still has `seq` (compare-and-delete); False when a newer change arrived."""
    return bool(session.execute(delete(CardUpdate).where(CardUpdate.adapter == adapter,
                                                         CardUpdate.seq == seq)).rowcount)
