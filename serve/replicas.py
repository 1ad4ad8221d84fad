"""The replicas behind the gateway: one `Replica` per vLLM server, owning what the gateway knows
about it (up/ready, requests in flight, the adapters loaded there), and the pool that watches
their health.

State changes go through few doors: `Replica.lease()` counts requests in flight, `mark_down()`
takes a replica out of routing (the health loop puts it back), `HotSet.pin()/unpin()` and its
loads decide what stays loaded. Which replica a request goes to is serve/routing.py's choice.
Served names are `name@vN`: versions are immutable, so a name never points at stale weights.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from lorafleet.serve.metrics import Metrics
from lorafleet.serve.upstream import HttpUpstream, UpstreamError

if TYPE_CHECKING:
    from lorafleet.serve.config import RoutingSettings

log = logging.getLogger(__name__)

PROBE_MESSAGES = [{"role": "user", "content": "Hello! Who are you and what do you do?"}]
PROBE_TOKENS = 8
# The after-load probe waits until the requests that waited for the load are done (its two prefills would
# join their batch and delay their first token: a cold adapter's first token is what users wait for), at
# most this long, polling this often.
PROBE_DEFER_MAX_S = 30.0
PROBE_POLL_S = 0.05
DEFAULT_VARIANT = "base"  # the base as prepared; other variants (e.g. nf4) get replicas of their own


class Replica:
    """One vLLM server as the gateway sees it: its wire, its health, its load and its adapters."""

    def __init__(self, upstream: HttpUpstream, *, hot_set: int, metrics: Metrics, base_name: str,
                 probe: bool = True, variant: str = DEFAULT_VARIANT) -> None:
        self.upstream = upstream
        self.name = upstream.name
        self.variant = variant
        self.up = False
        self.ready = False  # up and its adapters replayed
        self.waiting = 0  # vllm:num_requests_waiting from its /metrics at the last health check
        self.vllm_models: frozenset[str] | None = None  # what /v1/models listed at the last check (residency)
        self._in_flight = 0
        self._adapter_in_flight: collections.Counter[str] = collections.Counter()
        self.hot = HotSet(upstream, self._adapter_in_flight, capacity=hot_set, metrics=metrics,
                          base_name=base_name, probe=probe)

    @classmethod
    def from_settings(cls, upstream: HttpUpstream, routing: RoutingSettings, *, metrics: Metrics, base_name: str,
                      variant: str = DEFAULT_VARIANT) -> Replica:
        """One replica with the routing group's hot set and probe."""
        return cls(upstream, hot_set=routing.hot_set, metrics=metrics, base_name=base_name, probe=routing.probe,
                   variant=variant)

    @property
    def url(self) -> str:
        return self.upstream.url

    @property
    def in_flight(self) -> int:
        """Requests the gateway has sent here and not finished."""
        return self._in_flight

    @property
    def adapter_in_flight(self) -> Mapping[str, int]:
        return self._adapter_in_flight

    def mark_down(self) -> None:
        """The server stopped answering (or its process died): route nothing here until it recovers."""
        self.up = self.ready = False

    @contextlib.asynccontextmanager
    async def lease(self, served: str | None, path: Path | None = None) -> AsyncIterator[HttpUpstream]:
        """Hold a slot here for one request (and `served`'s adapter, loaded first unless it is the base)."""
        self._in_flight += 1
        if served is not None:
            self._adapter_in_flight[served] += 1  # before the load: a busy adapter is never evicted
        try:
            if served is not None:
                assert path is not None
                await self.hot.ensure(served, path)
            yield self.upstream
        finally:
            self._in_flight -= 1
            if served is not None:
                self._adapter_in_flight[served] -= 1
                if not self._adapter_in_flight[served]:
                    del self._adapter_in_flight[served]

    async def check(self, *, queue: bool = True) -> None:
        """One health check: up when /v1/models answers; ready once lost adapters are replayed.
        `queue`: also read vLLM's waiting queue (only routing between replicas needs it)."""
        try:
            ids = await self.upstream.model_ids()
        except UpstreamError as exc:
            if self.up:
                log.error("%s", exc.message)
            self.mark_down()
            return
        self.up = True
        self.vllm_models = frozenset(ids)
        if queue:
            self.waiting = await self.upstream.waiting_requests() or 0
        await self.hot.replay(ids)
        self.ready = True


class ReplicaPool:
    """The replicas behind the gateway and the loop that checks their health every `interval` s."""

    def __init__(self, replicas: list[Replica], *, interval: float = 2.0) -> None:
        self.replicas = replicas
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return any(r.ready for r in self.replicas)

    def get(self, name: str) -> Replica | None:
        return next((r for r in self.replicas if r.name == name), None)

    async def check_all(self) -> None:
        for replica in self.replicas:
            # vLLM's /metrics page is large: read the queue only where there is a choice to make
            await replica.check(queue=sum(r.variant == replica.variant for r in self.replicas) > 1)

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
        for replica in self.replicas:
            await replica.hot.aclose()
            await replica.upstream.aclose()


