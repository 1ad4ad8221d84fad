"""Exports: grades JSONL, training JSONL (chat messages + provenance, one record per item by a stated
policy), preference pairs JSONL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Literal

from lorafleet.human_review.models import Grade, Item, Queue, User
from lorafleet.human_review.rubrics import Rubric
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from lorafleet.samples import ReviewItem

ExportFormat = Literal["grades", "training", "pairs"]
Resolve = Literal["majority", "adjudicated", "all"]


def _rows(session: Session, queue: Queue):  # noqa: ANN202
    return session.execute(
        select(Grade, Item.ext_id, Item.data, User.name)
        .join(Item, Item.id == Grade.item_id).join(User, User.id == Grade.reviewer_id)
        .where(Grade.queue_id == queue.id).order_by(Grade.id)).yield_per(1000)


def export_rows(session: Session, *, queue: Queue, fmt: ExportFormat, resolve: Resolve = "majority",
                include_held_out: bool = False) -> Iterator[dict[str, Any]]:
    """The records of one export, oldest grade first (training: one per item by `resolve`)."""
    if fmt == "grades":
        return _grades(session, queue)
    if fmt == "training":
        return iter(training_export(session, queue=queue, resolve=resolve, include_held_out=include_held_out).records)
    return _pairs(session, queue)


def _grades(session: Session, queue: Queue) -> Iterator[dict[str, Any]]:
    """One row per grade; `metric_scores` (the item's per-sample metric scores) and the eval run's
    run_id/target/sample_id ride along, so grades can be correlated with metrics offline."""
    for grade, ext_id, data, name in _rows(session, queue):
        meta = data.get("metadata") or {}
        metric_scores = data.get("scores") or meta.get("scores") or {}  # pairwise items keep theirs per target
        yield {"queue": queue.name, "item": ext_id, "reviewer": name, "scores": grade.scores,
               "choice": grade.choice, "comment": grade.comment, "correction": grade.correction,
               "adapter": data.get("adapter"), "seconds": grade.seconds, "time": grade.created_at,
               "metric_scores": metric_scores, "source": data.get("source"),
               **{k: meta[k] for k in ("run_id", "suite", "target", "sample_id") if k in meta}}


def _approved(grade: Grade, rubric: Rubric) -> bool:
    if rubric.approve_min is None or not rubric.criteria:
        return False
    return all(grade.scores.get(c.name, c.scale[0]) >= min(rubric.approve_min, c.scale[1]) for c in rubric.criteria)


class ExportConflict(BaseModel):
    """An item the policy could not turn into one record: reviewers disagree and nothing decides."""

    item: str
    why: str = Field(description="tie (majority) | awaiting adjudication | disagree (all: exported, marked)")
    answers: dict[str, int] = Field(description="Answer (start of the text; '-' = rejected, no correction) "
                                                "→ how many reviewers gave it.")


class TrainingExport(BaseModel):
    """Training records (one per item unless resolve=all) and what was left out, and why."""

    resolve: Resolve
    records: list[dict[str, Any]] = Field(default_factory=list)
    conflicts: list[ExportConflict] = Field(default_factory=list)
    held_out_left_out: list[str] = Field(default_factory=list, description="Eval-run items (source 'eval').")
    unadjudicated: int = Field(default=0, description="resolve=adjudicated: items no admin has graded.")


@dataclass(frozen=True)
class _Vote:
    """What one grade says the training answer is (None: rejected without a correction)."""

    answer: str | None
    kind: str | None  # corrected | approved
    grade: Grade
    reviewer: str
    admin: bool

    @property
    def key(self) -> str | None:
        # corrections that differ only in spacing are the same answer
        return None if self.answer is None else " ".join(self.answer.split())


def _vote(grade: Grade, item: ReviewItem, queue: Queue, rubric: Rubric, reviewer: str, role: str) -> _Vote:
    if grade.correction and grade.correction.strip():
        answer, kind = grade.correction, "corrected"
    elif queue.mode == "rubric" and item.response is not None and _approved(grade, rubric):
        answer, kind = item.response, "approved"
    else:
        answer = kind = None
    return _Vote(answer, kind, grade, reviewer, role == "admin")


def _tally(votes: list[_Vote]) -> dict[str | None, list[_Vote]]:
    by_key: dict[str | None, list[_Vote]] = {}
    for v in votes:
        by_key.setdefault(v.key, []).append(v)
    return by_key


def _answers(by_key: dict[str | None, list[_Vote]]) -> dict[str, int]:
    return {("-" if k is None else k[:60]): len(vs) for k, vs in by_key.items()}


def training_export(session: Session, *, queue: Queue, resolve: Resolve = "majority",
                    include_held_out: bool = False) -> TrainingExport:
    """Chat records from grades: a correction, or the original response when every criterion passed.

    majority: the answer most of the item's reviewers gave (a rejection without correction counts as
    a vote for no record); a tie is a conflict and the item is left out. adjudicated: an admin's grade
    decides (the latest, when several admins graded); items without one are left out. all: one record
    per grade, as before, with `grades` and `conflict` marking duplicates. Items from eval runs (their
    prompts come from test splits) are left out unless `include_held_out`; then they carry
    `"held_out": true` and their run id.
    """
    rubric = Rubric.model_validate(queue.rubric)
    out = TrainingExport(resolve=resolve)
    rows = session.execute(
        select(Grade, Item.id, Item.ext_id, Item.data, User.name, User.role)
        .join(Item, Item.id == Grade.item_id).join(User, User.id == Grade.reviewer_id)
        .where(Grade.queue_id == queue.id).order_by(Item.id, Grade.id))
    for _, group in groupby(rows, key=lambda r: r[1]):
        grades = list(group)
        ext_id, data = grades[0][2], grades[0][3]
        item = ReviewItem.model_validate(data)
        if item.source == "eval" and not include_held_out:
            out.held_out_left_out.append(ext_id)
            continue
        votes = [_vote(g, item, queue, rubric, name, role) for g, _, _, _, name, role in grades]
        by_key = _tally(votes)
        if resolve == "all":
            disagree = len(by_key) > 1
            if disagree:
                out.conflicts.append(ExportConflict(item=ext_id, why="disagree", answers=_answers(by_key)))
            out.records += [_record(queue, ext_id, item, v, [v], len(votes), resolve, conflict=disagree)
                            for v in votes if v.answer is not None]
            continue
        if resolve == "adjudicated":
            admins = [v for v in votes if v.admin]
            if not admins:
                out.unadjudicated += 1
                if len(by_key) > 1:
                    out.conflicts.append(ExportConflict(item=ext_id, why="awaiting adjudication",
                                                        answers=_answers(by_key)))
                continue
            decided = admins[-1]
            agreeing = by_key[decided.key]
        else:
            ranked = sorted(by_key.items(), key=lambda kv: -len(kv[1]))
            if len(ranked) > 1 and len(ranked[0][1]) == len(ranked[1][1]):
                out.conflicts.append(ExportConflict(item=ext_id, why="tie", answers=_answers(by_key)))
                continue
            agreeing = ranked[0][1]
            decided = agreeing[0]
        if decided.answer is not None:
            out.records.append(_record(queue, ext_id, item, decided, agreeing, len(votes), resolve))
    return out


def _record(queue: Queue, ext_id: str, item: ReviewItem, vote: _Vote, agreeing: list[_Vote], grades: int,
            resolve: Resolve, *, conflict: bool | None = None) -> dict[str, Any]:
    assert vote.answer is not None
    messages = [m.model_dump() for m in item.prompt_messages()] + [{"role": "assistant", "content": vote.answer}]
    kind = "approved" if item.response is not None and vote.key == " ".join(item.response.split()) else "corrected"
    record: dict[str, Any] = {
        "messages": messages, "queue": queue.name, "item": ext_id, "reviewer": vote.reviewer,
        "reviewers": [v.reviewer for v in agreeing], "adapter": item.adapter, "provenance": kind,
        "scores": vote.grade.scores, "resolve": resolve, "votes": len(agreeing), "grades": grades,
        "source": item.source}
    if conflict is not None:
        record["conflict"] = conflict
    if item.source == "eval":  # only with include_held_out: these prompts come from an eval suite's dataset
        record["held_out"] = True
        record["run_id"] = item.metadata.get("run_id")
        if item.metadata.get("suite"):
            record["suite"] = item.metadata["suite"]
    return record


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
