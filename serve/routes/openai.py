"""`POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from lorafleet.serve.routes.deps import CurrentKey, State, disconnect_waiter, read_body

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, state: State, key: CurrentKey) -> Response:
    raw = await read_body(request, state.settings.max_body_bytes)
    return await state.proxy.handle("chat", raw, key, disconnect_waiter(request))


@router.post("/v1/completions")
async def completions(request: Request, state: State, key: CurrentKey) -> Response:
    raw = await read_body(request, state.settings.max_body_bytes)
    return await state.proxy.handle("completions", raw, key, disconnect_waiter(request))


@router.get("/v1/models")
async def list_models(state: State, key: CurrentKey) -> dict:
    """The base and every adapter ref this key may use, once each (name, name@vN, name@alias)."""
    return {"object": "list", "data": state.catalog(key)}
