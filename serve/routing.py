"""Where a request goes: from the client's `model` to what to serve (the base, or one exact adapter
version), then to which replica.

Weighted aliases (canary) go through `Registry.resolve(ref, sticky_key=user)`, so the same OpenAI
`user` always gets the same version. Plain aliases and versions are cached for `ttl` seconds so a
request does not read the registry files every time; an entry is dropped at once when the
adapter's aliases file changes (one stat per request), and `clear()` empties it (admin reload).

Replica choice (`ReplicaChooser`) keeps each adapter on a home replica of a consistent-hash ring,
spreads a hot adapter over its home and the next replica, and spills away from saturated or down
ones. It only reads replica state; `Replica.lease()` and `mark_down()` change it.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lorafleet.serve.metrics import BASE_LABEL, NO_VERSION
from lorafleet.serve.protocol import ApiError, model_not_found
from lorafleet.serve.replicas import DEFAULT_VARIANT, Replica
from lorafleet.serve.upstream import UpstreamError

from lorafleet.errors import InvalidNameError, NotFoundError, RegistryError
from lorafleet.refs import parse_ref
from lorafleet.registry import ALIASES_FILE, Registry, ResolvedAdapter

if TYPE_CHECKING:
    from lorafleet.serve.config import RoutingSettings


@dataclass(frozen=True)
class Target:
    """One resolved request target."""

    served_name: str  # the name vLLM serves: the base name or `name@vN`
    adapter: str  # metrics label: adapter name or `base`
    version: str  # metrics label: `vN` or `-`
    adapter_ref: ResolvedAdapter | None = None
    variant: str = DEFAULT_VARIANT  # which base variant's replicas serve it (QLoRA adapters: their own)

    @property
    def is_base(self) -> bool:
        return self.adapter_ref is None


class Router:
    """Resolves `model` strings; the base name always wins over an adapter of the same name."""

    def __init__(self, registry: Registry, base_name: str, *, ttl: float = 2.0,
                 variant_of: Callable[[ResolvedAdapter], str] | None = None) -> None:
        self.registry = registry
        self.base_name = base_name
        self.base = Target(base_name, BASE_LABEL, NO_VERSION)
        self.ttl = ttl
        self.variant_of = variant_of or (lambda _resolved: DEFAULT_VARIANT)
        # model -> (expiry, aliases-file stamp, target): dropped after `ttl` s or as soon as the aliases change
        self._cache: dict[str, tuple[float, tuple[int, int] | None, Target]] = {}

    def clear(self) -> None:
        self._cache.clear()

    def resolve(self, model: str, user: str | None = None) -> Target:
        """The target for `model`; raises ApiError 404 for unknown models/versions/aliases."""
        if model == self.base_name:
            return self.base
        hit = self._cache.get(model)
        now = time.monotonic()
        if hit is not None and hit[0] > now and hit[1] == self._stamp(model):
            return hit[2]
        stamp = self._stamp(model)
        try:
            ref = parse_ref(model)
            weighted = not ref.is_version and isinstance(self.registry.aliases(ref.name).get(ref.alias), dict)
            resolved = self.registry.resolve(ref, sticky_key=user)
        except (NotFoundError, InvalidNameError) as exc:
            raise model_not_found(model, exc.message) from None
        except RegistryError as exc:
            raise ApiError(500, f"registry entry for {model!r} is broken: {exc.message}", type_="server_error",
                           code="registry_error") from None
        target = Target(resolved.served_name, resolved.name, resolved.version, resolved,
                        self.variant_of(resolved))
        if not weighted:
            self._cache[model] = (now + self.ttl, stamp, target)
        return target

    def _stamp(self, model: str) -> tuple[int, int] | None:
        """The adapter's aliases file as it is now (one stat): an alias moved, the cache entry is stale."""
        try:
            info = os.stat(self.registry.root / model.partition("@")[0] / ALIASES_FILE)
        except (OSError, ValueError):
            return None
        return info.st_mtime_ns, info.st_ino


