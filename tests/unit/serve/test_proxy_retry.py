"""A replica that cannot be reached gets the request sent to the next healthy one — once, and only
before any byte came back; routing thresholds come from the serve settings. Fake replicas."""

from __future__ import annotations

import json

import httpx
from lorafleet.serve.app import create_app
from lorafleet.serve.config import ServeSettings
from lorafleet.serve.upstream import HttpUpstream

from tests.fakes.openai_upstream import FakeUpstream, dying_upstream
from tests.unit.serve.conftest import BASE
from tests.unit.serve.test_replica_routing import VLLM_METRICS, Fleet, fleet


def _no_leaks(f: Fleet) -> None:
    """Every slot the gateway took on a replica was given back."""
    assert f.gw.state.proxy.in_flight == 0
    for upstream in f.pool.replicas:
        assert upstream.in_flight == 0, upstream.name
        assert not +upstream.adapter_in_flight, (upstream.name, upstream.adapter_in_flight)


def _streamed_text(sse: str) -> str:
    events = [json.loads(line[6:]) for line in sse.splitlines() if line.startswith("data: {")]
    return "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices", []))


# ---- retry on a connection error -----------------------------------------------------------

async def test_refused_connection_goes_to_the_next_replica(serve_settings, key_store, gw_registry) -> None:
    async with fleet(serve_settings, key_store) as f:
        home = f.chooser.ring.home("pirate@v1")
        assert (await f.gw.chat("pirate")).status_code == 200  # loaded and served at home
        f.clear_logs()
        f.switches[home].down = True  # died since the last health check: still marked ready
        assert f.upstream(home).ready
        resp = await f.gw.chat("pirate")
        assert resp.status_code == 200 and resp.json()["model"] == "pirate@v1"
        assert f.switches[home].completion_attempts == 2  # the first request, then the refused one
        assert not f.upstream(home).ready  # routed around from now on
        others = f.served_by("pirate@v1")
        assert len(others) == 1 and others[0] != home
        assert sorted(f.loaded_on("pirate@v1")) == sorted([home, others[0]])  # reloaded on the survivor
        resp = await f.gw.chat("pirate")  # the next request goes straight to the survivor
        assert resp.status_code == 200 and f.switches[home].completion_attempts == 2
        _no_leaks(f)


async def test_an_unreachable_home_at_adapter_load_goes_to_the_next_replica(serve_settings, key_store,
                                                                            gw_registry) -> None:
    async with fleet(serve_settings, key_store) as f:
        home = f.chooser.ring.home("pirate@v1")
        f.switches[home].down = True
        resp = await f.gw.chat("pirate")
        assert resp.status_code == 200 and resp.json()["model"] == "pirate@v1"
        assert f.switches[home].completion_attempts == 0 and not f.upstream(home).ready
        assert len(f.loaded_on("pirate@v1")) == 1 and f.served_by("pirate@v1") == f.loaded_on("pirate@v1")
        _no_leaks(f)


async def test_a_stream_is_retried_when_no_byte_came_back(serve_settings, key_store, gw_registry) -> None:
    async with fleet(serve_settings, key_store) as f:
        home = f.chooser.ring.home("pirate@v1")
        f.switches[home].fail_completions = httpx.ConnectError
        resp = await f.gw.chat("pirate", stream=True)
        assert resp.status_code == 200
        assert _streamed_text(resp.text) == "pirate@v1 says hi"
        assert resp.text.rstrip().endswith("data: [DONE]") and '"error"' not in resp.text
        assert f.switches[home].completion_attempts == 1 and not f.upstream(home).ready
        _no_leaks(f)


async def test_a_replica_dying_before_it_answers_is_retried(serve_settings, key_store, gw_registry) -> None:
    async with fleet(serve_settings, key_store) as f:
        f.switches["r0"].fail_completions = httpx.RemoteProtocolError  # "disconnected without a response"
        f.switches["r0"].die_on_failure = True
        f.switches["r1"].metrics_text = VLLM_METRICS.replace(" 7.0", " 1.0")
        f.switches["r2"].metrics_text = VLLM_METRICS.replace(" 7.0", " 2.0")
        await f.pool.check_all()  # base goes to the least-loaded: r0, then r1 on the retry
        resp = await f.gw.chat(BASE)
        assert resp.status_code == 200 and resp.json()["model"] == BASE
        assert [f.switches[r].completion_attempts for r in ("r0", "r1", "r2")] == [1, 1, 0]
        assert not f.upstream("r0").ready
        _no_leaks(f)


async def test_a_dropped_keep_alive_connection_is_sent_again_to_the_same_replica(serve_settings, key_store,
                                                                                gw_registry) -> None:
    """The replica closed an idle connection just as the gateway reused it; it is alive, so the
    request goes again (fresh connection) and the replica is not marked down."""
    async with fleet(serve_settings, key_store, n=1) as f:
        for error in (httpx.ReadError, httpx.RemoteProtocolError):
            f.switches["r0"].fail_completions, f.switches["r0"].fail_times = error, 1
            f.switches["r0"].completion_attempts = 0
            resp = await f.gw.chat("pirate", stream=True)
            assert resp.status_code == 200 and '"error"' not in resp.text
            assert f.switches["r0"].completion_attempts == 2 and f.upstream("r0").ready
        f.switches["r0"].fail_completions, f.switches["r0"].fail_times = httpx.ReadError, 2
        resp = await f.gw.chat(BASE)  # dropped twice: one resend only, then a clean 502
        assert resp.status_code == 502 and "error" in resp.json()
        _no_leaks(f)


