"""vLLM upstreams: the HTTP client for one OpenAI-compatible vLLM server and the pool that watches
their health and picks one per request. The vLLM child process lives in `serve/vllm_child.py`.

An upstream is anything with a URL, a key and an `httpx.AsyncClient`; the gateway holds a list of
them (`UpstreamPool`) so replica routing can grow without touching the routes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from lorafleet.serve.routing import HashRing

log = logging.getLogger(__name__)

LOAD_TIMEOUT = 120.0


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
        self.up = False
        self.ready = False  # up and its adapters replayed
        self.in_flight = 0
        # requests in flight per served name; HotSet.in_use is this same Counter (the proxy counts)
        self.adapter_in_flight: collections.Counter[str] = collections.Counter()
        self.waiting = 0  # vllm:num_requests_waiting from its /metrics at the last health check
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(
            base_url=self.url, headers=headers, transport=transport,
            timeout=httpx.Timeout(request_timeout, connect=connect_timeout, pool=connect_timeout * 6),
            limits=httpx.Limits(max_connections=2000, max_keepalive_connections=256),
        )

    def mark_down(self) -> None:
        """The server stopped answering (or its process died): route nothing here until it recovers."""
        self.up = self.ready = False

    async def aclose(self) -> None:
        await self.client.aclose()

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


class UpstreamPool:
    """The upstreams behind the gateway and the loop that watches their health.

    `on_recovered(upstream, model_ids)` runs when an upstream answers again (or serves fewer
    adapters than we loaded, i.e. it restarted) and must replay its adapters; the upstream is
    marked ready only after it returns.
    """

    def __init__(self, upstreams: list[HttpUpstream], *, interval: float = 2.0, saturated_at: int = 64,
                 spread_at: int = 16, vnodes: int = 64) -> None:
        self.upstreams = upstreams
        self.interval = interval
        # a replica is saturated when its in-flight plus vLLM's waiting queue reaches this
        self.saturated_at = saturated_at
        # an adapter with this many requests in flight on its home also goes to a second replica
        self.spread_at = spread_at
        self.ring = HashRing([u.name for u in upstreams], vnodes=vnodes)
        self.on_recovered: Callable[[HttpUpstream, list[str]], Awaitable[None]] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return any(u.ready for u in self.upstreams)

    def load(self, upstream: HttpUpstream) -> int:
        """How busy a replica is: requests the gateway has in flight there plus vLLM's own queue."""
        return upstream.in_flight + upstream.waiting

    def saturated(self, upstream: HttpUpstream) -> bool:
        return self.load(upstream) >= self.saturated_at

    def home_order(self, served_name: str) -> list[HttpUpstream]:
        """Every replica in the adapter's ring order, ready or not: its home first."""
        by_name = {u.name: u for u in self.upstreams}
        return [by_name[n] for n in self.ring.preference(served_name)]

    def pick(self, served_name: str | None, loaded: Callable[[HttpUpstream], bool]) -> HttpUpstream:
        """The replica for one request.

        Base requests: the least-loaded ready replica. Adapters: their home on the hash ring when
        it is ready and not saturated, shared with the next ready replica in ring order once the
        adapter has `spread_at` requests in flight at home. Home down or saturated: the
        least-loaded unsaturated ready replica, preferring one that already holds the adapter (so
        the fallback loads it once, not everywhere).
        """
        ready = [u for u in self.upstreams if u.ready]
        if not ready:
            raise UpstreamError("no upstream is ready (vLLM is starting or restarting)", status=503)
        if served_name is None:
            return min(ready, key=self.load)
        order = self.home_order(served_name)
        home = order[0]
        if home.ready and not self.saturated(home):
            if home.adapter_in_flight[served_name] < self.spread_at:
                return home
            second = next((u for u in order[1:] if u.ready and not self.saturated(u)), None)
            if second is None:
                return home
            # a hot adapter: home and its ring successor share it, whichever has fewer of it
            return min((home, second), key=lambda u: (u.adapter_in_flight[served_name], self.load(u)))
        open_ = [u for u in ready if not self.saturated(u)] or ready
        holding = [u for u in open_ if loaded(u)]
        return min(holding or open_, key=self.load)

    async def check_all(self) -> None:
        for upstream in self.upstreams:
            await self.check(upstream)

    async def check(self, upstream: HttpUpstream) -> None:
        try:
            ids = await upstream.model_ids()
        except UpstreamError as exc:
            if upstream.up:
                log.error("%s", exc.message)
            upstream.up = upstream.ready = False
            return
        upstream.up = True
        waiting = await upstream.waiting_requests()
        upstream.waiting = waiting or 0
        if self.on_recovered is not None:
            await self.on_recovered(upstream, ids)
        upstream.ready = True

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_all()
            except Exception:  # noqa: BLE001 - the watcher must survive anything
                log.exception("upstream health check failed")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for upstream in self.upstreams:
            await upstream.aclose()
