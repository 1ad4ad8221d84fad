"""The wire to one vLLM OpenAI server: an `httpx.AsyncClient` with pooled keep-alive connections,
the request it forwards, and the admin calls (models, metrics, LoRA load/unload).

Stateless beyond its connection pool: whether the server is up, what is loaded there and what is
in flight belong to its `Replica` (serve/replicas.py). The vLLM child process is serve/vllm_child.py.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import aiohttp
import httpx
import yarl

log = logging.getLogger(__name__)

LOAD_TIMEOUT = 120.0
KEEPALIVE_S = 4.0
JSON_HEADERS = {"Content-Type": "application/json"}


class Answer(Protocol):
    """An upstream's HTTP answer as the proxy reads it (httpx.Response has this shape)."""

    status_code: int

    @property
    def content(self) -> bytes: ...

    async def aread(self) -> bytes: ...

    async def aclose(self) -> None: ...

    def aiter_raw(self) -> AsyncIterator[bytes]: ...


class AioAnswer:
    """An aiohttp response with httpx.Response's reading methods and exception classes."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status_code = resp.status
        self.content = b""

    async def aread(self) -> bytes:
        try:
            self.content = await self._resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise as_httpx_error(exc) from None
        return self.content

    async def aclose(self) -> None:
        if self._resp.content.at_eof():
            self._resp.release()  # back to the pool
        else:
            self._resp.close()  # mid-stream: drop the connection, so vLLM aborts the request

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise as_httpx_error(exc) from None


def as_httpx_error(exc: BaseException) -> httpx.HTTPError:
    """The httpx exception the proxy's `classify` knows for an aiohttp failure."""
    message = f"{exc.__class__.__name__}: {exc}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message)
    if isinstance(exc, TimeoutError):  # sock_read: a slow replica, not a dead one
        return httpx.ReadTimeout(message)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, aiohttp.ClientOSError):
        return httpx.ReadError(message)
    return httpx.TransportError(message)


class UpstreamError(Exception):
    """An upstream call that failed: `status` is what the gateway should answer."""

    def __init__(self, message: str, *, status: int = 502, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.upstream_status = upstream_status


class HttpUpstream:
    """One vLLM OpenAI server reached over HTTP with pooled connections."""

    def __init__(self, name: str, url: str, api_key: str | None, *, request_timeout: float = 600.0,
                 connect_timeout: float = 5.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # httpx for the admin calls (and everything, when a test hands in an in-process transport);
        # aiohttp for the requests the gateway forwards: a third of httpx's CPU per request.
        self.client = httpx.AsyncClient(
            base_url=self.url, headers=headers, transport=transport,
            timeout=httpx.Timeout(request_timeout, connect=connect_timeout, pool=connect_timeout * 6),
            limits=httpx.Limits(max_connections=2000, max_keepalive_connections=256),
        )
        self._fast = transport is None
        self._headers = {**headers, **JSON_HEADERS}
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=request_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, yarl.URL] = {}

    async def aclose(self) -> None:
        await self.client.aclose()
        if self._session is not None:
            await self._session.close()

    async def send(self, path: str, content: bytes, *, stream: bool) -> Answer:
        """POST an already-encoded JSON body; with `stream` the caller reads and closes the answer.
        Transport failures raise httpx's exception classes whichever client carried the request."""
        if not self._fast:
            request = self.client.build_request("POST", path, content=content, headers=JSON_HEADERS)
            return await self.client.send(request, stream=stream)
        if self._session is None:
            # idle connections are dropped before vLLM's own 5 s keep-alive ends: no reuse race
            connector = aiohttp.TCPConnector(limit=2000, keepalive_timeout=KEEPALIVE_S)
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout,
                                                  connector=connector, auto_decompress=False,
                                                  skip_auto_headers=("Accept-Encoding", "User-Agent"))
        url = self._urls.get(path)
        if url is None:  # parsed once per path (an --upstream URL may carry a path prefix)
            url = self._urls[path] = yarl.URL(self.url + path)
        try:
            resp = await self._session.post(url, data=content)
            answer = AioAnswer(resp)
            if not stream:
                await answer.aread()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise as_httpx_error(exc) from None
        return answer

    async def model_ids(self, timeout: float = 5.0) -> list[str]:
        """What the server serves now (base + loaded LoRAs); raises UpstreamError when down."""
        try:
            resp = await self.client.get("/v1/models", timeout=timeout)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {self.name} unreachable ({exc.__class__.__name__})", status=503) from None
        if resp.status_code != 200:
            raise UpstreamError(f"upstream {self.name} answered {resp.status_code} to /v1/models", status=503)
        return [m["id"] for m in resp.json().get("data", [])]

    async def waiting_requests(self, timeout: float = 5.0) -> int | None:
        """vLLM's queue depth (`vllm:num_requests_waiting`), or None when /metrics has none."""
        try:
            resp = await self.client.get("/metrics", timeout=timeout)
        except httpx.HTTPError:
            return None
        if resp.status_code != 200:
            return None
        return parse_waiting(resp.text)

    async def load_lora(self, served_name: str, path: Path) -> None:
        """Load an adapter under its immutable served name; 'already loaded' counts as success."""
        body = {"lora_name": served_name, "lora_path": str(path)}
        resp = await self._post("/v1/load_lora_adapter", body)
        if resp.status_code == 400 and "already been loaded" in resp.text:
            return
        if resp.status_code != 200:
            raise UpstreamError(f"upstream {self.name} could not load {served_name}: "
                                f"{_error_message(resp)}", upstream_status=resp.status_code)

    async def unload_lora(self, served_name: str) -> None:
        resp = await self._post("/v1/unload_lora_adapter", {"lora_name": served_name})
        if resp.status_code not in (200, 404):
            raise UpstreamError(f"upstream {self.name} could not unload {served_name}: "
                                f"{_error_message(resp)}", upstream_status=resp.status_code)

    async def chat_text(self, model: str, messages: list[dict], max_tokens: int = 8) -> str:
        """A short greedy chat completion (used by the probe)."""
        resp = await self._post("/v1/chat/completions", {"model": model, "messages": messages,
                                                         "max_tokens": max_tokens, "temperature": 0})
        if resp.status_code != 200:
            raise UpstreamError(f"probe on {model} failed: {_error_message(resp)}", upstream_status=resp.status_code)
        return str(resp.json()["choices"][0]["message"]["content"])

    async def _post(self, path: str, body: dict) -> httpx.Response:
        try:
            return await self.client.post(path, json=body, timeout=LOAD_TIMEOUT)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {self.name} unreachable ({exc.__class__.__name__})", status=503) from None


def parse_waiting(text: str) -> int | None:
    """Sum of `vllm:num_requests_waiting` samples in a Prometheus text page (None if absent)."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith("vllm:num_requests_waiting"):
            with contextlib.suppress(ValueError, IndexError):
                total += float(line.rsplit(maxsplit=1)[1])
                seen = True
    return int(total) if seen else None


def _error_message(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])[:300]
    except Exception:  # noqa: BLE001 - any non-OpenAI body: show its start
        return f"HTTP {resp.status_code} {resp.text[:200]}"
