"""Dependencies so route signatures read as prose: SessionDep, CurrentUser, AdminUser, ApiCaller."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from lorafleet.human_review import security
from lorafleet.human_review.errors import Forbidden, ReviewError
from lorafleet.human_review.models import Queue, User
from lorafleet.human_review.settings import ReviewSettings
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


def get_current_user(request: Request, session: SessionDep) -> User:
    user_id = request.session.get("user_id")
    user = session.get(User, user_id) if isinstance(user_id, int) else None
    if user is None or request.session.get("pw") != user.password_hash[-16:]:
        request.session.pop("user_id", None)
        raise LoginRequired()
    return user


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
    queue_id = session.scalar(select(Queue.id).where(Queue.token_hash == security.token_hash(token)))
    if queue_id is None:
        raise Unauthorized("invalid token", hint="get a queue token with `lorafleet review queues create`")
    return ApiCaller(admin=False, queue_id=queue_id)


ApiCallerDep = Annotated[ApiCaller, Depends(get_api_caller)]
