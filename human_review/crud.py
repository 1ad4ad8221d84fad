"""Users, queues, members and item ingest. Keyword-only functions over a Session; callers commit."""

from __future__ import annotations

import secrets
import time

from lorafleet.human_review import security
from lorafleet.human_review.errors import Conflict, NotFound, ReviewError
from lorafleet.human_review.models import Grade, Item, Queue, QueueMember, Slot, User
from lorafleet.human_review.rubrics import PAIRWISE, Rubric
from lorafleet.human_review.schemas import QueueCreate, QueueCreated, QueuePublic, UserCreate
from sqlalchemy import func, insert, select
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
    user = get_user(session, name=name)
    ok = security.verify_password(user.password_hash if user else None, password)
    return user if ok else None


def create_queue(session: Session, *, queue_in: QueueCreate, rubric: Rubric | None) -> QueueCreated:
    """A new queue and its ingest token (returned once; only its hash is stored)."""
    if session.scalar(select(Queue).where(Queue.name == queue_in.name)) is not None:
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


def get_queue(session: Session, *, name: str) -> Queue:
    queue = session.scalar(select(Queue).where(Queue.name == name))
    if queue is None:
        raise NotFound(f"queue {name!r} not found", hint="list queues with `lorafleet review queues list`")
    return queue


def add_member(session: Session, *, queue: Queue, user_name: str) -> None:
    user = get_user(session, name=user_name)
    if user is None:
        raise NotFound(f"user {user_name!r} not found", hint="add it with `lorafleet review users add`")
    if session.get(QueueMember, (queue.id, user.id)) is None:
        session.add(QueueMember(queue_id=queue.id, user_id=user.id))
        session.flush()


def can_access(session: Session, *, user: User, queue: Queue) -> bool:
    return user.role == "admin" or session.get(QueueMember, (queue.id, user.id)) is not None


def visible_queues(session: Session, *, user: User) -> list[Queue]:
    stmt = select(Queue).order_by(Queue.name)
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
                           data=item.model_dump(mode="json"), is_gold="gold" in item.metadata, created_at=now)
                session.add(row)
                session.flush()
                session.execute(insert(Slot), [{"queue_id": queue.id, "item_id": row.id, "slot_no": n,
                                                "state": "free", "flipped": False} for n in range(queue.overlap)])
            created += 1
        except IntegrityError:  # a concurrent ingest of the same id won the race: still idempotent
            pass
    return IngestResponse(created=created, existing=len(ids) - created)
