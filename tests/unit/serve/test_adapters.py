"""Adapter lifecycle: single-flight loads, LRU unloads, pins, replay after a restart, the probe."""

from __future__ import annotations

import asyncio

from lorafleet.serve.upstream import UpstreamError

from tests.unit.serve.conftest import BASE, Harness, register_dummy, running


def _loads(gw: Harness) -> list[str]:
    return [c.body["lora_name"] for c in gw.fake.calls("/v1/load_lora_adapter")]


def _unloads(gw: Harness) -> list[str]:
    return [c.body["lora_name"] for c in gw.fake.calls("/v1/unload_lora_adapter")]


async def test_concurrent_first_requests_trigger_one_load(gw: Harness) -> None:
    gw.fake.load_delay = 0.2
    results = await asyncio.gather(*(gw.chat("pirate") for _ in range(8)))
    assert all(r.status_code == 200 for r in results)
    assert _loads(gw) == ["pirate@v1"]
    assert len(gw.fake.calls("/v1/chat/completions")) == 8


async def test_lru_unloads_the_least_recently_used(serve_settings, fake, key_store, gw_registry, tmp_path) -> None:
    register_dummy(gw_registry, "d", tmp_path)
    settings = serve_settings.updated(**{"hot_set": 2})
    async with running(settings, fake, key_store) as gw:
        for model in ["pirate", "clauses", "pirate", "d"]:
            assert (await gw.chat(model)).status_code == 200
        assert _unloads(gw) == ["clauses@v1"]
        assert list(gw.state.hot_sets["u0"].loaded) == ["pirate@v1", "d@v1"]
        assert set(fake.loaded) == {"pirate@v1", "d@v1"}
        metrics = (await gw.client.get("/metrics")).text
        assert 'lorafleet_hot_set_size{upstream="u0"} 2.0' in metrics
        assert 'lorafleet_adapter_unloads_total{upstream="u0"} 1.0' in metrics


async def test_pinned_adapters_are_never_evicted(serve_settings, fake, key_store, gw_registry, tmp_path) -> None:
    register_dummy(gw_registry, "d", tmp_path)
    settings = serve_settings.updated(**{"hot_set": 2, "pins": ["pirate"]})
    async with running(settings, fake, key_store) as gw:
        assert _loads(gw) == ["pirate@v1"]  # loaded at start
        for model in ["clauses", "d", "clauses"]:
            assert (await gw.chat(model)).status_code == 200
        assert "pirate@v1" not in _unloads(gw)
        assert "pirate@v1" in fake.loaded


async def test_admin_load_pin_unload(gw: Harness) -> None:
    auth = {"Authorization": f"Bearer {gw.admin}"}
    resp = await gw.client.post("/admin/adapters/pin", json={"model": "clauses"}, headers=auth)
    assert resp.json() == {"pinned": "clauses@v1"}
    listing = (await gw.client.get("/admin/adapters", headers=auth)).json()["upstreams"][0]
    assert listing["loaded"] == ["clauses@v1"] and listing["pinned"] == ["clauses@v1"]
    resp = await gw.client.post("/admin/adapters/unload", json={"model": "clauses@v1"}, headers=auth)
    assert resp.status_code == 200 and "clauses@v1" not in gw.fake.loaded
    resp = await gw.client.post("/admin/adapters/unload", json={"model": "clauses@v1"}, headers=auth)
    assert resp.status_code == 404
    resp = await gw.client.post("/admin/adapters/load", json={"model": "nope"}, headers=auth)
    assert resp.status_code == 404
    resp = await gw.client.post("/admin/adapters/load", json={"model": "pirate", "upstream": "zz"}, headers=auth)
    assert resp.status_code == 404
    resp = await gw.client.post("/admin/adapters/load", json={"modle": "pirate"}, headers=auth)
    assert resp.status_code == 400 and resp.json()["error"]["param"]