class ReplicaChooser:
    """Picks the replica for one request among those serving its target's base variant."""

    def __init__(self, replicas: list[Replica], *, saturated_at: int = 64, spread_at: int = 16,
                 vnodes: int = 64) -> None:
        self.replicas = replicas
        # a replica is saturated when its in-flight plus vLLM's waiting queue reaches this
        self.saturated_at = saturated_at
        # an adapter with this many requests in flight on its home also goes to a second replica
        self.spread_at = spread_at
        self.ring = HashRing([r.name for r in replicas], vnodes=vnodes)
        # (replica name, "base" | "home" | "spread" | "spill") after each pick: the routing counter
        self.on_decision: Callable[[str, str], None] | None = None

    @classmethod
    def from_settings(cls, replicas: list[Replica], routing: RoutingSettings) -> ReplicaChooser:
        """The gateway's chooser, from its routing group."""
        return cls(replicas, saturated_at=routing.saturated_at, spread_at=routing.spread_at,
                   vnodes=routing.ring_vnodes)

    def load(self, replica: Replica) -> int:
        """How busy a replica is: requests the gateway has in flight there plus vLLM's own queue."""
        return replica.in_flight + replica.waiting

    def saturated(self, replica: Replica) -> bool:
        return self.load(replica) >= self.saturated_at

    def home_order(self, served_name: str, variant: str = DEFAULT_VARIANT) -> list[Replica]:
        """Every replica of `variant` in the adapter's ring order, ready or not: its home first."""
        by_name = {r.name: r for r in self.replicas if r.variant == variant}
        return [by_name[n] for n in self.ring.preference(served_name) if n in by_name]

    def pick(self, target: Target) -> Replica:
        """The replica for one request (see `_choose`); the decision is reported to `on_decision`."""
        replica, decision = self._choose(target)
        if self.on_decision is not None:
            self.on_decision(replica.name, decision)
        return replica

    def _choose(self, target: Target) -> tuple[Replica, str]:
        """The replica for one request and why: base, home, spread or spill.

        Base requests: the least-loaded ready replica. Adapters: their home on the hash ring when
        it is ready and not saturated, shared with the next ready replica in ring order once the
        adapter has `spread_at` requests in flight at home. Home down or saturated: the
        least-loaded unsaturated ready replica, preferring one that already holds the adapter (so
        the fallback loads it once, not everywhere).
        """
        ready = [r for r in self.replicas if r.ready and r.variant == target.variant]
        if not ready:
            what = "" if target.variant == DEFAULT_VARIANT else f" for base variant {target.variant!r}"
            raise UpstreamError(f"no upstream{what} is ready (vLLM is starting or restarting)", status=503)
        if target.is_base:
            return min(ready, key=self.load), "base"
        served = target.served_name
        order = self.home_order(served, target.variant)
        home = order[0]
        if home.ready and not self.saturated(home):
            if home.adapter_in_flight.get(served, 0) < self.spread_at:
                return home, "home"
            second = next((r for r in order[1:] if r.ready and not self.saturated(r)), None)
            if second is None:
                return home, "home"
            # a hot adapter: home and its ring successor share it, whichever has fewer of it
            return min((home, second), key=lambda r: (r.adapter_in_flight.get(served, 0), self.load(r))), "spread"
        open_ = [r for r in ready if not self.saturated(r)] or ready
        holding = [r for r in open_ if r.hot.holds(served)]
        return min(holding or open_, key=self.load), "spill"


class HashRing:
    """Consistent hashing of served names onto replica names, with virtual nodes.

    Each replica owns `vnodes` points on a 64-bit ring; a key belongs to the first point clockwise
    of its hash. Adding or removing a replica only moves the keys of the points it gains or loses,
    so an adapter keeps its home (and stays loaded on few replicas) as the fleet changes.
    """

    def __init__(self, nodes: list[str] | None = None, *, vnodes: int = 64) -> None:
        self.vnodes = vnodes
        self._points: list[tuple[int, str]] = []
        self._count = 0
        for node in nodes or []:
            self.add(node)

    def add(self, node: str) -> None:
        if any(n == node for _, n in self._points):
            return
        self._points.extend((_hash(f"{node}#{i}"), node) for i in range(self.vnodes))
        self._points.sort()
        self._count += 1

    def remove(self, node: str) -> None:
        before = len(self._points)
        self._points = [p for p in self._points if p[1] != node]
        if len(self._points) != before:
            self._count -= 1

    @property
    def nodes(self) -> list[str]:
        return sorted({n for _, n in self._points})

    def preference(self, key: str) -> list[str]:
        """Every node once, in ring order from `key`'s home: the home first, then its successors."""
        if not self._points:
            return []
        start = bisect.bisect_left(self._points, (_hash(key), ""))
        order: list[str] = []
        for i in range(len(self._points)):
            node = self._points[(start + i) % len(self._points)][1]
            if node not in order:
                order.append(node)
                if len(order) == self._count:
                    break
        return order

    def home(self, key: str) -> str | None:
        order = self.preference(key)
        return order[0] if order else None


def _hash(text: str) -> int:
    # blake2b, not hash(): Python's str hash is salted per process, homes must survive restarts
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
