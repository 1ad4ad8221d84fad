"""Shared route dependencies: the gateway services, the caller's key, the body with a size limit."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from lorafleet.serve.guard import CHECKED_KEY
from lorafleet.serve.keys import KeyInfo
from lorafleet.serve.protocol import ApiError
from lorafleet.serve.state import GatewayState


# Dependencies are `async def` on purpose: FastAPI runs plain `def` ones in a thread pool, which
# cost more per request than everything else the gateway does.
async def get_state(request: Request) -> GatewayState:
    return request.app.state.gateway


State = Annotated[GatewayState, Depends(get_state)]


async def current_key(request: Request, state: State,
                      authorization: Annotated[str | None, Header()] = None) -> KeyInfo:
    return await state.auth.authenticate(authorization, request.client.host if request.client else None)


async def admin_key(request: Request, state: State, authorization: Annotated[str | None, Header()] = None) -> KeyInfo:
    checked = request.scope.get(CHECKED_KEY)  # serve/guard.py checked it before the body was read
    if checked is not None:
        return checked
    return await state.auth.require_admin(authorization, request.client.host if request.client else None)


CurrentKey = Annotated[KeyInfo, Depends(current_key)]
AdminKey = Annotated[KeyInfo, Depends(admin_key)]


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than `limit` bytes (413) whether or not Content-Length is sent."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body over the limit of {limit} bytes", code="request_too_large")


def disconnect_waiter(request: Request):
    """An awaitable that returns once the client has gone away."""

    async def wait() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    return wait
