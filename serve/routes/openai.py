"""The OpenAI and vLLM routes the gateway serves: chat, completions, responses, tokenize,
detokenize (each scoped by the caller's key, forwarded by the proxy), and `GET /v1/models`.

The proxy's values become HTTP here: `Completed` → a JSON response, `Stream` → server-sent events
relayed over raw ASGI, `ApiError` → OpenAI's error shape."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from lorafleet.serve.openapi_shapes import CHAT_BODY, COMPLETION_BODY
from lorafleet.serve.protocol import ApiError
from lorafleet.serve.proxy import Completed, Outcome, Stream
from lorafleet.serve.routes.deps import CurrentKey, State, current_key, disconnect_waiter, read_body
from starlette.types import Receive, Scope, Send

router = APIRouter()


# The forwarded routes take the bare Request and call the key check themselves: FastAPI's
# dependency resolution is the largest Python cost of the route, ~10% of the gateway's CPU/request.
async def _forward(endpoint: str, request: Request) -> Response:
    state = request.app.state.gateway
    key = await current_key(request, state, request.headers.get("authorization"))
    raw = await read_body(request, state.settings.auth.max_body_bytes)
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


# ---- the proxy's values as HTTP ------------------------------------------------------------

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]


def to_http(outcome: Outcome) -> Response:
    if isinstance(outcome, Completed):
        return Response(outcome.content, status_code=outcome.status, media_type="application/json")
    if isinstance(outcome, Stream):
        return SseRelay(outcome)
    return error_response(outcome)


def error_response(exc: ApiError) -> Response:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return Response(orjson.dumps(exc.body()), status_code=exc.status, headers=headers,
                    media_type="application/json")


class SseRelay(Response):
    """Relays a `Stream` event by event and always closes it, whether the stream ends, fails, or the
    client goes away (then the upstream request is closed too, which makes vLLM abort it)."""

    def __init__(self, stream: Stream) -> None:  # noqa: D107 - no Response body or headers to render
        self.stream = stream
        self.status_code = 200
        self.background = None
        self.raw_headers = list(SSE_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not pump.done():
                pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):  # OSError: a send to a gone client
                await pump
            await self.stream.close()

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async for event in self.stream.events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
