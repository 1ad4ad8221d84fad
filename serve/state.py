"""Everything the routes need, built once at start-up and kept on `app.state.gateway`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorafleet.serve.auth import Authenticator
from lorafleet.serve.canary import CanaryWatcher
from lorafleet.serve.capture import Capture
from lorafleet.serve.config import ServeSettings
from lorafleet.serve.drift import DriftMonitor
from lorafleet.serve.keys import KeyInfo, KeyStore
from lorafleet.serve.metrics import Metrics
from lorafleet.serve.protocol import ApiError
from lorafleet.serve.proxy import Proxy
from lorafleet.serve.replicas import HotSet, Replica, ReplicaPool
from lorafleet.serve.review_grades import ReviewGrades
from lorafleet.serve.routing import ReplicaChooser, Router
from lorafleet.serve.variants import Variants
from lorafleet.serve.vllm_child import ChildSupervisor, ReplicaSet
from prometheus_client import CollectorRegistry

from lorafleet.base_model import read_manifest
from lorafleet.errors import BaseModelError, RegistryError
from lorafleet.registry import Registry, VersionSummary

log = logging.getLogger(__name__)


@dataclass
class GatewayState:
    settings: ServeSettings
    registry: Registry
    router: Router
    pool: ReplicaPool
    chooser: ReplicaChooser
    auth: Authenticator
    metrics: Metrics
    metrics_registry: CollectorRegistry
    capture: Capture
    proxy: Proxy
    key_store: KeyStore | None = None
    supervisor: ChildSupervisor | ReplicaSet | None = None
    created: int = 0
    extras: dict[str, Any] = field(default_factory=dict)
    base_info: dict[str, Any] = field(default_factory=dict)  # the base's manifest identity, listed on /v1/models
    drift: DriftMonitor | None = None
    review_grades: ReviewGrades | None = None
    variants: Variants | None = None  # replicas of other base variants (nf4 for QLoRA adapters)
    canary: CanaryWatcher | None = None  # watches running canaries, rolls a breaching one back

    async def start(self) -> None:
        if self.supervisor is not None:
            log.warning("starting vLLM on %s (60-90 s on CPU)…", self.settings.base_dir)
            await self.supervisor.start()
        await self.pool.check_all()
        for ref in self.settings.pins:
            await self.load(ref, None, pin=True)
        self.pool.start()
        self.capture.start()
        if self.drift is not None:
            self.drift.start()
        if self.review_grades is not None:
            self.review_grades.start()
        if self.canary is not None:
            self.canary.start()

    async def stop(self) -> None:
        if self.canary is not None:
            await self.canary.stop()
        await self.capture.stop()
        if self.review_grades is not None:
            await self.review_grades.stop()
        if self.drift is not None:
            await self.drift.stop()
        await self.pool.aclose()
        if self.variants is not None:
            await self.variants.stop()
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self.key_store is not None:
            self.key_store.close()

    @property
    def hot_sets(self) -> dict[str, HotSet]:
        """What each replica has loaded, by replica name (read only: change it through HotSet's methods)."""
        return {r.name: r.hot for r in self.pool.replicas}

    def select(self, upstream: str | None) -> list[Replica]:
        if upstream is None:
            return list(self.pool.replicas)
        replica = self.pool.get(upstream)
        if replica is None:
            raise ApiError(404, f"no upstream named {upstream!r}", code="unknown_upstream", param="upstream")
        return [replica]

    async def load(self, model: str, upstream: str | None, *, pin: bool) -> str:
        """Load (and optionally pin) `model` on one upstream or all of them; returns the served name."""
        target = self.router.resolve(model)
        if target.adapter_ref is None:
            raise ApiError(400, "the base model is always loaded", code="base_model", param="model")
        if self.variants is not None:
            await self.variants.ensure(target)  # a QLoRA adapter's variant: its replica, started if need be
        for replica in self.select(upstream):
            if replica.variant != target.variant:
                continue
            if pin:
                replica.hot.pin(target.served_name)
            await replica.hot.ensure(target.served_name, target.adapter_ref.path)
        return target.served_name

    def catalog(self, key: KeyInfo) -> list[dict[str, Any]]:
        """OpenAI model cards: the base, then each ref of each adapter this key may use, once.

        A version lists as `kind: adapter`; a plain alias (and the bare name, i.e. `latest`) as
        `kind: adapter` with the version it points at; a weighted alias as `kind: alias` with its
        `versions` and weights, since no single version answers for it (a client evaluating it
        must try each version)."""
        base = self.router.base_name
        cards = [_card(base, None, {"kind": "base", **self.base_info})]
        by_name: dict[str, list[VersionSummary]] = {}
        for row in self.registry.summaries():
            if not row.error and row.version != "-":
                by_name.setdefault(row.name, []).append(row)
        for name, rows in by_name.items():
            aliases_of_version = {row.version: row.aliases for row in rows}
            entries: list[tuple[str, dict[str, Any]]] = []
            for version in aliases_of_version:
                entries.append((f"{name}@{version}", _version_info(name, version, aliases_of_version)))
            try:
                aliases = self.registry.aliases(name)
            except RegistryError:  # summaries() already reports it; list the versions alone
                aliases = {}
            for alias, target in aliases.items():
                if isinstance(target, str):
                    if target in aliases_of_version:
                        entries.append((f"{name}@{alias}", _version_info(name, target, aliases_of_version)))
                else:
                    entries.append((f"{name}@{alias}", {"kind": "alias", "adapter": name, "alias": alias,
                                                        "versions": dict(target)}))
            latest = aliases.get("latest")
            if isinstance(latest, str) and latest in aliases_of_version:
                entries.insert(0, (name, _version_info(name, latest, aliases_of_version)))
            cards += [_card(ref, base, info) for ref, info in entries if key.allows(ref)]
        return cards


def base_info(folder: Path) -> dict[str, Any]:
    """The base's model id and weights sha256 from its manifest (clients key cached answers on them);
    empty when the folder has no manifest. The manifest is trusted: `base prepare` checked the weights."""
    try:
        manifest = read_manifest(folder)
    except BaseModelError as exc:
        log.warning("base identity not listed on /v1/models: %s", exc)
        return {}
    return {} if manifest is None else {"model_id": manifest.model_id, "weights_sha256": manifest.weights_sha256}


def _version_info(name: str, version: str, aliases_of_version: dict[str, list[str]]) -> dict[str, Any]:
    return {"kind": "adapter", "adapter": name, "version": version, "aliases": aliases_of_version[version]}


def _card(model_id: str, parent: str | None, info: dict[str, Any]) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "lorafleet",
            "root": model_id if parent is None else info.get("adapter"), "parent": parent, "lorafleet": info}
