"""Leases on item slots: who grades what, for how long, and idempotent submits.

Every state change is a compare-and-set UPDATE (`… WHERE state = 'free'`), so it is correct on
SQLite (one writer) and on PostgreSQL (row locks, READ COMMITTED re-checks the WHERE) alike.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from lorafleet.human_review import card_outbox
from lorafleet.human_review.db import writing
from lorafleet.human_review.errors import Conflict, NotFound, ReviewError
from lorafleet.human_review.models import Grade, Item, Queue, Skip, Slot
from lorafleet.human_review.rubrics import Rubric
from lorafleet.human_review.schemas import GradeIn
from sqlalchemy import and_, delete, exists, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

CANDIDATES = 16  # reviewers racing for the head of the pool pick among this many: fewer lost CAS rounds
MAX_TRIES = 8


@dataclass(frozen=True)
class Lease:
    item: Item
    slot: Slot


def _claimable(now: float):  # noqa: ANN202 - SQL expression
    return or_(Slot.state == "free", and_(Slot.state == "leased", Slot.lease_expires < now))


def current_lease(session: Session, *, queue: Queue, reviewer_id: int) -> Slot | None:
    return session.scalar(select(Slot).where(Slot.queue_id == queue.id, Slot.reviewer_id == reviewer_id,
                                             Slot.state == "leased").limit(1))


def next_item(session: Session, *, queue: Queue, reviewer_id: int, lease_seconds: float,
              now: float | None = None, rng: random.Random | None = None) -> Lease | None:
    """The item this reviewer should grade now, leased to them; None when nothing is left for them.

    A lease the reviewer already holds is renewed and returned (refresh and back button land on the
    same item). Otherwise a free slot — or one whose lease expired — of an item the reviewer has not
    graded, held or skipped is claimed. Commits.
    """
    now = time.time() if now is None else now
    rng = rng or random
    held = current_lease(session, queue=queue, reviewer_id=reviewer_id)
    if held is not None:
        with writing(session):
            renewed = _renew(session, slot_id=held.id, reviewer_id=reviewer_id, now=now, seconds=lease_seconds)
            session.commit()
        if renewed:
            return Lease(item=session.get(Item, held.item_id), slot=held)
    for _ in range(MAX_TRIES):
        candidates = _candidates(session, queue_id=queue.id, reviewer_id=reviewer_id, now=now)
        session.rollback()  # end the read snapshot before the write
        if not candidates:
            return None
        slot_id, _item_id = rng.choice(candidates)
        try:
            with writing(session):
                res = session.execute(update(Slot).where(Slot.id == slot_id, _claimable(now)).values(
                    state="leased", reviewer_id=reviewer_id, lease_expires=now + lease_seconds, leased_at=now,
                    flipped=rng.random() < 0.5))
                session.commit()
        except IntegrityError:  # this reviewer just claimed another slot of that item elsewhere
            session.rollback()
            continue
        if res.rowcount == 1:
            slot = session.get(Slot, slot_id, populate_existing=True)
            return Lease(item=session.get(Item, slot.item_id), slot=slot)
    return None


def _candidates(session: Session, *, queue_id: int, reviewer_id: int, now: float) -> list:
    """Claimable slots of items this reviewer has not touched: expired leases first, then free ones.

    Two index-friendly queries (ix_slots_queue_state) instead of one OR, so the cost stays flat
    however many slots of the queue are already done.
    """
    mine = aliased(Slot)
    untouched = (~exists().where(mine.item_id == Slot.item_id, mine.reviewer_id == reviewer_id),
                 ~exists().where(Skip.item_id == Slot.item_id, Skip.reviewer_id == reviewer_id))
    expired = session.execute(select(Slot.id, Slot.item_id).where(
        Slot.queue_id == queue_id, Slot.state == "leased", Slot.lease_expires < now, *untouched)
        .order_by(Slot.id).limit(CANDIDATES)).all()
    if len(expired) >= CANDIDATES:
        return expired
    free = session.execute(select(Slot.id, Slot.item_id).where(
        Slot.queue_id == queue_id, Slot.state == "free", *untouched)
        .order_by(Slot.id).limit(CANDIDATES - len(expired))).all()
    return expired + free


def _renew(session: Session, *, slot_id: int, reviewer_id: int, now: float, seconds: float) -> bool:
    res = session.execute(update(Slot).where(Slot.id == slot_id, Slot.reviewer_id == reviewer_id,
                                             Slot.state == "leased").values(lease_expires=now + seconds))
    return res.rowcount == 1


def get_item(session: Session, *, queue: Queue, public_id: str) -> Item:
    item = session.scalar(select(Item).where(Item.public_id == public_id, Item.queue_id == queue.id))
    if item is None:
        raise NotFound("item not found in this queue", hint="open the queue and take the next item")
    return item


def renew(session: Session, *, item: Item, reviewer_id: int, lease_seconds: float, now: float | None = None) -> bool:
    """Extend the reviewer's lease on `item` (the open page pings this); False if it is gone."""
    now = time.time() if now is None else now
    slot_id = session.scalar(select(Slot.id).where(Slot.item_id == item.id, Slot.reviewer_id == reviewer_id))
    with writing(session):
        ok = slot_id is not None and _renew(session, slot_id=slot_id, reviewer_id=reviewer_id, now=now,
                                            seconds=lease_seconds)
        session.commit()
    return ok


