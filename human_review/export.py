"""Exports: grades JSONL, training JSONL (chat messages + provenance), preference pairs JSONL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from lorafleet.human_review.models import Grade, Item, Queue, User
from lorafleet.human_review.rubrics import Rubric
from sqlalchemy import select
from sqlalchemy.orm import Session

from lorafleet.samples import ReviewItem

ExportFormat = Literal["grades", "training", "pairs"]


def _rows(session: Session, queue: Queue):  # noqa: ANN202
    return session.execute(
        select(Grade, Item.ext_id, Item.data, User.name)
        .join(Item, Item.id == Grade.item_id).join(User, User.id == Grade.reviewer_id)
        .where(Grade.queue_id == queue.id).order_by(Grade.id)).yield_per(1000)


def export_rows(session: Session, *, queue: Queue, fmt: ExportFormat) -> Iterator[dict[str, Any]]:
    """The records of one export, oldest grade first."""
    if fmt == "grades":
        return _grades(session, queue)
    if fmt == "training":
        return _training(session, queue)
    return _pairs(session, queue)


def _grades(session: Session, queue: Queue) -> Iterator[dict[str, Any]]:
    for grade, ext_id, data, name in _rows(session, queue):
        yield {"queue": queue.name, "item": ext_id, "reviewer": name, "scores": grade.scores,
               "choice": grade.choice, "comment": grade.comment, "correction": grade.correction,
               "adapter": data.get("adapter"), "seconds": grade.seconds, "time": grade.created_at}


def _approved(grade: Grade, rubric: Rubric) -> bool:
    if rubric.approve_min is None or not rubric.criteria:
        return False
    return all(grade.scores.get(c.name, c.scale[0]) >= min(rubric.approve_min, c.scale[1]) for c in rubric.criteria)


def _training(session: Session, queue: Queue) -> Iterator[dict[str, Any]]:
    """Chat records: a reviewer's corrected response, else the original when every criterion passed."""
    rubric = Rubric.model_validate(queue.rubric)
    for grade, ext_id, data, name in _rows(session, queue):
        item = ReviewItem.model_validate(data)
        if grade.correction:
            answer, kind = grade.correction, "corrected"
        elif queue.mode == "rubric" and item.response is not None and _approved(grade, rubric):
            answer, kind = item.response, "approved"
        else:
            continue
        messages = [m.model_dump() for m in item.prompt_messages()] + [{"role": "assistant", "content": answer}]
        yield {"messages": messages, "queue": queue.name, "item": ext_id, "reviewer": name,
               "adapter": item.adapter, "provenance": kind, "scores": grade.scores}


def _pairs(session: Session, queue: Queue) -> Iterator[dict[str, Any]]:
    """Preference pairs (chosen/rejected) from pairwise wins; ties and both-bad are left out."""
    for grade, ext_id, data, name in _rows(session, queue):
        item = ReviewItem.model_validate(data)
        if not item.responses or grade.choice not in item.responses:
            continue
        loser = next(label for label in item.responses if label != grade.choice)
        yield {"prompt": [m.model_dump() for m in item.prompt_messages()],
               "chosen": item.responses[grade.choice], "rejected": item.responses[loser],
               "chosen_target": grade.choice, "rejected_target": loser,
               "queue": queue.name, "item": ext_id, "reviewer": name}
