"""Library entry points the CLI and tests call: open the database, import a JSONL file, export."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lorafleet.human_review import crud, db, export
from lorafleet.human_review.settings import ReviewSettings
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from lorafleet.errors import FormatError
from lorafleet.formats import iter_jsonl
from lorafleet.fsutil import atomic_write_jsonl
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


def write_export(factory: sessionmaker[Session], *, queue: str, fmt: export.ExportFormat, out: Path) -> int:
    with db.session_scope(factory) as session:
        q = crud.get_queue(session, name=queue)
        rows: Iterable[dict[str, Any]] = list(export.export_rows(session, queue=q, fmt=fmt))
    return atomic_write_jsonl(out, rows)
