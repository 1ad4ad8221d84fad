"""The request path between a route and vLLM: read the few fields the gateway needs, check the key's
scope, resolve the target, then one attempt loop (pick a replica, lease it, send) whose failures
`classify()` sorts into retry elsewhere, resend, reload the adapter, or fail.

The proxy returns values, `Completed | Stream | ApiError`; the route turns them into HTTP. Metrics,
capture and drift are recorded on the way; none of them can fail a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from lorafleet.serve.capture import Capture
from lorafleet.serve.drift import DriftMonitor
from lorafleet.serve.keys import KeyInfo
from lorafleet.serve.metrics import UNKNOWN, Metrics
from lorafleet.serve.protocol import ApiError, forbidden, upstream_unavailable
from lorafleet.serve.replicas import Replica
from lorafleet.serve.routing import ReplicaChooser, Router, Target
from lorafleet.serve.upstream import Answer, UpstreamError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from lorafleet.serve.canary import CanaryWatcher
    from lorafleet.serve.variants import Variants

# Failures before the upstream answered anything: the request never ran there, or died with the
# replica before a single byte came back, so sending it again cannot duplicate output the client
# saw. Read/write timeouts are not here: a slow replica is not a dead one.
REFUSED = (httpx.ConnectError, httpx.ConnectTimeout)
# A dropped connection is a dead replica, or a kept-alive connection the server closed just as we
# reused it (uvicorn and httpx both expire idle connections after 5 s): a quick /v1/models tells.
DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
ALIVE_CHECK_TIMEOUT = 2.0


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI/vLLM route the gateway forwards."""

    name: str  # metrics label
    path: str  # on vLLM
    required: str | None = None  # the body field it cannot do without (checked here for a clear 400)
    prompt_field: str | None = None  # what capture and drift read as the prompt; None: not observed
    stream_usage: bool = False  # accepts stream_options.include_usage (token metrics while streaming)
    model_optional: bool = False  # vLLM defaults a missing `model` to the base


ENDPOINTS = {e.name: e for e in (
    Endpoint("chat", "/v1/chat/completions", "messages", "messages", stream_usage=True),
    Endpoint("completions", "/v1/completions", "prompt", "prompt", stream_usage=True),
    Endpoint("responses", "/v1/responses"),
    Endpoint("tokenize", "/tokenize", model_optional=True),
    Endpoint("detokenize", "/detokenize", "tokens", model_optional=True),
)}


@dataclass
class Completed:
    """vLLM's whole answer (JSON), with its status."""

    status: int
    content: bytes


@dataclass
class Stream:
    """A 200 server-sent-event stream: iterate `events`, then always await `close()` (idempotent)."""

    events: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]


Outcome = Completed | Stream | ApiError


@dataclass
class Call:
    """One request on its way through the gateway."""

    endpoint: Endpoint
    body: dict[str, Any]
    payload: bytes  # what goes to vLLM: the body as sent, `model` rewritten to the served name
    target: Target
    stream: bool
    user: str | None
    start: float
    capture: bool
    injected: bool = False  # we asked for the usage chunk; it is not passed on
    status: int = 200
    finished: bool = False
    retried: bool = False  # sent again after a connection error (once per call)
    reloaded: bool = False  # the replica had lost the adapter and it was loaded again (once)
    drift_text: bool = False  # collect the output text for drift (label tasks: the INVALID rate)
    completion_tokens: int | None = None  # from the upstream's usage, for drift's output length
    texts: list[str] = field(default_factory=list)  # streamed output text, when captured or drifted
    output: str | None = None  # the whole output text once known (when collected), for the canary watcher


class Failure(enum.Enum):
    """What an exception during one attempt means for the call."""

    ADAPTER_LOST = "the replica answered 404 for a loaded adapter: it restarted; load it again"
    DOWN = "the replica cannot be reached: mark it down, try another"
    DROPPED = "the connection dropped: a stale keep-alive (resend) or a dead replica (as DOWN)"
    TIMEOUT = "the replica is slow, not dead: 504"
    BROKEN = "any other transport failure: mark it down, 502"
    OTHER = "not the upstream's doing: raise as is"


class AdapterLost(Exception):
    """vLLM answered 404 for an adapter the hot set thought loaded."""


