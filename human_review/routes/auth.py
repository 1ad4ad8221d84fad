"""Log in and out. Failed logins are rate limited per (address, user name)."""

from __future__ import annotations

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from lorafleet.human_review import crud, leases
from lorafleet.human_review.deps import Csrf, SessionDep, csrf_token

router = APIRouter()


@router.get("/login")
def login_form(request: Request) -> Response:
    return request.app.state.templates.TemplateResponse(
        request, "login.html", {"csrf": csrf_token(request), "user": None, "error": None})


@router.post("/login", dependencies=[Csrf])
def login(request: Request, session: SessionDep, name: str = Form(max_length=64),
          password: str = Form(max_length=1024)) -> Response:
    limiter = request.app.state.limiter
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
    request.session.clear()  # a fresh session (and CSRF token) on login: no session fixation
    request.session.update({"user_id": user.id, "pw": user.password_hash[-16:]})
    csrf_token(request)
    return RedirectResponse("/", status_code=303)


def _login_page(request: Request, error: str, status: int, headers: dict | None = None) -> Response:
    return request.app.state.templates.TemplateResponse(
        request, "login.html", {"csrf": csrf_token(request), "user": None, "error": error},
        status_code=status, headers=headers)


@router.post("/logout", dependencies=[Csrf])
def logout(request: Request, session: SessionDep) -> Response:
    user_id = request.session.get("user_id")
    if isinstance(user_id, int):
        leases.release_all(session, reviewer_id=user_id)  # hand back what this reviewer held
    request.session.clear()
    return RedirectResponse("/login", status_code=303)
