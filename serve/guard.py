"""The checks in front of every route, made before a byte of the body is read.

- The body-size limit holds on every route: a declared Content-Length over it is refused at once,
  a body sent without one is cut off (413) as soon as it passes the limit.
- `/admin/*` checks the admin key first: FastAPI reads a route's body before its dependencies run,
  so a dependency alone would let anyone make the gateway buffer a body.
- `/metrics` lists every adapter and its traffic, so it needs the metrics token
  (LORAFLEET_METRICS_TOKEN, sent as a bearer token) or an admin key; without a token set it is
  open only on a loopback host (or with --no-auth, itself loopback-only).

Answers refused here are counted in lorafleet_requests_total like every other answer.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from lorafleet.serve.config import is_loopback
from lorafleet.serve.metrics import count_answer
from lorafleet.serve.protocol import ApiError, unauthorized
from lorafleet.serve.state import GatewayState
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CHECKED_KEY = "lorafleet.admin_key"  # scope entry: the admin key the guard verified (routes/deps.py reads it)


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` once the body passes the limit. An HTTPException because FastAPI
    re-raises those from its own body reading (anything else becomes a generic 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the limit of {limit} bytes")
        self.limit = limit

    def api_error(self) -> ApiError:
        return ApiError(413, str(self.detail), code="request_too_large")


def install_guard(app: FastAPI, state: GatewayState) -> None:
    """Put the guard in front of every route of `app` and answer BodyTooLarge in OpenAI's shape."""

    async def too_large(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BodyTooLarge)
        count_answer(state.metrics, request.url.path, 413)
        return exc.api_error().response()

    app.add_exception_handler(BodyTooLarge, too_large)
    app.add_middleware(Guard, state=state)


class Guard:
    """ASGI middleware: auth of /admin/* and /metrics and the body limit, before the app runs."""

    def __init__(self, app: ASGIApp, *, state: GatewayState) -> None:
        self.app = app
        self.state = state
        auth = state.settings.auth
        self.limit = auth.max_body_bytes
        self.metrics_token = auth.metrics_token.get_secret_value().encode() if auth.metrics_token else None
        self.metrics_open = self.metrics_token is None and (auth.no_auth or is_loopback(state.settings.host))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self._check(scope)
        except ApiError as exc:
            count_answer(self.state.metrics, scope["path"], exc.status)
            await exc.response()(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    async def _check(self, scope: Scope) -> None:
        path: str = scope["path"]
        headers = _headers(scope)
        authorization = headers.get("authorization")
        client = scope["client"][0] if scope.get("client") else None
        if path.startswith("/admin/") or path == "/admin":
            scope[CHECKED_KEY] = await self.state.auth.require_admin(authorization, client)
        elif path == "/metrics" and not self.metrics_open:
            await self._metrics_allowed(authorization, client)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            raise BodyTooLarge(self.limit).api_error()

    async def _metrics_allowed(self, authorization: str | None, client: str | None) -> None:
        token = authorization[7:].strip().encode() if authorization and authorization.lower().startswith(
            "bearer ") else b""
        if self.metrics_token is not None and hmac.compare_digest(token, self.metrics_token):
            return
        if not token:
            raise unauthorized("/metrics needs 'Authorization: Bearer <LORAFLEET_METRICS_TOKEN>' or an admin key")
        await self.state.auth.require_admin(authorization, client)

    def _limited(self, receive: Receive) -> Receive:
        """`receive`, raising BodyTooLarge once the body read so far passes the limit."""
        size = 0

        async def limited() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        return limited


def _headers(scope: Scope) -> dict[str, Any]:
    """The two headers the guard reads (latin-1, as ASGI sends them)."""
    wanted = {b"authorization", b"content-length"}
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in wanted}
