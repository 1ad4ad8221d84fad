"""Everything the routes need, built once at start-up and kept on `app.state.gateway`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from lorafleet.serve.adapters import HotSet
from lorafleet.serve.auth import Authenticator
from lorafleet.serve.capture import Capture
from lorafleet.serve.config import ServeSettings
from lorafleet.serve.keys import KeyInfo, KeyStore
from lorafleet.serve.metrics import Metrics
from lorafleet.serve.protocol import ApiError
from lorafleet.serve.proxy import Proxy
from lorafleet.serve.routing import Router
from lorafleet.serve.upstream import ChildSupervisor, HttpUpstream, UpstreamPool
from prometheus_client import CollectorRegistry

from lorafleet.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class GatewayState:
    settings: ServeSettings
    registry: Registry
    router: Router
    pool: UpstreamPool
    hot_sets: dict[str, HotSet]
    auth: Authenticator
    metrics: Metrics
    metrics_registry: CollectorRegistry
    capture: Capture
    proxy: Proxy
    key_store: KeyStore | None = None
    supervisor: ChildSupervisor | None = None
    created: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    async def start(self) -> None:
        if self.supervisor is not None:
            log.warning("starting vLLM on %s (60-90 s on CPU)…", self.settings.base_dir)
            await self.supervisor.start()
        self.pool.on_recovered = self._recovered
        await self.pool.check_all()
        for ref in self.settings.pins:
            await self.load(ref, None, pin=True)
        self.pool.start()
        self.capture.start()

    async def stop(self) -> None:
        await self.capture.stop()
        for hot in self.hot_sets.values():
            await hot.aclose()
        await self.pool.aclose()
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self.key_store is not None:
            self.key_store.close()

    async def _recovered(self, upstream: HttpUpstream, served_ids: list[str]) -> None:
        await self.hot_sets[upstream.name].replay(served_ids)

    def select(self, upstream: str | None) -> list[HotSet]:
        if upstream is None:
            return list(self.hot_sets.values())
        if upstream not in self.hot_sets:
            raise ApiError(404, f"no upstream named {upstream!r}", code="unknown_upstream", param="upstream")
        return [self.hot_sets[upstream]]

    async def load(self, model: str, upstream: str | None, *, pin: bool) -> str:
        """Load (and optionally pin) `model` on one upstream or all of them; returns the served name."""
        target = self.router.resolve(model)
        if target.adapter_ref is None:
            raise ApiError(400, "the base model is always loaded", code="base_model", param="model")
        for hot in self.select(upstream):
            if pin:
                hot.pins.add(target.served_name)
            await hot.ensure(target.served_name, target.adapter_ref.path)
        return target.served_name

    def catalog(self, key: KeyInfo) -> list[dict[str, Any]]:
        """OpenAI model cards: the base, then every ref of every adapter this key may use."""
        base = self.router.base_name
        cards = [_card(base, None, {"kind": "base"})]
        for row in self.registry.summaries():
            if row.error or row.version == "-":
                continue
            refs = [f"{row.name}@{row.version}", *(f"{row.name}@{a}" for a in row.aliases)]
            if "latest" in row.aliases:
                refs.insert(0, row.name)
            for ref in refs:
                if key.allows(ref):
                    cards.append(_card(ref, base, {"kind": "adapter", "adapter": row.name,
                                                   "version": row.version, "aliases": row.aliases}))
        return cards


def _card(model_id: str, parent: str | None, info: dict[str, Any]) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "lorafleet",
            "root": model_id if parent is None else info.get("adapter"), "parent": parent, "lorafleet": info}
