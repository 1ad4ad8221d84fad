"""The request path: validate → scope → resolve → pick upstream and load adapter → forward →
stream back chunk by chunk, recording metrics and capture on the way.

Services here never see a Starlette Request: the route passes the body, the key and a
`disconnected` awaitable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi.responses import Response, StreamingResponse
from lorafleet.serve.adapters import HotSet
from lorafleet.serve.capture import Capture
from lorafleet.serve.drift import DriftMonitor
from lorafleet.serve.keys import KeyInfo
from lorafleet.serve.metrics import UNKNOWN, Metrics
from lorafleet.serve.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    forbidden,
    invalid_body,
    upstream_unavailable,
)
from lorafleet.serve.routing import Router, Target
from lorafleet.serve.upstream import HttpUpstream, UpstreamError, UpstreamPool
from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

ENDPOINTS: dict[str, tuple[str, type[BaseModel]]] = {
    "chat": ("/v1/chat/completions", ChatCompletionRequest),
    "completions": ("/v1/completions", CompletionRequest),
}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Failures before the upstream answered anything: the request never ran there, or died with the
# replica before a single byte came back, so sending it again cannot duplicate output the client
# saw. Read/write timeouts are not here: a slow replica is not a dead one.
REFUSED = (httpx.ConnectError, httpx.ConnectTimeout)
# A dropped connection is a dead replica, or a kept-alive connection the server closed just as we
# reused it (uvicorn and httpx both expire idle connections after 5 s): a quick /v1/models tells.
DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
ALIVE_CHECK_TIMEOUT = 2.0


@dataclass
class Call:
    """One request on its way through the gateway."""

    endpoint: str
    body: dict[str, Any]
    target: Target
    stream: bool
    user: str | None
    start: float
    capture: bool
    status: int = 200
    upstream: HttpUpstream | None = None  # set once one is picked; released in _done
    finished: bool = False
    retried: bool = False  # sent again to another replica after a connection error (once)
    drift_text: bool = False  # collect the output text for drift (label tasks: the INVALID rate)
    completion_tokens: int | None = None  # from the upstream's usage, for drift's output length


class Proxy:
    """Forwards OpenAI requests to the right upstream with the right adapter loaded."""

    def __init__(self, *, router: Router, pool: UpstreamPool, hot_sets: dict[str, HotSet], metrics: Metrics,
                 capture: Capture, max_in_flight: int, drift: DriftMonitor | None = None) -> None:
        self.router = router
        self.pool = pool
        self.hot_sets = hot_sets
        self.metrics = metrics
        self.capture = capture
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.drift = drift

    # ---- entry -----------------------------------------------------------------------------
    async def handle(self, endpoint: str, raw: bytes, key: KeyInfo,
                     disconnected: Callable[[], Awaitable[None]]) -> Response:
        start = time.perf_counter()
        try:
            call = self._prepare(endpoint, raw, key, start)
        except ApiError as exc:
            self.metrics.requests.labels(UNKNOWN, "-", endpoint, str(exc.status)).inc()
            return exc.response()
        if self.in_flight >= self.max_in_flight:
            return self._fail(call, ApiError(503, "the gateway is at its in-flight limit; retry shortly",
                                             type_="server_error", code="overloaded", retry_after=1))
        self.in_flight += 1
        self.metrics.in_flight.labels(call.target.adapter).inc()
        streaming = False
        try:
            await self._acquire(call)
            if call.stream:
                response = await self._stream(call)
                streaming = isinstance(response, StreamingResponse)
                return response
            return await _unless_disconnected(self._forward(call), disconnected)
        except ApiError as exc:
            return self._fail(call, exc)
        except UpstreamError as exc:
            return self._fail(call, upstream_unavailable(exc.message, exc.status))
        finally:
            if not streaming:  # a stream releases when it ends
                self._done(call)

    def _prepare(self, endpoint: str, raw: bytes, key: KeyInfo, start: float) -> Call:
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "request body is not valid JSON", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object", code="invalid_request")
        try:
            request = ENDPOINTS[endpoint][1].model_validate(body)
        except ValidationError as exc:
            raise invalid_body(exc) from None
        model: str = request.model  # type: ignore[attr-defined]
        if model != self.router.base_name and not key.allows(model):
            raise forbidden(model)
        user = body.get("user") if isinstance(body.get("user"), str) else None
        target = self.router.resolve(model, user)
        stream = bool(body.get("stream"))
        call = Call(endpoint, body, target, stream, user, start, self.capture.wants(target.adapter))
        if self.drift is not None and not target.is_base:
            call.drift_text = self.drift.wants_text(target.adapter, target.version)
        return call

    async def _acquire(self, call: Call) -> HttpUpstream:
        """Pick the replica for the call, load its adapter there and hold a slot on it. A replica
        that cannot be reached for the load is marked down and the next one tried (once per call)."""
        while True:
            upstream = self._pick(call.target)
            try:
                await self._hold(call, upstream)
                return upstream
            except UpstreamError as exc:
                # 503 is HttpUpstream's "unreachable"; other load failures are the adapter's fault
                if exc.status != 503 or not self._may_retry(call, upstream, "adapter load failed"):
                    raise

    def _pick(self, target: Target) -> HttpUpstream:
        if target.is_base:
            return self.pool.pick(None, lambda u: True)
        served = target.served_name
        return self.pool.pick(served, lambda u: self.hot_sets[u.name].holds(served))

    async def _hold(self, call: Call, upstream: HttpUpstream) -> None:
        served = call.target.served_name
        if not call.target.is_base:
            hot = self.hot_sets[upstream.name]
            assert call.target.adapter_ref is not None
            hot.in_use[served] += 1
            try:
                await hot.ensure(served, call.target.adapter_ref.path)
            except BaseException:
                hot.in_use[served] -= 1
                raise
        upstream.in_flight += 1
        call.body["model"] = served
        call.upstream = upstream

    @staticmethod
    async def _alive(upstream: HttpUpstream) -> bool:
        try:
            await upstream.model_ids(timeout=ALIVE_CHECK_TIMEOUT)
        except UpstreamError:
            return False
        return True

    def _may_retry(self, call: Call, failed: HttpUpstream, why: str) -> bool:
        """Mark `failed` down; True when the call may still go to another ready replica (once)."""
        failed.up = failed.ready = False  # routed around until the health loop sees it answer again
        if call.retried or not any(u.ready for u in self.pool.upstreams):
            return False
        call.retried = True
        log.warning("upstream %s unreachable (%s); retrying on another replica", failed.name, why)
        return True

    def _done(self, call: Call) -> None:
        if call.finished:  # a stream may end through its generator or its response, once
            return
        call.finished = True
        self.in_flight -= 1
        self.metrics.in_flight.labels(call.target.adapter).dec()
        self._release(call)
        labels = (call.target.adapter, call.target.version)
        self.metrics.requests.labels(*labels, call.endpoint, str(call.status)).inc()
        self.metrics.duration.labels(*labels, call.endpoint).observe(time.perf_counter() - call.start)

    def _release(self, call: Call) -> None:
        """Give back the upstream slot (and adapter in-use count) this call holds, if any."""
        upstream, call.upstream = call.upstream, None
        if upstream is not None:
            upstream.in_flight -= 1
            if not call.target.is_base:
                self.hot_sets[upstream.name].in_use[call.target.served_name] -= 1

    def _fail(self, call: Call, exc: ApiError) -> Response:
        call.status = exc.status
        return exc.response()

    # ---- non-streaming ---------------------------------------------------------------------
    async def _forward(self, call: Call) -> Response:
        resp = await self._send(call, stream=False)
        content = resp.content
        call.status = resp.status_code
        if resp.status_code == 200:
            self._account(call, content)
        return Response(content, status_code=resp.status_code, media_type="application/json")

    async def _send(self, call: Call, *, stream: bool) -> httpx.Response:
        """Send to the call's upstream until it answers: if it lost the adapter (restarted), reload
        once and resend; if it cannot be reached, mark it down and go to another replica; if it
        dropped a kept-alive connection but still answers, send again. One resend per call."""
        reloaded = False
        while True:
            upstream = call.upstream
            assert upstream is not None
            payload = json.dumps(call.body).encode()
            request = upstream.client.build_request(
                "POST", ENDPOINTS[call.endpoint][0], content=payload, headers={"Content-Type": "application/json"})
            try:
                resp = await upstream.client.send(request, stream=stream)
            except REFUSED + DROPPED as exc:
                self._release(call)
                why = exc.__class__.__name__
                if isinstance(exc, DROPPED) and not call.retried and await self._alive(upstream):
                    call.retried = True  # a stale connection: send again, on a fresh one
                    log.info("upstream %s dropped a connection (%s) but answers; sending again", upstream.name, why)
                elif not self._may_retry(call, upstream, why):
                    raise upstream_unavailable(f"upstream {upstream.name} unreachable ({why})", 502) from None
                await self._acquire(call)  # a replica marked down is skipped: the pool picks another
                continue
            except httpx.TimeoutException:
                raise upstream_unavailable(f"upstream {upstream.name} timed out", 504) from None
            except httpx.HTTPError as exc:
                upstream.up = upstream.ready = False
                raise upstream_unavailable(f"upstream {upstream.name} unreachable ({exc.__class__.__name__})",
                                           502) from None
            if resp.status_code == 404 and not reloaded and not call.target.is_base:
                reloaded = True
                await resp.aread()
                await resp.aclose()
                hot = self.hot_sets[upstream.name]
                hot.forget(call.target.served_name)
                assert call.target.adapter_ref is not None
                await hot.ensure(call.target.served_name, call.target.adapter_ref.path)
                continue
            return resp

    def _account(self, call: Call, content: bytes) -> None:
        try:
            data = json.loads(content)
        except json.JSONDecodeError:
            return
        self._count_usage(call, data.get("usage"))
        text = None
        if call.capture or call.drift_text:
            choices = data.get("choices") or [{}]
            first = choices[0] if isinstance(choices[0], dict) else {}
            text = first.get("text") if call.endpoint == "completions" else (first.get("message") or {}).get(
                "content")
            text = text if isinstance(text, str) else ""
        if call.capture:
            self._capture(call, text or "")
        self._observe(call, text)

    def _count_usage(self, call: Call, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        labels = (call.target.adapter, call.target.version)
        completion = int(usage.get("completion_tokens") or 0)
        self.metrics.prompt_tokens.labels(*labels).inc(int(usage.get("prompt_tokens") or 0))
        self.metrics.completion_tokens.labels(*labels).inc(completion)
        if "completion_tokens" in usage:
            call.completion_tokens = completion

    def _capture(self, call: Call, text: str) -> None:
        prompt = call.body.get("messages") if call.endpoint == "chat" else call.body.get("prompt")
        self.capture.record(served_name=call.target.served_name, prompt=prompt, response=text,
                            endpoint=call.endpoint, user=call.user)

    def _observe(self, call: Call, text: str | None) -> None:
        """Hand a finished adapter request to drift (a queue append; the work happens off the request path)."""
        if self.drift is not None and not call.target.is_base:
            prompt = call.body.get("messages") if call.endpoint == "chat" else call.body.get("prompt")
            self.drift.observe(call.target.adapter, call.target.version, prompt,
                               text if call.drift_text else None, call.completion_tokens)

    # ---- streaming -------------------------------------------------------------------------
    async def _stream(self, call: Call) -> Response:
        options = call.body.get("stream_options")
        injected = not (isinstance(options, dict) and options.get("include_usage"))
        if injected:  # ask for usage (token metrics); the extra chunk is not passed on
            call.body["stream_options"] = {**(options or {}), "include_usage": True}
        resp = await self._send(call, stream=True)
        upstream = call.upstream  # the replica that answered (another one after a retry)
        assert upstream is not None
        if resp.status_code != 200:
            content = await resp.aread()
            await resp.aclose()
            call.status = resp.status_code
            return Response(content, status_code=resp.status_code, media_type="application/json")
        async def cleanup() -> None:
            await resp.aclose()
            self._done(call)

        return _Relay(self._relay(call, upstream, resp, injected), cleanup=cleanup,
                      media_type="text/event-stream", headers=SSE_HEADERS)

    async def _relay(self, call: Call, upstream: HttpUpstream, resp: httpx.Response,
                     injected: bool) -> AsyncIterator[bytes]:
        """Pass SSE events through as they arrive; on upstream death send one error event."""
        buffer = b""
        first = True
        texts: list[str] = []
        try:
            async for chunk in resp.aiter_raw():
                buffer += chunk
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    if first:
                        first = False
                        self.metrics.ttft.labels(call.target.adapter, call.target.version).observe(
                            time.perf_counter() - call.start)
                    if self._inspect(call, event, texts, injected):
                        yield event + b"\n\n"
            if buffer.strip():
                yield buffer
        except httpx.HTTPError as exc:
            call.status = 502
            upstream.up = upstream.ready = False
            log.error("upstream %s failed mid-stream (%s)", upstream.name, exc.__class__.__name__)
            err = upstream_unavailable(f"upstream {upstream.name} failed mid-stream; retry the request", 502)
            yield b"data: " + json.dumps(err.body()).encode() + b"\n\n"
        finally:
            await resp.aclose()
            if call.status == 200:
                if call.capture:
                    self._capture(call, "".join(texts))
                self._observe(call, "".join(texts))
            self._done(call)

    def _inspect(self, call: Call, event: bytes, texts: list[str], injected: bool) -> bool:
        """Record usage and captured text from one event; False drops the event (our usage chunk)."""
        if b'"usage"' not in event and not (call.capture or call.drift_text):
            return True
        if not event.startswith(b"data: {"):
            return True
        try:
            data = json.loads(event[6:])
        except json.JSONDecodeError:
            return True
        usage = data.get("usage")
        if usage:
            self._count_usage(call, usage)
        if call.capture or call.drift_text:
            for choice in data.get("choices") or []:
                if choice.get("index", 0) == 0:
                    piece = choice.get("text") if call.endpoint == "completions" else (
                        choice.get("delta") or {}).get("content")
                    texts.append(piece or "")
        return not (injected and usage and not data.get("choices"))


class _Relay(StreamingResponse):
    """A StreamingResponse that always releases its upstream response, even when the client left
    before the body started (then the generator never runs, nor its `finally`)."""

    def __init__(self, content: AsyncIterator[bytes], *, cleanup: Callable[[], Awaitable[None]],
                 **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._cleanup = cleanup

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._cleanup()


async def _unless_disconnected(work: Awaitable[Response], disconnected: Callable[[], Awaitable[None]]) -> Response:
    """Run `work`; if the client goes away first, cancel it (which closes the upstream request)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        raise ApiError(499, "client disconnected", code="client_closed_request")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
