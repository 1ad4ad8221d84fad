"""Every answer is counted in lorafleet_requests_total, the refusals too (issue 18 §5): the 5xx and
auth alerts read it."""

from __future__ import annotations

import asyncio

from lorafleet.serve.config import ServeSettings
from lorafleet.serve.keys import KeyStore
from lorafleet.serve.metrics import endpoint_label
from prometheus_client import CollectorRegistry

from tests.fakes.openai_upstream import FakeUpstream
from tests.unit.serve.conftest import BASE, Harness, running
from tests.waiting import until


def requests_total(registry: CollectorRegistry, **labels: str) -> float:
    """Sum of lorafleet_requests_total over the series matching `labels`."""
    total = 0.0
    for family in registry.collect():
        if family.name != "lorafleet_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def test_repro_401_counted(gw: Harness) -> None:
    resp = await gw.client.post("/v1/chat/completions", json={"model": BASE, "messages": []})
    assert resp.status_code == 401
    resp = await gw.client.get("/v1/models", headers={"Authorization": "Bearer lf-wrong"})
    assert resp.status_code == 401
    registry = gw.state.metrics_registry
    assert requests_total(registry, endpoint="chat", status="401", adapter="unknown") == 1
    assert requests_total(registry, endpoint="models", status="401") == 1


async def test_repro_403_counted(gw: Harness) -> None:
    resp = await gw.chat("pirate", key=gw.key("clauses"))
    assert resp.status_code == 403
    resp = await gw.client.post("/admin/registry/reload", headers={"Authorization": f"Bearer {gw.key()}"})
    assert resp.status_code == 403
    registry = gw.state.metrics_registry
    assert requests_total(registry, endpoint="chat", status="403") == 1
    assert requests_total(registry, endpoint="admin", status="403") == 1


async def test_repro_429_counted(gw: Harness) -> None:
    key = gw.key(rpm=1)
    first, second = await gw.chat(BASE, key=key), await gw.chat(BASE, key=key)
    assert (first.status_code, second.status_code) == (200, 429)
    assert requests_total(gw.state.metrics_registry, endpoint="chat", status="429") == 1


async def test_repro_overload_503_counted(serve_settings: ServeSettings, fake: FakeUpstream,
                                          key_store: KeyStore, gw_registry) -> None:
    settings = serve_settings.updated(**{"max_in_flight": 1})
    fake.load_gate = asyncio.Event()  # the first request holds the only slot while its adapter loads
    async with running(settings, fake, key_store) as gw:
        loading = asyncio.create_task(gw.chat("pirate"))
        await until(lambda: fake.calls("/v1/load_lora_adapter"), "the first request loading its adapter")
        second = await gw.chat(BASE)
        fake.load_gate.set()
        first = await loading
        assert (first.status_code, second.status_code) == (200, 503)
        registry = gw.state.metrics_registry
        assert requests_total(registry, endpoint="chat", status="503") == 1
        assert requests_total(registry, endpoint="chat", status="200", adapter="pirate") == 1


async def test_413_and_unknown_route_counted(gw: Harness) -> None:
    big = b" " * (gw.state.settings.auth.max_body_bytes + 1)
    resp = await gw.client.post("/v1/completions", content=big, headers={"Authorization": f"Bearer {gw.admin}"})
    assert resp.status_code == 413
    assert (await gw.client.get("/v1/nothing")).status_code == 404
    registry = gw.state.metrics_registry
    assert requests_total(registry, endpoint="completions", status="413") == 1
    assert requests_total(registry, endpoint="other", status="404") == 1


async def test_answers_are_counted_once(gw: Harness) -> None:
    assert (await gw.chat(BASE)).status_code == 200
    assert (await gw.chat("no-such-adapter")).status_code == 404
    registry = gw.state.metrics_registry
    assert requests_total(registry, endpoint="chat") == 2


def test_endpoint_labels_are_bounded() -> None:
    assert endpoint_label("/admin/adapters/load") == "admin"
    assert endpoint_label("/v1/chat/completions") == "chat"
    assert endpoint_label("/wp-login.php") == "other"