async def test_only_one_retry_then_a_502(serve_settings, key_store, gw_registry) -> None:
    async with fleet(serve_settings, key_store) as f:
        for switch in f.switches.values():
            switch.down = True
        resp = await f.gw.chat(BASE)
        assert resp.status_code == 502
        error = resp.json()["error"]
        assert "unreachable" in error["message"] and set(error) >= {"message", "type", "param", "code"}
        assert sum(s.completion_attempts for s in f.switches.values()) == 2
        resp = await f.gw.chat("pirate")  # an adapter load that cannot reach any replica either
        assert resp.status_code in (502, 503) and "error" in resp.json()
        _no_leaks(f)


async def test_no_retry_when_it_was_the_last_ready_replica(serve_settings, key_store, gw_registry) -> None:
    async with fleet(serve_settings, key_store, n=2) as f:
        f.switches["r1"].down = True
        await f.pool.check_all()
        f.switches["r0"].down = True
        resp = await f.gw.chat(BASE)
        assert resp.status_code == 502 and "error" in resp.json()
        assert [f.switches[r].completion_attempts for r in ("r0", "r1")] == [1, 0]
        _no_leaks(f)


async def test_a_timeout_is_not_retried(serve_settings, key_store, gw_registry) -> None:
    async with fleet(serve_settings, key_store) as f:
        home = f.chooser.ring.home("pirate@v1")
        f.switches[home].fail_completions = httpx.ReadTimeout  # slow is not dead
        resp = await f.gw.chat("pirate")
        assert resp.status_code == 504 and "timed out" in resp.json()["error"]["message"]
        assert sum(s.completion_attempts for s in f.switches.values()) == 1
        assert f.upstream(home).ready
        _no_leaks(f)


async def test_no_retry_once_bytes_were_streamed(serve_settings, key_store, gw_registry) -> None:
    """The first replica streams two pieces then drops the connection: the client gets those
    pieces and one error event; the second replica never sees the request."""
    survivor = FakeUpstream(BASE, api_key=None)
    with dying_upstream(BASE, ["Hello", " there"]) as dying_url, survivor.serve() as survivor_url:
        upstreams = [HttpUpstream("r0", dying_url, None), HttpUpstream("r1", survivor_url, None)]
        app = create_app(serve_settings, upstreams=upstreams, key_store=key_store)
        admin = key_store.create(name="retry-admin", admin=True)[1]
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            body = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "stream": True}
            resp = await client.post("/v1/chat/completions", json=body,
                                     headers={"Authorization": f"Bearer {admin}"})
            assert resp.status_code == 200
            assert '"Hello"' in resp.text and "failed mid-stream" in resp.text
            assert "[DONE]" not in resp.text
            assert survivor.calls("/v1/chat/completions") == []
            replicas = app.state.gateway.pool.replicas
            assert not replicas[0].ready and replicas[1].ready


# ---- thresholds from the settings ----------------------------------------------------------

def test_thresholds_are_read_from_lorafleet_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LORAFLEET_SATURATED_AT", "9")
    monkeypatch.setenv("LORAFLEET_SPREAD_AT", "3")
    monkeypatch.setenv("LORAFLEET_RING_VNODES", "16")
    settings = ServeSettings(data_dir=tmp_path)
    assert (settings.routing.saturated_at, settings.routing.spread_at, settings.routing.ring_vnodes) == (9, 3, 16)
    app = create_app(settings.updated(**{"no_auth": True}),
                     upstreams=[HttpUpstream("a", "http://a", None), HttpUpstream("b", "http://b", None)])
    pool = app.state.gateway.chooser
    assert (pool.saturated_at, pool.spread_at, pool.ring.vnodes) == (9, 3, 16)
    assert len(pool.ring._points) == 32


async def test_saturation_threshold_from_settings_moves_traffic(serve_settings, key_store, gw_registry) -> None:
    # vLLM reports 7 waiting at home: saturated at 5, not at the default 64
    for saturated_at, goes_home in ((64, True), (5, False)):
        settings = serve_settings.updated(**{"saturated_at": saturated_at})
        async with fleet(settings, key_store) as f:
            home = f.chooser.ring.home("pirate@v1")
            f.switches[home].metrics_text = VLLM_METRICS
            await f.pool.check_all()
            assert (await f.gw.chat("pirate")).status_code == 200
            assert (f.served_by("pirate@v1") == [home]) is goes_home


def test_a_bad_threshold_is_one_clear_line(capsys, monkeypatch, tmp_path) -> None:
    from tests.unit.serve.test_cli import run

    monkeypatch.setenv("LORAFLEET_SPREAD_AT", "0")
    code, _, err = run(capsys, "--data-dir", str(tmp_path / "data"), "serve", "--upstream", "http://127.0.0.1:1")
    assert code == 2 and "spread_at" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2
