"""The proxy's values as HTTP: `Completed` → a JSON response, `Stream` → server-sent events relayed
over raw ASGI, `ApiError` → OpenAI's error shape."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from lorafleet.serve.protocol import ApiError
from lorafleet.serve.proxy import Completed, Outcome, Stream
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

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
