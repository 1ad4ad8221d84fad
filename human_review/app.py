"""The review web app: `create_app(settings)`; migrations run on start."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from lorafleet.human_review import db
from lorafleet.human_review.card_review import CardWriter
from lorafleet.human_review.deps import LoginRequired
from lorafleet.human_review.errors import ReviewError
from lorafleet.human_review.middleware import BodyLimit, TrustedProxies
from lorafleet.human_review.security import LoginLimiter
from lorafleet.human_review.settings import ReviewSettings
from lorafleet.human_review.templating import make_templates
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from lorafleet.errors import ConfigError
from lorafleet.registry import Registry

log = logging.getLogger(__name__)
HERE = Path(__file__).parent


def admin_token(settings: ReviewSettings) -> str:
    """The admin API token: configured, else generated once into the data dir."""
    import secrets

    from lorafleet.fsutil import atomic_write_text

    if settings.review_admin_token is not None:
        return settings.review_admin_token.get_secret_value()
    path = Path(settings.data_dir) / "review-admin.token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "rva_" + secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text(encoding="utf-8").strip()


def card_writer(settings: ReviewSettings, factory: sessionmaker[Session]) -> CardWriter | None:
    """The card.review writer on the configured registry; None (said once, here) when none is configured."""
    if settings.review_registry is None:
        log.warning("card.review: no registry configured (LORAFLEET_REVIEW_REGISTRY / --registry): grades are "
                    "not written to adapter cards; `lorafleet review sync-cards` can write them later")
        return None
    root = Path(settings.review_registry)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"review registry {root} is not a directory",
                          hint="point LORAFLEET_REVIEW_REGISTRY (--registry) at the adapters' registry, "
                               "e.g. <data-dir>/registry")
    if not root.exists():  # a fresh install: the first `train` creates it
        log.warning("card.review: registry %s does not exist (yet): grades of versions it lacks are not written "
                    "to cards; run `lorafleet review sync-cards` once it holds them", root)
    log.info("card.review: writing grades summaries to the cards in %s", root)
    return CardWriter(factory, Registry(root), interval=settings.review_card_interval)


def create_app(settings: ReviewSettings) -> FastAPI:
    """Build the app: engine, migrations, sessions, templates and routes; nothing global."""
    from lorafleet.human_review.routes import api, auth, pages

    engine = db.make_engine(settings.review_db_url)
    factory = db.session_factory(engine)
    writer = card_writer(settings, factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        if writer is not None:
            writer.start()
        yield
        if writer is not None:
            await writer.stop()
        engine.dispose()

    db.migrate(engine)
    app = FastAPI(title="lorafleet review", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = factory
    app.state.card_writer = writer
    app.state.templates = make_templates(HERE / "templates")
    app.state.limiter = LoginLimiter(
        settings.login_max_failures, settings.login_window_seconds,
        account_max_failures=settings.login_account_max_failures,
        account_max_delay_s=settings.login_account_max_delay_seconds,
        address_max_failures=settings.login_address_max_failures, max_entries=settings.login_limiter_max_entries)
    app.state.admin_token = admin_token(settings)
    # The signed cookie carries only the server-side session's random id and the CSRF token.
    app.add_middleware(SessionMiddleware, secret_key=settings.secret_key(), session_cookie="lorafleet_review",
                       same_site="strict", https_only=settings.secure_cookies, max_age=settings.session_max_seconds)
    app.add_middleware(BodyLimit, api_bytes=settings.review_max_body_bytes, form_bytes=settings.review_max_form_bytes)
    app.add_middleware(TrustedProxies, trusted=settings.review_trusted_proxies)  # outermost: sees the real peer
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(auth.router)
    app.include_router(pages.router)
    app.include_router(api.router, prefix="/api/v1")
    _error_handlers(app)
    return app


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or "application/json" in request.headers.get("accept", "")


def error_body(message: str, type_: str, code: int | str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _error_handlers(app: FastAPI) -> None:
    def render(request: Request, status: int, message: str, type_: str) -> Response:
        if _wants_json(request):
            return JSONResponse(error_body(message, type_, status), status_code=status)
        return request.app.state.templates.TemplateResponse(
            request, "error.html", {"status": status, "message": message, "user": None}, status_code=status)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, _exc: LoginRequired) -> Response:
        if _wants_json(request):
            return JSONResponse(error_body("log in first", "authentication_error", 401), status_code=401)
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(ReviewError)
    async def _review(request: Request, exc: ReviewError) -> Response:
        return render(request, exc.status, str(exc), exc.type)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in err["loc"] if p != "body")
        if _wants_json(request):
            return JSONResponse(error_body(f"{field}: {err['msg']}", "invalid_request_error", 400, field or None),
                                status_code=400)
        return render(request, 400, f"{field}: {err['msg']}", "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return render(request, exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return render(request, 500, "internal error (logged on the server)", "server_error")



