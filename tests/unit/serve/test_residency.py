"""Adapter residency per upstream and routing decisions, as metrics (issue 18 §5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from lorafleet.serve.residency import state_of
from lorafleet.serve.routing import ReplicaChooser, Target
from prometheus_client import CollectorRegistry

from tests.unit.serve.conftest import BASE, Harness


@dataclass
class Hot:
    loaded: dict[str, object] = field(default_factory=dict)


@dataclass
class FakeReplica:
    name: str = "u0"
    hot: Hot = field(default_factory=Hot)
    vllm_models: frozenset[str] | None = None
    adapter_in_flight: dict[str, int] = field(default_factory=dict)


def test_state_of() -> None:
    replica = FakeReplica(hot=Hot({"a@v1": "/p", "b@v1": "/p"}), vllm_models=frozenset({"base", "a@v1", "c@v2"}),
                          adapter_in_flight={"a@v1": 2})
    assert state_of("a@v1", replica) == "batch_slot"
    assert state_of("b@v1", replica) == "cpu_cache"  # the gateway loaded it; vLLM's list is older
    assert state_of("c@v2", replica) == "cpu_cache"  # vLLM has it (loaded before a gateway restart)
    assert state_of("d@v1", replica) == "registered"


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    for family in registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


async def test_residency_gauges_on_metrics(gw: Harness) -> None:
    assert (await gw.chat("pirate")).status_code == 200
    await gw.state.pool.check_all()  # the health check reads vLLM's /v1/models
    registry = gw.state.metrics_registry
    residency = "lorafleet_adapter_residency"
    assert sample(registry, residency, upstream="u0", adapter="pirate", version="v1", state="cpu_cache") == 1
    assert sample(registry, residency, upstream="u0", adapter="pirate", version="v1", state="registered") == 0
    assert sample(registry, residency, upstream="u0", adapter="clauses", version="v1", state="registered") == 1
    counts = "lorafleet_adapters_by_residency"
    assert sample(registry, counts, upstream="u0", state="cpu_cache") == 1
    assert sample(registry, counts, upstream="u0", state="registered") == 3  # clauses, support-intents v1 and v2
    text = (await gw.client.get("/metrics")).text
    assert 'lorafleet_adapter_residency{adapter="pirate",state="cpu_cache",upstream="u0",version="v1"} 1.0' in text


async def test_routing_decisions_counted(gw: Harness) -> None:
    assert (await gw.chat(BASE)).status_code == 200
    assert (await gw.chat("pirate")).status_code == 200
    assert (await gw.chat("pirate")).status_code == 200
    registry = gw.state.metrics_registry
    decisions = "lorafleet_routing_decisions_total"
    assert sample(registry, decisions, upstream="u0", decision="base") == 1
    assert sample(registry, decisions, upstream="u0", decision="home") == 2


@dataclass
class RoutedReplica:
    name: str
    ready: bool = True
    variant: str = "base"
    in_flight: int = 0
    waiting: int = 0
    adapter_in_flight: dict[str, int] = field(default_factory=dict)

    @property
    def hot(self):
        return self

    def holds(self, served: str) -> bool:
        return False


def test_spill_and_spread_are_told_apart() -> None:
    replicas = [RoutedReplica("r0"), RoutedReplica("r1"), RoutedReplica("r2")]
    chooser = ReplicaChooser(replicas, spread_at=2)  # type: ignore[arg-type]
    seen: list[tuple[str, str]] = []
    chooser.on_decision = lambda replica, why: seen.append((replica, why))
    served = "pirate@v1"
    adapter = Target(served, "pirate", "v1", adapter_ref=SimpleNamespace(path=Path("/x")))  # type: ignore[arg-type]
    home = chooser.home_order(served)[0]
    assert chooser.pick(adapter) is home and seen[-1] == (home.name, "home")
    home.adapter_in_flight[served] = 2  # hot: shared with its ring successor
    chooser.pick(adapter)
    assert seen[-1][1] == "spread"
    home.ready = False  # down: the request spills to another replica
    assert chooser.pick(adapter) is not home and seen[-1][1] == "spill"
    assert chooser.pick(Target(BASE, "base", "-")) and seen[-1][1] == "base"