def classify(exc: BaseException) -> Failure:
    """Sort one attempt's failure (see `Failure`)."""
    if isinstance(exc, AdapterLost):
        return Failure.ADAPTER_LOST
    if isinstance(exc, UpstreamError):  # from the adapter load: 503 is "unreachable", else its own fault
        return Failure.DOWN if exc.status == 503 else Failure.OTHER
    if isinstance(exc, REFUSED):
        return Failure.DOWN
    if isinstance(exc, DROPPED):
        return Failure.DROPPED
    if isinstance(exc, httpx.TimeoutException):
        return Failure.TIMEOUT
    if isinstance(exc, httpx.HTTPError):
        return Failure.BROKEN
    return Failure.OTHER


class Proxy:
    """Forwards OpenAI requests to the right replica with the right adapter loaded."""

    def __init__(self, *, router: Router, chooser: ReplicaChooser, metrics: Metrics, capture: Capture,
                 max_in_flight: int, drift: DriftMonitor | None = None, variants: Variants | None = None,
                 canary: CanaryWatcher | None = None) -> None:
        self.router = router
        self.canary = canary  # counts outcomes of canary versions (serve/canary.py)
        self.variants = variants  # replicas of other base variants (QLoRA's nf4), started on first use
        self.chooser = chooser
        self.metrics = metrics
        self.capture = capture
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.drift = drift

    # ---- entry -----------------------------------------------------------------------------
    async def handle(self, endpoint: str, raw: bytes, key: KeyInfo,
                     disconnected: Callable[[], Awaitable[None]]) -> Outcome:
        """Serve one request; `disconnected` returns once the client has gone away."""
        start = time.perf_counter()
        try:
            call = self._prepare(ENDPOINTS[endpoint], raw, key, start)
        except ApiError as exc:
            self.metrics.requests.labels(UNKNOWN, "-", endpoint, str(exc.status)).inc()
            return exc
        if self.in_flight >= self.max_in_flight:  # counted here: _done never runs for it
            self.metrics.requests.labels(call.target.adapter, call.target.version, endpoint, "503").inc()
            return ApiError(503, "the gateway is at its in-flight limit; retry shortly",
                            type_="server_error", code="overloaded", retry_after=1)
        self.in_flight += 1
        self.metrics.in_flight.labels(call.target.adapter).inc()
        outcome: Outcome
        try:
            if call.stream:
                outcome = await self._open_stream(call)
            else:
                outcome = await _unless_disconnected(self._complete(call), disconnected)
        except ApiError as exc:
            outcome = exc
        except UpstreamError as exc:
            outcome = upstream_unavailable(exc.message, exc.status)
        except BaseException:
            self._done(call)
            raise
        if isinstance(outcome, ApiError):
            call.status = outcome.status
        if not isinstance(outcome, Stream):  # a stream finishes when it closes
            self._done(call)
        return outcome

    def _prepare(self, endpoint: Endpoint, raw: bytes, key: KeyInfo, start: float) -> Call:
        body = parse_body(raw)
        model = body.get("model")
        if model is None and endpoint.model_optional:
            model = self.router.base_name
        if not isinstance(model, str) or not 0 < len(model) <= 200:
            raise _invalid("model", "a model name (1 to 200 characters) is required")
        _check_required(endpoint, body)
        if model != self.router.base_name and not key.allows(model):
            raise forbidden(model)
        user = body.get("user") if isinstance(body.get("user"), str) else None
        target = self.router.resolve(model, user)
        stream = bool(body.get("stream"))
        injected = False
        if stream and endpoint.stream_usage:
            options = body.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage")):
                # ask for usage (token metrics); the extra chunk is not passed on
                body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
                injected = True
        if injected or body.get("model") != target.served_name:
            body["model"] = target.served_name
            payload = dump_body(body)
        else:
            payload = raw  # nothing to rewrite: forward the bytes as they came
        observed = endpoint.prompt_field is not None
        call = Call(endpoint, body, payload, target, stream, user, start,
                    observed and self.capture.wants(target.adapter), injected=injected)
        if observed and self.drift is not None and not target.is_base:
            call.drift_text = self.drift.wants_text(target.adapter, target.version)
        if observed and self.canary is not None and self.canary.wants_text(target.adapter, target.version):
            call.drift_text = True  # a canary of a label task: its INVALID rate needs the text
        return call

    # ---- the attempt loop ------------------------------------------------------------------
    async def _attempt(self, call: Call, *, stream: bool
                       ) -> tuple[Answer, contextlib.AsyncExitStack, Replica]:
        """Send the call until a replica answers; the lease on it stays held until the caller closes it.

        One resend per call after a connection failure (another replica, or the same one over a
        fresh connection when it still answers), and one adapter reload when the replica lost it.
        """
        target = call.target
        served = None if target.is_base else target.served_name
        path = None if target.adapter_ref is None else target.adapter_ref.path
        if self.variants is not None:
            await self.variants.ensure(target)  # 503 naming the variant when none can be had
        while True:
            replica = self.chooser.pick(target)
            lease = contextlib.AsyncExitStack()
            try:
                upstream = await lease.enter_async_context(replica.lease(served, path))
                resp = await upstream.send(call.endpoint.path, call.payload, stream=stream)
                if resp.status_code == 404 and served is not None and not call.reloaded:
                    await resp.aread()
                    await resp.aclose()
                    raise AdapterLost(served)
                return resp, lease, replica
            except BaseException as exc:
                await lease.aclose()
                await self._recover(call, replica, exc)

    async def _recover(self, call: Call, replica: Replica, exc: BaseException) -> None:
        """Return to send the call again; raise (the client's answer) when it may not be."""
        kind = classify(exc)
        why = exc.__class__.__name__
        if kind is Failure.ADAPTER_LOST:
            call.reloaded = True
            replica.hot.forget(call.target.served_name)
            return
        if kind is Failure.DROPPED and not call.retried and await _alive(replica):
            call.retried = True  # a stale connection: send again, on a fresh one
            log.info("upstream %s dropped a connection (%s) but answers; sending again", replica.name, why)
            return
        if kind in (Failure.DOWN, Failure.DROPPED):
            replica.mark_down()  # routed around until the health loop sees it answer again
            if self._may_retry(call):
                log.warning("upstream %s unreachable (%s); retrying on another replica", replica.name, why)
                return
            if isinstance(exc, UpstreamError):
                raise exc
            raise upstream_unavailable(f"upstream {replica.name} unreachable ({why})", 502) from None
        if kind is Failure.TIMEOUT:
            raise upstream_unavailable(f"upstream {replica.name} timed out", 504) from None
        if kind is Failure.BROKEN:
            replica.mark_down()
            raise upstream_unavailable(f"upstream {replica.name} unreachable ({why})", 502) from None
        raise exc

    def _may_retry(self, call: Call) -> bool:
        """True (once per call) while another replica for the call's variant is ready."""
        if call.retried or not any(r.ready and r.variant == call.target.variant for r in self.chooser.replicas):
            return False
        call.retried = True
        return True

    def _done(self, call: Call) -> None:
        if call.finished:  # a stream may end through its generator or its close, once
            return
        call.finished = True
        self.in_flight -= 1
        self.metrics.in_flight.labels(call.target.adapter).dec()
        labels = (call.target.adapter, call.target.version)
        self.metrics.requests.labels(*labels, call.endpoint.name, str(call.status)).inc()
        self.metrics.duration.labels(*labels, call.endpoint.name).observe(time.perf_counter() - call.start)
        if self.canary is not None and not call.target.is_base:
            self.canary.record(call.target.adapter, call.target.version, call.status, call.output)

    # ---- non-streaming ---------------------------------------------------------------------
    async def _complete(self, call: Call) -> Completed:
        resp, lease, _ = await self._attempt(call, stream=False)
        await lease.aclose()
        call.status = resp.status_code
        if resp.status_code == 200 and call.endpoint.prompt_field is not None:
            self._account(call, resp.content)
        return Completed(resp.status_code, resp.content)

    def _account(self, call: Call, content: bytes) -> None:
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError:
            return
        if not isinstance(data, dict):
            return
        self._count_usage(call, data.get("usage"))
        text = None
        if call.capture or call.drift_text:
            choices = data.get("choices") or [{}]
            first = choices[0] if isinstance(choices[0], dict) else {}
            text = first.get("text") if call.endpoint.name == "completions" else (first.get("message") or {}).get(
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
        assert call.endpoint.prompt_field is not None
        self.capture.record(served_name=call.target.served_name, prompt=call.body.get(call.endpoint.prompt_field),
                            response=text, endpoint=call.endpoint.name, user=call.user)

    def _observe(self, call: Call, text: str | None) -> None:
        """Hand a finished adapter request to drift (a queue append; the work happens off the request path)."""
        call.output = text if call.drift_text else None
        if self.drift is not None and not call.target.is_base and call.endpoint.prompt_field is not None:
            self.drift.observe(call.target.adapter, call.target.version, call.body.get(call.endpoint.prompt_field),
                               text if call.drift_text else None, call.completion_tokens)

    # ---- streaming -------------------------------------------------------------------------
    async def _open_stream(self, call: Call) -> Completed | Stream:
        resp, lease, replica = await self._attempt(call, stream=True)
        if resp.status_code != 200:
            try:
                content = await resp.aread()
            finally:
                await resp.aclose()
                await lease.aclose()
            call.status = resp.status_code
            return Completed(resp.status_code, content)
        closed = False

        async def close() -> None:
            nonlocal closed
            if closed:
                return
            closed = True
            try:
                await resp.aclose()
            finally:
                await lease.aclose()
                if call.status == 200 and call.endpoint.prompt_field is not None:
                    text = "".join(call.texts)
                    if call.capture:
                        self._capture(call, text)
                    self._observe(call, text)
                self._done(call)

        return Stream(self._relay(call, resp, replica), close)

    async def _relay(self, call: Call, resp: Answer, replica: Replica) -> AsyncIterator[bytes]:
        """Pass SSE events through as they arrive; on upstream death send one error event."""
        buffer = b""
        first = True
        try:
            async for chunk in resp.aiter_raw():
                buffer += chunk
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    if first:
                        first = False
                        self.metrics.ttft.labels(call.target.adapter, call.target.version).observe(
                            time.perf_counter() - call.start)
                    if self._inspect(call, event):
                        yield event + b"\n\n"
            if buffer.strip():
                yield buffer
        except httpx.HTTPError as exc:
            call.status = 502
            replica.mark_down()
            log.error("upstream %s failed mid-stream (%s)", replica.name, exc.__class__.__name__)
            err = upstream_unavailable(f"upstream {replica.name} failed mid-stream; retry the request", 502)
            yield b"data: " + orjson.dumps(err.body()) + b"\n\n"

    def _inspect(self, call: Call, event: bytes) -> bool:
        """Record usage and captured text from one event; False drops the event (our usage chunk)."""
        watch_text = call.capture or call.drift_text
        if b'"usage"' not in event and not watch_text:
            return True
        if not event.startswith(b"data: {"):
            return True
        try:
            data = orjson.loads(event[6:])
        except orjson.JSONDecodeError:
            return True
        usage = data.get("usage")
        if usage:
            self._count_usage(call, usage)
        if watch_text:
            for choice in data.get("choices") or []:
                if choice.get("index", 0) == 0:
                    piece = choice.get("text") if call.endpoint.name == "completions" else (
                        choice.get("delta") or {}).get("content")
                    call.texts.append(piece or "")
        return not (call.injected and usage and not data.get("choices"))


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying why not."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # orjson refuses what Python's json (and so vLLM) accepts: NaN, lone surrogates; and nests
        # only 1024 deep. Ask the lenient parser before calling the body invalid.
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "request body is not valid JSON", code="invalid_json") from None
        except RecursionError:  # `[` x 200000: the parser gives up; that is the client's error
            raise ApiError(400, "request body nests too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_request")
    return body


def dump_body(body: dict[str, Any]) -> bytes:
    """The body for vLLM; orjson unless it cannot say it (integers past 64 bits, lone surrogates)."""
    try:
        return orjson.dumps(body)
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(body).encode()


def _check_required(endpoint: Endpoint, body: dict[str, Any]) -> None:
    if endpoint.required is None:
        return
    value = body.get(endpoint.required)
    if endpoint.required == "messages" and not (isinstance(value, list) and value):
        raise _invalid("messages", "a non-empty list of messages is required")
    if endpoint.required == "prompt" and not isinstance(value, str | list):
        raise _invalid("prompt", "a prompt (a string or a list) is required")
    if endpoint.required == "tokens" and not isinstance(value, list):
        raise _invalid("tokens", "a list of token ids is required")


def _invalid(param: str, message: str) -> ApiError:
    return ApiError(400, f"invalid request body: {param}: {message}", param=param, code="invalid_request")


async def _alive(replica: Replica) -> bool:
    try:
        await replica.upstream.model_ids(timeout=ALIVE_CHECK_TIMEOUT)
    except UpstreamError:
        return False
    return True


async def _unless_disconnected(work: Awaitable[Completed], disconnected: Callable[[], Awaitable[None]]) -> Completed:
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