def skip(session: Session, *, item: Item, reviewer_id: int) -> None:
    """Give the slot back to the pool and never offer this item to this reviewer again."""
    skipped = session.get(Skip, (item.id, reviewer_id)) is not None
    with writing(session):
        session.execute(update(Slot).where(Slot.item_id == item.id, Slot.reviewer_id == reviewer_id,
                                           Slot.state == "leased").values(
            state="free", reviewer_id=None, lease_expires=None, leased_at=None))
        if not skipped:
            session.add(Skip(item_id=item.id, reviewer_id=reviewer_id))
        session.commit()


def release_all(session: Session, *, reviewer_id: int) -> None:
    """Free every lease the reviewer holds (log out)."""
    with writing(session):
        session.execute(update(Slot).where(Slot.reviewer_id == reviewer_id, Slot.state == "leased").values(
            state="free", reviewer_id=None, lease_expires=None, leased_at=None))
        session.commit()


def validate_grade(queue: Queue, grade: GradeIn) -> GradeIn:
    """Refuse grades that do not fit the queue's rubric (missing or out-of-scale levels)."""
    rubric = Rubric.model_validate(queue.rubric)
    if queue.mode == "pairwise":
        if grade.choice is None:
            raise ReviewError("pick A, B, tie or both bad", hint="choose one option")
        return grade
    for c in rubric.criteria:
        level = grade.scores.get(c.name)
        if level is None:
            raise ReviewError(f"criterion {c.name!r} has no grade", hint="grade every criterion")
        if level not in c.levels:
            raise ReviewError(f"criterion {c.name!r}: level {level} is outside {c.scale[0]}..{c.scale[1]}")
    unknown = sorted(set(grade.scores) - {c.name for c in rubric.criteria})
    if unknown:
        raise ReviewError(f"unknown criteria {unknown}")
    if grade.correction and not rubric.correction:
        raise ReviewError("this rubric takes no corrected response")
    return grade


def submit(session: Session, *, queue: Queue, item: Item, reviewer_id: int, grade: GradeIn,
           now: float | None = None) -> tuple[Grade, bool]:
    """Record a grade; returns (grade, created). A repeat (double click, refresh) returns the first one.

    Only the holder of a lease may grade: the reviewer's own slot is closed. If their lease expired
    but nobody took the slot, the late grade is still accepted. A reviewer with no slot on the item
    (never leased, skipped, or the slot went to someone else after expiry) is refused (409): grades
    come only from items the app handed out, so nobody picks which items they grade. Commits.
    """
    now = time.time() if now is None else now
    validate_grade(queue, grade)
    existing = _grade_of(session, item_id=item.id, reviewer_id=reviewer_id)
    if existing is not None:
        return existing, False
    slot = session.scalar(select(Slot).where(Slot.item_id == item.id, Slot.reviewer_id == reviewer_id))
    if slot is None:
        raise Conflict("you hold no lease on this item (it was never handed to you, you skipped it, or your "
                       "lease expired and it went to another reviewer)",
                       hint="take the next item from the queue and grade that")
    choice = _resolve_choice(item, slot, grade.choice) if queue.mode == "pairwise" else None
    try:
        with writing(session):
            if not _close_slot(session, slot=slot, reviewer_id=reviewer_id):
                session.rollback()
                raise Conflict("your lease on this item expired and it went to another reviewer",
                               hint="take the next item")
            row = Grade(queue_id=queue.id, item_id=item.id, reviewer_id=reviewer_id, scores=dict(grade.scores),
                        choice=choice, comment=grade.comment or None, correction=grade.correction or None,
                        seconds=(now - slot.leased_at) if slot is not None and slot.leased_at else None,
                        created_at=now)
            session.add(row)
            session.execute(delete(Skip).where(Skip.item_id == item.id, Skip.reviewer_id == reviewer_id))
            card_outbox.enqueue(session, [item.adapter], now=now)  # committed with the grade: never lost
            session.commit()
        return row, True
    except IntegrityError:  # a concurrent identical submit won: return its grade
        session.rollback()
        existing = _grade_of(session, item_id=item.id, reviewer_id=reviewer_id)
        if existing is None:
            raise
        return existing, False


def _grade_of(session: Session, *, item_id: int, reviewer_id: int) -> Grade | None:
    return session.scalar(select(Grade).where(Grade.item_id == item_id, Grade.reviewer_id == reviewer_id))


def _close_slot(session: Session, *, slot: Slot, reviewer_id: int) -> bool:
    """Mark the reviewer's leased slot done (compare-and-set: False when it is no longer theirs)."""
    res = session.execute(update(Slot).where(Slot.id == slot.id, Slot.reviewer_id == reviewer_id,
                                             Slot.state == "leased").values(state="done", lease_expires=None))
    return res.rowcount == 1


def _resolve_choice(item: Item, slot: Slot | None, shown: str | None) -> str | None:
    """Map the A/B the reviewer saw back to the target labels (the page never shows them)."""
    if shown in (None, "tie", "both_bad"):
        return shown
    labels = sorted(item.data["responses"])
    if slot is not None and slot.flipped:
        labels.reverse()
    return labels[0] if shown == "A" else labels[1]


def pairwise_sides(item: Item, slot: Slot) -> list[tuple[str, str]]:
    """[("A", text), ("B", text)] in the order this reviewer's slot shows them."""
    labels = sorted(item.data["responses"])
    if slot.flipped:
        labels.reverse()
    return [("A", item.data["responses"][labels[0]]), ("B", item.data["responses"][labels[1]])]
