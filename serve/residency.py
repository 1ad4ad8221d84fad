"""Where each adapter version lives on each upstream, as gauges computed at scrape time.

Three states, from the gateway's own view plus what vLLM last said it serves (/v1/models at the
health check):
- `batch_slot`: loaded and with requests in flight there (in one of vLLM's --max-loras batch
  slots, or waiting for one);
- `cpu_cache`: loaded in vLLM (its LoRA cache, --max-cpu-loras) with nothing in flight;
- `registered`: in the registry, not loaded on that upstream (the next request pays a load).
Labels are bounded: adapter names and versions come from the registry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lorafleet.errors import LorafleetError
from lorafleet.registry import Registry

STATES = ("batch_slot", "cpu_cache", "registered")


class _Hot(Protocol):
    loaded: Mapping[str, object]


class ReplicaView(Protocol):
    """What residency reads of a replica (serve/replicas.py's Replica)."""

    name: str
    hot: _Hot
    vllm_models: frozenset[str] | None

    @property
    def adapter_in_flight(self) -> Mapping[str, int]: ...


def state_of(served: str, replica: ReplicaView) -> str:
    """The residency of one served name (`name@vN`) on one replica."""
    in_vllm = served in replica.hot.loaded or (replica.vllm_models is not None and served in replica.vllm_models)
    if not in_vllm:
        return "registered"
    return "batch_slot" if replica.adapter_in_flight.get(served, 0) > 0 else "cpu_cache"


def registered_versions(registry: Registry) -> list[str]:
    """Every served name in the registry; unreadable entries are left out (`adapters list` shows them)."""
    served = []
    for name in registry.names():
        try:
            served += [f"{name}@{version}" for version in registry.versions(name)]
        except LorafleetError:
            continue
    return served


class ResidencyCollector(Collector):
    """lorafleet_adapter_residency{upstream,adapter,version,state} (1 for the state it is in, 0 for
    the others) and lorafleet_adapters_by_residency{upstream,state} (how many are in each)."""

    def __init__(self, registry: Registry, replicas: Iterable[ReplicaView]) -> None:
        self.registry = registry
        self.replicas = replicas  # the pool's live list: replicas added later are seen too

    def collect(self) -> Iterator[GaugeMetricFamily]:
        each = GaugeMetricFamily("lorafleet_adapter_residency",
                                 "1 for where an adapter version is on an upstream: batch_slot (requests in "
                                 "flight), cpu_cache (loaded in vLLM, idle), registered (not loaded).",
                                 labels=["upstream", "adapter", "version", "state"])
        counts = GaugeMetricFamily("lorafleet_adapters_by_residency",
                                   "Adapter versions per upstream in each residency state.",
                                   labels=["upstream", "state"])
        served_names = registered_versions(self.registry)
        for replica in list(self.replicas):
            tally: Counter[str] = Counter()
            for served in served_names:
                state = state_of(served, replica)
                tally[state] += 1
                name, _, version = served.partition("@")
                for option in STATES:
                    each.add_metric([replica.name, name, version, option], 1.0 if option == state else 0.0)
            for option in STATES:
                counts.add_metric([replica.name, option], float(tally[option]))
        yield each
        yield counts

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # computed at scrape time; nothing to check at registration
