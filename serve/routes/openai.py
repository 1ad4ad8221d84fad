"""The OpenAI and vLLM routes the gateway serves: chat, completions, responses, tokenize,
detokenize (each scoped by the caller's key, forwarded by the proxy), and `GET /v1/models`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from lorafleet.serve.openapi_shapes import CHAT_BODY, COMPLETION_BODY
from lorafleet.serve.routes.deps import CurrentKey, State, disconnect_waiter, read_body
from lorafleet.serve.routes.http import to_http

router = APIRouter()


async def _forward(endpoint: str, request: Request, state: State, key: CurrentKey) -> Response:
    raw = await read_body(request, state.settings.max_body_bytes)
    return to_http(await state.proxy.handle(endpoint, raw, key, disconnect_waiter(request)))


@router.post("/v1/chat/completions", openapi_extra=CHAT_BODY)
async def chat_completions(request: Request, state: State, key: CurrentKey) -> Response:
    return await _forward("chat", request, state, key)


@router.post("/v1/completions", openapi_extra=COMPLETION_BODY)
async def completions(request: Request, state: State, key: CurrentKey) -> Response:
    return await _forward("completions", request, state, key)


@router.post("/v1/responses")
async def responses(request: Request, state: State, key: CurrentKey) -> Response:
    """OpenAI's Responses API (the Agents SDK uses it), as vLLM serves it."""
    return await _forward("responses", request, state, key)


@router.post("/tokenize")
async def tokenize(request: Request, state: State, key: CurrentKey) -> Response:
    """vLLM's tokenizer for `model` (the base when absent): `prompt` or `messages` to token ids."""
    return await _forward("tokenize", request, state, key)


@router.post("/detokenize")
async def detokenize(request: Request, state: State, key: CurrentKey) -> Response:
    """vLLM's detokenizer for `model` (the base when absent): `tokens` to text."""
    return await _forward("detokenize", request, state, key)


@router.get("/v1/models")
async def list_models(state: State, key: CurrentKey) -> dict:
    """The base and every adapter ref this key may use, once each (name, name@vN, name@alias)."""
    return {"object": "list", "data": state.catalog(key)}
