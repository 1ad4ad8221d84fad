"""The OpenAI and vLLM routes the gateway serves: chat, completions, responses, tokenize,
detokenize (each scoped by the caller's key, forwarded by the proxy), and `GET /v1/models`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from lorafleet.serve.openapi_shapes import CHAT_BODY, COMPLETION_BODY
from lorafleet.serve.routes.deps import CurrentKey, State, current_key, disconnect_waiter, read_body
from lorafleet.serve.routes.http import to_http

router = APIRouter()


# The forwarded routes take the bare Request and call the key check themselves: FastAPI's
# dependency resolution is the largest Python cost of the route, ~10% of the gateway's CPU/request.
async def _forward(endpoint: str, request: Request) -> Response:
    state = request.app.state.gateway
    key = await current_key(request, state, request.headers.get("authorization"))
    raw = await read_body(request, state.settings.max_body_bytes)
    return to_http(await state.proxy.handle(endpoint, raw, key, disconnect_waiter(request)))


@router.post("/v1/chat/completions", openapi_extra=CHAT_BODY)
async def chat_completions(request: Request) -> Response:
    return await _forward("chat", request)


@router.post("/v1/completions", openapi_extra=COMPLETION_BODY)
async def completions(request: Request) -> Response:
    return await _forward("completions", request)


@router.post("/v1/responses")
async def responses(request: Request) -> Response:
    """OpenAI's Responses API (the Agents SDK uses it), as vLLM serves it."""
    return await _forward("responses", request)


@router.post("/tokenize")
async def tokenize(request: Request) -> Response:
    """vLLM's tokenizer for `model` (the base when absent): `prompt` or `messages` to token ids."""
    return await _forward("tokenize", request)


@router.post("/detokenize")
async def detokenize(request: Request) -> Response:
    """vLLM's detokenizer for `model` (the base when absent): `tokens` to text."""
    return await _forward("detokenize", request)


@router.get("/v1/models")
async def list_models(state: State, key: CurrentKey) -> dict:
    """The base and every adapter ref this key may use, once each (name, name@vN, name@alias)."""
    return {"object": "list", "data": state.catalog(key)}
