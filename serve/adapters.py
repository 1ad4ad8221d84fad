"""Which adapters are loaded where: a hot set per upstream with single-flight loads, LRU unloads,
pins, a probe that flags adapters that change nothing, and replay after an upstream restart.

Served names are `name@vN`: versions are immutable, so a name never points at stale weights.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from pathlib import Path

from lorafleet.serve.metrics import Metrics
from lorafleet.serve.upstream import HttpUpstream, UpstreamError

log = logging.getLogger(__name__)

PROBE_MESSAGES = [{"role": "user", "content": "Hello! Who are you and what do you do?"}]
PROBE_TOKENS = 8


class HotSet:
    """Adapters loaded on one upstream, least recently used first."""

    def __init__(self, upstream: HttpUpstream, *, capacity: int, metrics: Metrics,
                 base_name: str, probe: bool = True) -> None:
        self.upstream = upstream
        self.capacity = capacity
        self.metrics = metrics
        self.base_name = base_name
        self.probe_enabled = probe
        self.loaded: collections.OrderedDict[str, Path] = collections.OrderedDict()
        self.pins: set[str] = set()
        self.in_use: collections.Counter[str] = upstream.adapter_in_flight  # shared: the pool reads it
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._base_probe: str | None = None
        self._background: set[asyncio.Task[None]] = set()

    def holds(self, served_name: str) -> bool:
        return served_name in self.loaded

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
        except UpstreamError:
            self.metrics.adapter_loads.labels(self.upstream.name, "error").inc()
            raise
        self.metrics.adapter_load_seconds.observe(time.monotonic() - start)
        self.metrics.adapter_loads.labels(self.upstream.name, "ok").inc()
        self.loaded[served_name] = path
        self._update_size()
        log.info("loaded %s on %s in %.2fs", served_name, self.upstream.name, time.monotonic() - start)
        if self.probe_enabled:
            self._spawn(self.probe(served_name))

    async def _make_room(self) -> None:
        # loads in flight count too, or concurrent loads of different adapters overshoot
        while self.loaded and len(self.loaded) + len(self._loading) > self.capacity:
            victim = next((n for n in self.loaded if n not in self.pins and not self.in_use[n]), None)
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
