"""Users, queues, members and item ingest. Keyword-only functions over a Session; callers commit."""

from __future__ import annotations

import secrets
import time

from lorafleet.human_review import card_outbox, security, sessions
from lorafleet.human_review.errors import Conflict, NotFound, ReviewError
from lorafleet.human_review.models import Grade, Item, Queue, QueueMember, Slot, User
from lorafleet.human_review.rubrics import PAIRWISE, Rubric
from lorafleet.human_review.schemas import QueueCreate, QueueCreated, QueuePublic, UserCreate, UserPublic
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lorafleet.samples import IngestResponse, ReviewItem


def create_user(session: Session, *, user_in: UserCreate) -> User:
    if session.scalar(select(User).where(User.name == user_in.name)) is not None:
        raise Conflict(f"user {user_in.name!r} exists", hint="pick another name")
    user = User(name=user_in.name, role=user_in.role, password_hash=security.hash_password(user_in.password),
                created_at=time.time())
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, *, name: str) -> User | None:
    return session.scalar(select(User).where(User.name == name))


def authenticate(session: Session, *, name: str, password: str) -> User | None:
    """The user when the password matches and the account is enabled (a full argon2 verify either way)."""
    user = get_user(session, name=name)
    ok = security.verify_password(user.password_hash if user else None, password)
    return user if ok and user.disabled_at is None else None


def require_user(session: Session, *, name: str) -> User:
    user = get_user(session, name=name)
    if user is None:
        raise NotFound(f"user {name!r} not found", hint="list users with `lorafleet review users list`")
    return user


def set_disabled(session: Session, *, name: str, disabled: bool) -> User:
    """Disable (no login; every session ended, leases handed back) or enable an account. Grades stay."""
    user = require_user(session, name=name)
    if disabled and user.disabled_at is None:
        user.disabled_at = time.time()
        sessions.revoke_all(session, user_id=user.id)
        _release_leases(session, user_id=user.id)
    elif not disabled:
        user.disabled_at = None
    session.flush()
    return user


def reset_password(session: Session, *, name: str, password: str) -> User:
    """Set a new password and end every session of the account (a stolen cookie stops working)."""
    user = require_user(session, name=name)
    if not 8 <= len(password) <= 1024:
        raise ReviewError("passwords need 8 to 1024 characters", hint="pick a longer password")
    user.password_hash = security.hash_password(password)
    sessions.revoke_all(session, user_id=user.id)
    session.flush()
    return user


def list_users(session: Session) -> list[UserPublic]:
    return [UserPublic(id=u.id, name=u.name, role=u.role, disabled=u.disabled_at is not None)
            for u in session.scalars(select(User).order_by(User.name))]


def _release_leases(session: Session, *, user_id: int, queue_id: int | None = None) -> None:
    """Hand the user's open leases back to the pool (all queues, or one)."""
    where = [Slot.reviewer_id == user_id, Slot.state == "leased"]
    if queue_id is not None:
        where.append(Slot.queue_id == queue_id)
    session.execute(update(Slot).where(*where).values(state="free", reviewer_id=None, lease_expires=None,
                                                      leased_at=None))


def create_queue(session: Session, *, queue_in: QueueCreate, rubric: Rubric | None) -> QueueCreated:
    """A new queue and its ingest token (returned once; only its hash is stored)."""
    if (same := session.scalar(select(Queue).where(Queue.name == queue_in.name))) is not None:
        if same.deleted_at is not None:  # names stay reserved: its archived grades are exported by name
            raise Conflict(f"queue {queue_in.name!r} exists (deleted; its grades are kept)",
                           hint="pick another name")
        raise Conflict(f"queue {queue_in.name!r} exists", hint="pick another name or import into it")
    if queue_in.mode == "rubric" and (rubric is None or not rubric.criteria):
        raise ReviewError("a rubric queue needs a rubric with at least one criterion",
                          hint="pass --rubric examples/rubrics/general.yaml")
    rubric = rubric if queue_in.mode == "rubric" else (rubric or PAIRWISE)
    token = security.new_token("rvq")
    queue = Queue(name=queue_in.name, mode=queue_in.mode, overlap=queue_in.overlap,
                  rubric=rubric.model_dump(mode="json"), token_hash=security.token_hash(token),
                  created_at=time.time())
    session.add(queue)
    session.flush()
    for name in queue_in.members:
        add_member(session, queue=queue, user_name=name)
    return QueueCreated(**queue_public(session, queue=queue).model_dump(), token=token)


def rotate_token(session: Session, *, queue: Queue) -> str:
    token = security.new_token("rvq")
    queue.token_hash = security.token_hash(token)
    return token


def get_queue(session: Session, *, name: str, include_deleted: bool = False) -> Queue:
    """The queue by name; a deleted queue is NotFound unless `include_deleted` (exports of its archive)."""
    queue = session.scalar(select(Queue).where(Queue.name == name))
    if queue is None:
        raise NotFound(f"queue {name!r} not found", hint="list queues with `lorafleet review queues list`")
    if queue.deleted_at is not None and not include_deleted:
        raise NotFound(f"queue {name!r} was deleted",
                       hint=f"its grades are kept: lorafleet review export {name} --include-deleted")
    return queue