async def test_registry_reload_picks_up_new_versions(gw: Harness, tmp_path) -> None:
    gw.state.router.ttl = 3600
    assert (await gw.chat("pirate")).json()["model"] == "pirate@v1"
    register_dummy(gw.state.registry, "pirate", tmp_path)
    # `latest` moved: the aliases file changed, so the cached resolution is dropped at once
    assert (await gw.chat("pirate")).json()["model"] == "pirate@v2"
    resp = await gw.client.post("/admin/registry/reload", headers={"Authorization": f"Bearer {gw.admin}"})
    assert resp.status_code == 200
    assert (await gw.chat("pirate")).json()["model"] == "pirate@v2"


async def test_restart_replays_loaded_adapters_before_ready(gw: Harness) -> None:
    await gw.chat("pirate")
    await gw.chat("clauses")
    gw.fake.restart()
    assert gw.fake.loaded == {}
    await gw.state.pool.check_all()
    assert set(gw.fake.loaded) == {"pirate@v1", "clauses@v1"}
    assert gw.state.pool.replicas[0].ready
    metrics = (await gw.client.get("/metrics")).text
    assert 'lorafleet_adapter_loads_total{result="replay",upstream="u0"} 2.0' in metrics


async def test_adapter_lost_between_health_checks_is_reloaded_once(gw: Harness) -> None:
    await gw.chat("pirate")
    gw.fake.restart()  # the health loop has not noticed yet
    resp = await gw.chat("pirate")
    assert resp.status_code == 200 and resp.json()["model"] == "pirate@v1"
    assert _loads(gw) == ["pirate@v1", "pirate@v1"]


async def test_upstream_unreachable_marks_not_ready_and_recovers(gw: Harness) -> None:
    replica = gw.state.pool.replicas[0]
    upstream = replica.upstream

    async def down(*_a, **_k):
        raise UpstreamError("unreachable", status=503)

    real = upstream.model_ids
    upstream.model_ids = down  # type: ignore[method-assign]
    await gw.state.pool.check_all()
    assert not replica.ready and (await gw.client.get("/ready")).status_code == 503
    upstream.model_ids = real  # type: ignore[method-assign]
    await gw.state.pool.check_all()
    assert (await gw.client.get("/ready")).status_code == 200


async def test_probe_warns_when_adapter_output_equals_base(serve_settings, fake, key_store, gw_registry) -> None:
    settings = serve_settings.updated(**{"probe": True})
    async with running(settings, fake, key_store) as gw:
        hot = gw.state.hot_sets["u0"]
        await gw.chat("pirate")
        assert await hot.probe("pirate@v1") is True
        fake.same_output = True
        hot._base_probe = None
        assert await hot.probe("pirate@v1") is False
        metrics = (await gw.client.get("/metrics")).text
        assert 'lorafleet_probe_warnings_total{adapter="pirate",version="v1"} 1.0' in metrics
        probe_calls = [c for c in fake.calls("/v1/chat/completions") if c.body.get("max_tokens") == 8]
        assert {c.body["model"] for c in probe_calls} == {BASE, "pirate@v1"}


async def test_repro_after_load_probe_waits_until_the_loads_requests_are_done(serve_settings, fake, key_store) -> None:
    """The probe's two greedy chats ran beside the request that triggered the load, joined its batch and
    delayed a cold adapter's first token; now they start once that adapter has no request in flight."""
    settings = serve_settings.updated(**{"probe": True})
    async with running(settings, fake, key_store) as gw:
        hot = gw.state.hot_sets["u0"]
        busy = gw.state.pool.replicas[0]._adapter_in_flight
        busy["pirate@v1"] += 1  # a request for it still streaming
        probe = asyncio.create_task(hot.probe_when_idle("pirate@v1"))
        await asyncio.sleep(0.3)
        assert not probe.done() and not fake.calls("/v1/chat/completions")
        del busy["pirate@v1"]
        assert await asyncio.wait_for(probe, 5) is True
        assert {c.body["model"] for c in fake.calls("/v1/chat/completions")} == {BASE, "pirate@v1"}
