"""Log in and out. Failed logins are rate limited (security.LoginLimiter: per address+account, per account
with backoff, per address); the session lives on the server (sessions.py) and logout ends it."""

from __future__ import annotations

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from lorafleet.human_review import crud, leases, sessions
from lorafleet.human_review.db import writing
from lorafleet.human_review.deps import Csrf, SessionDep, SettingsDep, csrf_token

router = APIRouter()


@router.get("/login")
def login_form(request: Request) -> Response:
    return request.app.state.templates.TemplateResponse(
        request, "login.html", {"csrf": csrf_token(request), "user": None, "error": None})


@router.post("/login", dependencies=[Csrf])
def login(request: Request, session: SessionDep, settings: SettingsDep, name: str = Form(max_length=64),
          password: str = Form(max_length=1024)) -> Response:
    limiter = request.app.state.limiter
    # The peer address, or the client a configured trusted proxy forwarded for (middleware.TrustedProxies).
    address = request.client.host if request.client else "?"
    wait = limiter.retry_after(address, name)
    if wait:
        return _login_page(request, f"Too many failed logins; try again in {wait} s.", 429,
                           headers={"Retry-After": str(wait)})
    user = crud.authenticate(session, name=name, password=password)
    if user is None:
        limiter.failed(address, name)
        return _login_page(request, "Wrong user name or password.", 401)
    limiter.succeeded(address, name)
    with writing(session):
        sid = sessions.create(session, user=user, max_seconds=settings.session_max_seconds)
        session.commit()
    request.session.clear()  # a fresh session (and CSRF token) on login: no session fixation
    request.session["sid"] = sid  # a random id only: no hash material, and revocable on the server
    csrf_token(request)
    return RedirectResponse("/", status_code=303)


def _login_page(request: Request, error: str, status: int, headers: dict | None = None) -> Response:
    return request.app.state.templates.TemplateResponse(
        request, "login.html", {"csrf": csrf_token(request), "user": None, "error": error},
        status_code=status, headers=headers)


@router.post("/logout", dependencies=[Csrf])
def logout(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    sid = request.session.get("sid")
    row = sessions.lookup(session, sid=sid, idle_seconds=settings.session_idle_seconds) \
        if isinstance(sid, str) else None
    if row is not None:
        leases.release_all(session, reviewer_id=row.user_id)  # hand back what this reviewer held
    if isinstance(sid, str):
        with writing(session):
            sessions.revoke(session, sid=sid)  # a copy of the cookie saved before logout stops working
            session.commit()
    request.session.clear()
    return RedirectResponse("/login", status_code=303)