def delete_queue(session: Session, *, queue: Queue) -> None:
    """Soft delete: hidden from reviewers, pages and the API, its token dead, open leases dropped; items
    and grades stay in the database for `review export --include-deleted`. Caller commits."""
    queue.deleted_at = time.time()
    # Its grades stop counting on card.review: rewrite the cards of the versions it held.
    card_outbox.enqueue(session, session.scalars(select(Item.adapter).where(Item.queue_id == queue.id).distinct()))
    queue.token_hash = "deleted:" + secrets.token_hex(24)  # no token hashes to this: ingest refused
    session.execute(update(Slot).where(Slot.queue_id == queue.id, Slot.state == "leased").values(
        state="free", reviewer_id=None, lease_expires=None, leased_at=None))
    session.flush()


def add_member(session: Session, *, queue: Queue, user_name: str) -> None:
    user = get_user(session, name=user_name)
    if user is None:
        raise NotFound(f"user {user_name!r} not found", hint="add it with `lorafleet review users add`")
    if session.get(QueueMember, (queue.id, user.id)) is None:
        session.add(QueueMember(queue_id=queue.id, user_id=user.id))
        session.flush()


def remove_member(session: Session, *, queue: Queue, user_name: str) -> bool:
    """Take a reviewer off a queue (their open leases there go back to the pool; their grades stay).
    False when they were not a member."""
    user = require_user(session, name=user_name)
    member = session.get(QueueMember, (queue.id, user.id))
    if member is None:
        return False
    session.delete(member)
    _release_leases(session, user_id=user.id, queue_id=queue.id)
    session.flush()
    return True


def can_access(session: Session, *, user: User, queue: Queue) -> bool:
    if queue.deleted_at is not None:
        return False
    return user.role == "admin" or session.get(QueueMember, (queue.id, user.id)) is not None


def visible_queues(session: Session, *, user: User) -> list[Queue]:
    stmt = select(Queue).where(Queue.deleted_at.is_(None)).order_by(Queue.name)
    if user.role != "admin":
        stmt = stmt.join(QueueMember, QueueMember.queue_id == Queue.id).where(QueueMember.user_id == user.id)
    return list(session.scalars(stmt))


def queue_public(session: Session, *, queue: Queue) -> QueuePublic:
    items = session.scalar(select(func.count()).select_from(Item).where(Item.queue_id == queue.id)) or 0
    grades = session.scalar(select(func.count()).select_from(Grade).where(Grade.queue_id == queue.id)) or 0
    return QueuePublic(name=queue.name, mode=queue.mode, overlap=queue.overlap, rubric=queue.rubric["name"],
                       items=items, grades=grades, needed=items * queue.overlap)


def graded_by(session: Session, *, queue: Queue, user: User) -> int:
    return session.scalar(select(func.count()).select_from(Grade).where(
        Grade.reviewer_id == user.id, Grade.queue_id == queue.id)) or 0


def check_item_fits(queue: Queue, item: ReviewItem) -> None:
    if queue.mode == "pairwise" and item.responses is None:
        raise ReviewError(f"item {item.id!r}: queue {queue.name!r} is pairwise and needs 'responses'",
                          hint="send two responses keyed by target label")
    if queue.mode == "rubric" and item.response is None:
        raise ReviewError(f"item {item.id!r}: queue {queue.name!r} grades one 'response'",
                          hint="send 'response', or use a pairwise queue")


def ingest(session: Session, *, queue: Queue, items: list[ReviewItem]) -> IngestResponse:
    """Add items (and their k slots); ids already in the queue are left untouched (idempotent)."""
    for item in items:
        check_item_fits(queue, item)
    ids = list(dict.fromkeys(i.id for i in items))
    have: set[str] = set()
    for start in range(0, len(ids), 500):
        have.update(session.scalars(select(Item.ext_id).where(Item.queue_id == queue.id,
                                                             Item.ext_id.in_(ids[start:start + 500]))))
    now = time.time()
    new = [i for i in {i.id: i for i in items}.values() if i.id not in have]
    created = 0
    for item in new:
        try:
            with session.begin_nested():
                row = Item(queue_id=queue.id, ext_id=item.id, public_id=secrets.token_hex(12),
                           adapter=item.adapter, data=item.model_dump(mode="json"), is_gold="gold" in item.metadata,
                           created_at=now)
                session.add(row)
                session.flush()
                session.execute(insert(Slot), [{"queue_id": queue.id, "item_id": row.id, "slot_no": n,
                                                "state": "free", "flipped": False} for n in range(queue.overlap)])
            created += 1
        except IntegrityError:  # a concurrent ingest of the same id won the race: still idempotent
            pass
    card_outbox.enqueue(session, (i.adapter for i in new), now=now)  # item counts on card.review change
    return IngestResponse(created=created, existing=len(ids) - created)
