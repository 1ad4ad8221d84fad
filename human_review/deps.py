"""Dependencies so route signatures read as prose: SessionDep, CurrentUser, AdminUser, ApiCaller."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from lorafleet.human_review import security, sessions
from lorafleet.human_review.db import writing
from lorafleet.human_review.errors import Forbidden, ReviewError
from lorafleet.human_review.models import Queue, User
from lorafleet.human_review.settings import ReviewSettings
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session


class LoginRequired(Exception):
    """Raised for pages when nobody is logged in; the app answers with a redirect to /login."""


class Unauthorized(ReviewError):
    status = 401
    type = "authentication_error"


def get_db(request: Request) -> Iterator[Session]:
    session = request.app.state.sessions()
    try:
        yield session
    finally:
        session.close()


def get_settings(request: Request) -> ReviewSettings:
    return request.app.state.settings


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[ReviewSettings, Depends(get_settings)]


def csrf_token(request: Request) -> str:
    """The session's CSRF token, created on first use; every form carries it back."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


async def check_csrf(request: Request) -> None:
    """Refuse a state-changing browser request without the session's CSRF token (form field or header)."""
    expected = request.session.get("csrf")
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        sent = (await request.form()).get("csrf_token")
    if not expected or not isinstance(sent, str) or not security.same(sent, expected):
        raise Forbidden("missing or wrong CSRF token", hint="reload the page and submit the form again")


def get_current_user(request: Request, session: SessionDep, settings: SettingsDep) -> User:
    """The user of the request's server-side session; LoginRequired when it is missing, ended or disabled."""
    sid = request.session.get("sid")
    row = sessions.lookup(session, sid=sid, idle_seconds=settings.session_idle_seconds) if isinstance(sid, str) \
        else None
    if row is None:
        request.session.pop("sid", None)
        raise LoginRequired()
    if sessions.needs_touch(row):
        with writing(session):
            sessions.touch(session, row=row)
            session.commit()
    return session.get(User, row.user_id)


CurrentUser = Annotated[User, Depends(get_current_user)]
Csrf = Depends(check_csrf)


def get_admin(user: CurrentUser) -> User:
    if user.role != "admin":
        raise Forbidden("admins only", hint="ask an admin")
    return user


AdminUser = Annotated[User, Depends(get_admin)]


@dataclass(frozen=True)
class ApiCaller:
    """Who called the API: the admin token (any queue) or one queue's ingest token."""

    admin: bool
    queue_id: int | None = None

    def may_use(self, queue: Queue) -> bool:
        return self.admin or self.queue_id == queue.id


def get_api_caller(request: Request, session: SessionDep, settings: SettingsDep) -> ApiCaller:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token", hint="send Authorization: Bearer <queue or admin token>")
    admin = request.app.state.admin_token
    if admin and security.same(token, admin):
        return ApiCaller(admin=True)
    queue_id = session.scalar(select(Queue.id).where(Queue.token_hash == security.token_hash(token),
                                                     Queue.deleted_at.is_(None)))
    if queue_id is None:
        raise Unauthorized("invalid token", hint="get a queue token with `lorafleet review queues create`")
    return ApiCaller(admin=False, queue_id=queue_id)


ApiCallerDep = Annotated[ApiCaller, Depends(get_api_caller)]

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, model: type[M]) -> M:
    """Read and validate a JSON body *after* the route's auth dependencies ran.

    FastAPI reads a declared body before solving dependencies, so a caller without a token could make
    us read (and parse) a huge body; routes that take this instead read nothing until auth passed.
    The body-size middleware still bounds what is read.
    """
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False,
                                                include_input=False)) from None
