"""Library entry points the CLI and tests call: open the database, import a JSONL file, export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorafleet.human_review import crud, db, export
from lorafleet.human_review.settings import ReviewSettings
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.orm import Session, sessionmaker

from lorafleet.errors import FormatError
from lorafleet.formats import Message, iter_jsonl
from lorafleet.fsutil import atomic_write_jsonl
from lorafleet.heldout import HeldOutIndex, HeldOutMatch, heldout_text
from lorafleet.heldout import refusal as heldout_refusal
from lorafleet.samples import IngestResponse, ReviewItem


def open_db(settings: ReviewSettings) -> sessionmaker[Session]:
    """A session factory on the review database, migrated to the newest schema."""
    engine = db.make_engine(settings.review_db_url)
    db.migrate(engine)
    return db.session_factory(engine)


def read_items(path: Path) -> list[ReviewItem]:
    """Validate a JSONL import file; the first bad line raises FormatError naming file:line:field."""
    items = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        if isinstance(obj, dict):
            obj.setdefault("source", "import")
        try:
            item = ReviewItem.model_validate(obj)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or None
            raise FormatError(err["msg"], path=str(path), line=lineno, field=field,
                              hint="see `lorafleet review import --help` for the item format") from None
        if item.id in seen:
            raise FormatError(f"duplicate id {item.id!r} (first on line {seen[item.id]})", path=str(path),
                              line=lineno, field="id", hint="give every item a unique id")
        seen[item.id] = lineno
        items.append(item)
    if not items:
        raise FormatError(f"{path}: no items", hint="one JSON object per line")
    return items


def import_items(factory: sessionmaker[Session], *, queue: str, items: list[ReviewItem]) -> IngestResponse:
    """Ingest in batches (each its own transaction); a rerun after a crash adds only what is missing."""
    created = existing = 0
    for start in range(0, len(items), 1000):
        with db.session_scope(factory) as session:
            q = crud.get_queue(session, name=queue)
            res = crud.ingest(session, queue=q, items=items[start:start + 1000])
        created += res.created
        existing += res.existing
    return IngestResponse(created=created, existing=existing)


class ExportSummary(BaseModel):
    """What an export wrote and what it left out (`review export --json`)."""

    queue: str
    format: export.ExportFormat
    records: int
    output: str | None = None
    resolve: export.Resolve | None = None
    conflicts: list[export.ExportConflict] = Field(default_factory=list)
    held_out_left_out: list[str] = Field(default_factory=list, description="Eval-run items not exported.")
    held_out_allowed: list[HeldOutMatch] = Field(
        default_factory=list, description="Records matching the held-out index, exported under --allow-held-out.")
    unadjudicated: int = 0
    index_note: str | None = Field(default=None, description="Set when the held-out index had to be rebuilt.")


def export_records(factory: sessionmaker[Session], *, queue: str, fmt: export.ExportFormat,
                   data_dir: Path, resolve: export.Resolve = "majority", include_held_out: bool = False,
                   allow_held_out: bool = False,
                   include_deleted: bool = False) -> tuple[list[dict[str, Any]], ExportSummary]:
    """The records of one export; training records are checked against the held-out index first.

    Raises HeldOutError (exit 1) when a training record's prompt is a held-out one, unless
    `allow_held_out` (then the record is exported marked `"held_out": true`). Eval-run items included
    with `include_held_out` are marked already and not checked again: train's guard refuses them anyway.
    """
    with db.session_scope(factory) as session:
        q = crud.get_queue(session, name=queue, include_deleted=include_deleted)  # a deleted queue's archive too
        if fmt != "training":
            rows = list(export.export_rows(session, queue=q, fmt=fmt))
            return rows, ExportSummary(queue=queue, format=fmt, records=len(rows))
        result = export.training_export(session, queue=q, resolve=resolve, include_held_out=include_held_out)
    matches, note = guard_training(result.records, data_dir, allow=allow_held_out)
    return result.records, ExportSummary(
        queue=queue, format=fmt, records=len(result.records), resolve=resolve, conflicts=result.conflicts,
        held_out_left_out=result.held_out_left_out, held_out_allowed=matches, unadjudicated=result.unadjudicated,
        index_note=note)


def guard_training(records: list[dict[str, Any]], data_dir: Path, *,
                   allow: bool) -> tuple[list[HeldOutMatch], str | None]:
    """Check training records against the held-out index; refuse matches unless `allow` (then mark them)."""
    texts: dict[str, str] = {}
    for r in records:
        if not r.get("held_out"):
            texts.setdefault(_where(r), heldout_text([Message.model_validate(m) for m in r["messages"]]))
    if not texts:
        return [], None
    index = HeldOutIndex(data_dir)
    matches = index.check(texts.items())
    if matches and not allow:
        raise heldout_refusal(matches, what="a training export")
    by_where = {m.where: m for m in matches}
    for r in records:
        if (m := by_where.get(_where(r))) is not None:
            r.update(held_out=True, held_out_source=m.source, held_out_role=m.role)
    return matches, index.note


def _where(record: dict[str, Any]) -> str:
    return f"review item {record['queue']}:{record['item']}"


def write_export(factory: sessionmaker[Session], *, queue: str, fmt: export.ExportFormat, out: Path,
                 data_dir: Path, **kw: Any) -> ExportSummary:
    """Write one export atomically (nothing is written when the held-out check refuses it)."""
    rows, summary = export_records(factory, queue=queue, fmt=fmt, data_dir=data_dir, **kw)
    atomic_write_jsonl(out, rows)
    return summary.model_copy(update={"output": str(out)})


class QueueDeleted(BaseModel):
    """What `review queues delete` did: the queue is soft-deleted, its grades archived (and still in the DB)."""

    queue: str
    grades: int
    archive: str = Field(description="JSONL of the queue's grades (the `grades` export format), mode 0600.")


def delete_queue(factory: sessionmaker[Session], *, queue: str, data_dir: Path) -> QueueDeleted:
    """Soft-delete a queue, then archive its grades to <data_dir>/review-archive/QUEUE-TIME.grades.jsonl.

    Deleted first, so no grade arrives after the archive was read; either way nothing is dropped: the
    rows stay in the database for `review export QUEUE --include-deleted`.
    """
    import time

    with db.session_scope(factory) as session:
        crud.delete_queue(session, queue=crud.get_queue(session, name=queue))
    with db.session_scope(factory) as session:
        rows = list(export.export_rows(session, queue=crud.get_queue(session, name=queue, include_deleted=True),
                                       fmt="grades"))
    out = Path(data_dir) / "review-archive" / f"{queue}-{time.strftime('%Y%m%dT%H%M%S')}.grades.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out, rows)
    out.chmod(0o600)  # reviewers' names and comments
    return QueueDeleted(queue=queue, grades=len(rows), archive=str(out))
