"""JSON API (bearer tokens): ingest items, queue stats, exports."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from lorafleet.human_review import crud, export, stats
from lorafleet.human_review.db import writing
from lorafleet.human_review.deps import ApiCallerDep, SessionDep, SettingsDep, read_body
from lorafleet.human_review.errors import Conflict, Forbidden, NotFound, ReviewError
from lorafleet.human_review.models import Queue
from lorafleet.human_review.rubrics import Rubric
from lorafleet.human_review.schemas import QueueCreate, QueueCreated, QueuePublic
from lorafleet.human_review.service import guard_training
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from lorafleet.errors import HeldOutError
from lorafleet.samples import IngestRequest, IngestResponse

router = APIRouter()


def _queue(session, caller, name: str, include_deleted: bool = False) -> Queue:  # noqa: ANN001
    try:
        queue = crud.get_queue(session, name=name, include_deleted=True)
    except NotFound:
        if caller.admin:  # the admin token may see every queue: say plainly that this one is missing
            raise NotFound(f"queue {name!r} not found",
                           hint=f"create it: lorafleet review queues create {name} --rubric RUBRIC.yaml") from None
        queue = None
    if queue is not None and queue.deleted_at is not None and not include_deleted:
        if caller.admin:
            raise NotFound(f"queue {name!r} was deleted", hint="its grades are kept: export with include_deleted=true")
        queue = None
    if queue is None or not caller.may_use(queue):
        # Same answer for "no such queue" and "not yours": a queue token learns nothing about others.
        raise Forbidden("this token may not use that queue", hint="use the queue's own token or the admin token")
    return queue


# POST routes read their body with read_body() *after* the token check: a caller without a valid token
# never makes the app read (let alone parse) a body.
@router.post("/queues", response_model=QueueCreated, status_code=201)
async def create_queue(request: Request, session: SessionDep, caller: ApiCallerDep) -> QueueCreated:
    """Admin token only: a new queue (rubric given inline as the YAML's mapping) and its ingest token."""
    if not caller.admin:
        raise Forbidden("creating queues needs the admin token", hint="queue tokens may only ingest")
    body = await read_body(request, QueueCreate)
    return await run_in_threadpool(_create_queue, session, body)


def _create_queue(session, body: QueueCreate) -> QueueCreated:  # noqa: ANN001
    try:
        rubric = Rubric.model_validate(body.rubric) if body.rubric else None
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ReviewError(f"rubric.{'.'.join(map(str, err['loc']))}: {err['msg']}",
                          hint="see examples/rubrics/general.yaml") from None
    with writing(session):
        created = crud.create_queue(session, queue_in=body, rubric=rubric)
        session.commit()
    return created


@router.post("/items", response_model=IngestResponse)
async def ingest_items(request: Request, session: SessionDep, caller: ApiCallerDep) -> IngestResponse:
    body = await read_body(request, IngestRequest)
    return await run_in_threadpool(_ingest, session, caller, body)


def _ingest(session, caller, body: IngestRequest) -> IngestResponse:  # noqa: ANN001
    queue = _queue(session, caller, body.queue)
    with writing(session):
        result = crud.ingest(session, queue=queue, items=body.items)
        session.commit()
    return result


@router.get("/queues/{name}", response_model=QueuePublic)
def queue_info(name: str, session: SessionDep, caller: ApiCallerDep) -> QueuePublic:
    """200 when the queue exists and this token may ingest into it (the cheap check clients run at start-up);
    401 bad token, 403 another queue's token, 404 (admin token) no such queue."""
    return crud.queue_public(session, queue=_queue(session, caller, name))


@router.get("/queues/{name}/stats")
def queue_stats(name: str, session: SessionDep, caller: ApiCallerDep) -> dict:
    return stats.queue_stats(session, queue=_queue(session, caller, name))


@router.get("/queues/{name}/export")
def queue_export(name: str, session: SessionDep, caller: ApiCallerDep, settings: SettingsDep,
                 format: export.ExportFormat = "grades",  # noqa: A002 - query name
                 resolve: export.Resolve = "majority", include_held_out: bool = False,
                 allow_held_out: bool = False, include_deleted: bool = False) -> StreamingResponse:
    """Admin token only: JSONL. Training exports: one record per item by `resolve`, eval-run items left out
    unless include_held_out, and a 409 naming each record whose prompt is held out unless allow_held_out."""
    if not caller.admin:
        raise Forbidden("exports need the admin token", hint="queue tokens may only ingest")
    queue = _queue(session, caller, name, include_deleted=include_deleted)  # a deleted queue's archive too
    if format == "training":
        result = export.training_export(session, queue=queue, resolve=resolve, include_held_out=include_held_out)
        try:
            guard_training(result.records, settings.data_dir, allow=allow_held_out)
        except HeldOutError as exc:
            raise Conflict(exc.message, hint="remove those items, or pass allow_held_out=true") from None
        rows = result.records
    else:
        rows = list(export.export_rows(session, queue=queue, fmt=format))
    return StreamingResponse((json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                             media_type="application/x-ndjson")
