"""Reviewer and admin pages (server-rendered). Every route checks role and queue access."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from lorafleet.human_review import crud, leases, stats
from lorafleet.human_review.deps import AdminUser, Csrf, CurrentUser, SessionDep, SettingsDep, csrf_token
from lorafleet.human_review.errors import NotFound, ReviewError
from lorafleet.human_review.models import Queue, User
from lorafleet.human_review.rubrics import Rubric
from lorafleet.human_review.schemas import GradeIn
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from lorafleet.samples import ReviewItem

router = APIRouter()


def _page(request: Request, template: str, user: User | None, status: int = 200, **ctx: Any) -> Response:
    ctx.update(user=user, csrf=csrf_token(request))
    return request.app.state.templates.TemplateResponse(request, template, ctx, status_code=status)


def _queue_for(session, user: User, name: str) -> Queue:  # noqa: ANN001
    """The queue if this user may work on it; a 404 otherwise, so names of other queues do not leak."""
    try:
        queue = crud.get_queue(session, name=name)
    except NotFound:
        queue = None
    if queue is None or not crud.can_access(session, user=user, queue=queue):
        raise NotFound("queue not found", hint="go back to your queue list")
    return queue


@router.get("/")
def queue_list(request: Request, session: SessionDep, user: CurrentUser) -> Response:
    queues = [crud.queue_public(session, queue=q) for q in crud.visible_queues(session, user=user)]
    return _page(request, "queues.html", user, queues=queues)


@router.get("/q/{name}/next")
def next_item(request: Request, name: str, session: SessionDep, user: CurrentUser, settings: SettingsDep) -> Response:
    queue = _queue_for(session, user, name)
    lease = leases.next_item(session, queue=queue, reviewer_id=user.id, lease_seconds=settings.lease_seconds)
    if lease is None:
        return _page(request, "done.html", user, queue=crud.queue_public(session, queue=queue))
    return RedirectResponse(f"/q/{queue.name}/items/{lease.item.public_id}", status_code=303)


@router.get("/q/{name}/items/{public_id}")
def grade_page(request: Request, name: str, public_id: str, session: SessionDep, user: CurrentUser,
               settings: SettingsDep) -> Response:
    queue = _queue_for(session, user, name)
    item = leases.get_item(session, queue=queue, public_id=public_id)
    slot = leases.current_lease(session, queue=queue, reviewer_id=user.id)
    if slot is None or slot.item_id != item.id:  # not (or no longer) this reviewer's item
        return RedirectResponse(f"/q/{queue.name}/next", status_code=303)
    review_item = ReviewItem.model_validate(item.data)
    sides = leases.pairwise_sides(item, slot) if queue.mode == "pairwise" else None
    return _page(request, "grade.html", user, queue=queue, rubric=Rubric.model_validate(queue.rubric),
                 item=review_item, public_id=item.public_id, sides=sides,
                 done_by_me=crud.graded_by(session, queue=queue, user=user),
                 renew_ms=settings.lease_seconds * 1000 // 3,
                 error=None)


@router.post("/q/{name}/items/{public_id}/grade", dependencies=[Csrf])
async def submit_grade(request: Request, name: str, public_id: str, session: SessionDep, user: CurrentUser) -> Response:
    form = await request.form()  # async only to read the form (criteria names vary); DB work below runs in a thread
    return await run_in_threadpool(_submit_form, session, user, name, public_id, dict(form))


def _submit_form(session, user: User, name: str, public_id: str, form: dict) -> Response:  # noqa: ANN001
    queue = _queue_for(session, user, name)
    item = leases.get_item(session, queue=queue, public_id=public_id)
    rubric = Rubric.model_validate(queue.rubric)
    try:
        scores = {c.name: int(form[f"score_{c.name}"]) for c in rubric.criteria if form.get(f"score_{c.name}")}
        grade = GradeIn(scores=scores, choice=form.get("choice") or None, comment=form.get("comment") or None,
                        correction=form.get("correction") or None)
    except (ValueError, TypeError, ValidationError) as exc:
        raise ReviewError("the form does not fit this queue's rubric", hint="grade every criterion") from exc
    leases.submit(session, queue=queue, item=item, reviewer_id=user.id, grade=grade)
    return RedirectResponse(f"/q/{queue.name}/next", status_code=303)


@router.post("/q/{name}/items/{public_id}/skip", dependencies=[Csrf])
def skip_item(name: str, public_id: str, session: SessionDep, user: CurrentUser) -> Response:
    queue = _queue_for(session, user, name)
    item = leases.get_item(session, queue=queue, public_id=public_id)
    leases.skip(session, item=item, reviewer_id=user.id)
    return RedirectResponse(f"/q/{queue.name}/next", status_code=303)


@router.post("/q/{name}/items/{public_id}/renew", dependencies=[Csrf])
def renew_lease(name: str, public_id: str, session: SessionDep, user: CurrentUser, settings: SettingsDep) -> Response:
    queue = _queue_for(session, user, name)
    item = leases.get_item(session, queue=queue, public_id=public_id)
    ok = leases.renew(session, item=item, reviewer_id=user.id, lease_seconds=settings.lease_seconds)
    return JSONResponse({"ok": ok})


@router.get("/admin/q/{name}")
def admin_queue(request: Request, name: str, session: SessionDep, user: AdminUser) -> Response:
    queue = _queue_for(session, user, name)
    return _page(request, "admin_queue.html", user, queue=queue, stats=stats.queue_stats(session, queue=queue))