class HotSet:
    """Adapters loaded on one upstream, least recently used first."""

    def __init__(self, upstream: HttpUpstream, in_use: Mapping[str, int], *, capacity: int, metrics: Metrics,
                 base_name: str, probe: bool = True) -> None:
        self.upstream = upstream
        self.capacity = capacity
        self.metrics = metrics
        self.base_name = base_name
        self.probe_enabled = probe
        self.loaded: collections.OrderedDict[str, Path] = collections.OrderedDict()
        self.pins: set[str] = set()
        self.in_use = in_use  # the replica's requests in flight per adapter (read only: busy ones stay)
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._base_probe: str | None = None
        self._background: set[asyncio.Task[None]] = set()

    def holds(self, served_name: str) -> bool:
        return served_name in self.loaded

    def pin(self, served_name: str) -> None:
        """Never evict this adapter (it is loaded by the caller: `ensure`)."""
        self.pins.add(served_name)

    def unpin(self, served_name: str) -> None:
        self.pins.discard(served_name)

    async def ensure(self, served_name: str, path: Path) -> None:
        """Make sure the adapter is loaded; concurrent callers for one adapter share one load."""
        if served_name in self.loaded:
            self.loaded.move_to_end(served_name)
            return
        task = self._loading.get(served_name)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(served_name, path))
            self._loading[served_name] = task
            task.add_done_callback(lambda _t: self._loading.pop(served_name, None))
        # shield: a client that goes away must not cancel a load other requests wait for
        await asyncio.shield(task)

    async def _load(self, served_name: str, path: Path) -> None:
        await self._make_room()
        start = time.monotonic()
        try:
            await self.upstream.load_lora(served_name, path)
        except UpstreamError as exc:
            self.metrics.adapter_loads.labels(self.upstream.name, "error").inc()
            # vLLM's message names registry paths and its internals: log it, tell the client less
            log.error("load of %s on %s failed: %s", served_name, self.upstream.name, exc.message)
            raise UpstreamError(f"adapter {served_name} could not be loaded on upstream {self.upstream.name} "
                                "(the gateway log has the reason)", status=exc.status,
                                upstream_status=exc.upstream_status) from None
        self.metrics.adapter_load_seconds.observe(time.monotonic() - start)
        self.metrics.adapter_loads.labels(self.upstream.name, "ok").inc()
        self.loaded[served_name] = path
        self._update_size()
        log.info("loaded %s on %s in %.2fs", served_name, self.upstream.name, time.monotonic() - start)
        if self.probe_enabled:
            self._spawn(self.probe_when_idle(served_name))

    async def probe_when_idle(self, served_name: str) -> bool:
        """`probe`, once no request for this adapter is in flight (or after `PROBE_DEFER_MAX_S`)."""
        deadline = time.monotonic() + PROBE_DEFER_MAX_S
        while self.in_use.get(served_name) and time.monotonic() < deadline:
            await asyncio.sleep(PROBE_POLL_S)
        return await self.probe(served_name)

    async def _make_room(self) -> None:
        # loads in flight count too, or concurrent loads of different adapters overshoot
        while self.loaded and len(self.loaded) + len(self._loading) > self.capacity:
            victim = next((n for n in self.loaded if n not in self.pins and not self.in_use.get(n)), None)
            if victim is None:
                log.warning("hot set of %s is full of pinned or busy adapters; going over %d",
                            self.upstream.name, self.capacity)
                return
            await self.unload(victim)

    async def unload(self, served_name: str) -> None:
        """Unload one adapter (LRU or admin); an unreachable upstream has lost it anyway."""
        self.loaded.pop(served_name, None)
        self.pins.discard(served_name)
        self._update_size()
        try:
            await self.upstream.unload_lora(served_name)
        except UpstreamError as exc:
            log.warning("unload of %s: %s", served_name, exc.message)
        self.metrics.adapter_unloads.labels(self.upstream.name).inc()

    def forget(self, served_name: str) -> None:
        """The upstream says it does not have this adapter (it restarted): load it again next time."""
        self.loaded.pop(served_name, None)
        self._update_size()

    async def replay(self, served_ids: list[str]) -> None:
        """Reload what we loaded but the upstream no longer serves (it restarted)."""
        present = set(served_ids)
        missing = [n for n in self.loaded if n not in present]
        if not missing:
            return
        self._base_probe = None
        log.warning("%s lost %d adapter(s); replaying them", self.upstream.name, len(missing))
        for name in sorted(missing, key=lambda n: n not in self.pins):
            path = self.loaded.get(name)
            if path is None:  # evicted while an earlier replay was awaited: nothing to restore
                continue
            try:
                await self.upstream.load_lora(name, path)
                self.metrics.adapter_loads.labels(self.upstream.name, "replay").inc()
            except UpstreamError as exc:
                log.error("replay of %s failed: %s", name, exc.message)
                self.metrics.adapter_loads.labels(self.upstream.name, "error").inc()
                self.loaded.pop(name, None)
                if exc.status == 503:
                    raise
        self._update_size()

    async def probe(self, served_name: str) -> bool:
        """True when the adapter's greedy output differs from the base's (else warn: metric + log)."""
        try:
            if self._base_probe is None:
                self._base_probe = await self.upstream.chat_text(self.base_name, PROBE_MESSAGES, PROBE_TOKENS)
            out = await self.upstream.chat_text(served_name, PROBE_MESSAGES, PROBE_TOKENS)
        except UpstreamError as exc:
            log.warning("probe of %s skipped: %s", served_name, exc.message)
            return True
        if out != self._base_probe:
            return True
        name, _, version = served_name.partition("@")
        self.metrics.probe_warnings.labels(name, version).inc()
        log.warning("adapter %s answers exactly like the base on the probe prompt: it may do nothing "
                    "(target modules not in the base?)", served_name)
        return False

    def _update_size(self) -> None:
        self.metrics.hot_set_size.labels(self.upstream.name).set(len(self.loaded))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
