"""Several replicas: adapters live on a home replica (consistent hashing), fail over when it is
down or saturated, spread when hot, and go home again after recovery. Fake upstreams in-process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from lorafleet.serve.app import create_app
from lorafleet.serve.replicas import Replica
from lorafleet.serve.routing import HashRing
from lorafleet.serve.upstream import HttpUpstream, parse_waiting

from tests.fakes.openai_upstream import FakeUpstream
from tests.unit.serve.conftest import BASE, Harness, register_dummy

VLLM_METRICS = """# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="base-model"} 7.0
vllm:num_requests_running{engine="0",model_name="base-model"} 3.0
"""


class Switch(httpx.AsyncBaseTransport):
    """A fake upstream that can be 'killed' (connection refused) and can publish vLLM's /metrics.

    `fail_completions`: an httpx error class raised for completion requests only (`fail_times`
    times), so health checks still pass; with `die_on_failure` the replica is down from then on.
    `completion_attempts` counts completion requests.
    """

    def __init__(self, fake: FakeUpstream) -> None:
        self.inner = fake.transport()
        self.down = False
        self.metrics_text: str | None = None
        self.fail_completions: type[httpx.TransportError] | None = None
        self.fail_times = 1_000_000
        self.die_on_failure = False
        self.completion_attempts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("completions"):
            self.completion_attempts += 1
            if self.fail_completions is not None and self.fail_times > 0:
                self.fail_times -= 1
                self.down = self.down or self.die_on_failure
                raise self.fail_completions("replica failed", request=request)
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/metrics" and self.metrics_text is not None:
            return httpx.Response(200, text=self.metrics_text)
        return await self.inner.handle_async_request(request)


class Fleet:
    def __init__(self, harness: Harness, fakes: dict[str, FakeUpstream], switches: dict[str, Switch]) -> None:
        self.gw = harness
        self.fakes = fakes
        self.switches = switches

    @property
    def pool(self):
        return self.gw.state.pool

    @property
    def chooser(self):
        return self.gw.state.chooser

    def upstream(self, name: str) -> Replica:
        return next(u for u in self.pool.replicas if u.name == name)

    def served_by(self, name: str) -> list[str]:
        """Replicas whose fake received a chat completion for `name` (a base or served name)."""
        return [r for r, f in self.fakes.items() if any(c.body.get("model") == name
                                                        for c in f.calls("/v1/chat/completions"))]

    def loaded_on(self, served: str) -> list[str]:
        return [r for r, f in self.fakes.items() if served in f.loaded]

    def clear_logs(self) -> None:
        for fake in self.fakes.values():
            fake.log.clear()

    async def set_down(self, name: str, down: bool) -> None:
        self.switches[name].down = down
        if not down:
            self.fakes[name].restart()  # a replica that comes back has lost its adapters
        await self.pool.check_all()


@contextlib.asynccontextmanager
async def fleet(settings, keys, n: int = 3) -> AsyncIterator[Fleet]:
    fakes = {f"r{i}": FakeUpstream(BASE, api_key="upstream-key") for i in range(n)}
    switches = {name: Switch(fake) for name, fake in fakes.items()}
    upstreams = [HttpUpstream(name, f"http://{name}", "upstream-key", transport=switches[name]) for name in fakes]
    app = create_app(settings, upstreams=upstreams, key_store=keys)
    admin = keys.create(name="admin-" + str(id(app)), admin=True)[1]
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                                                   base_url="http://gateway") as client:
        yield Fleet(Harness(client, app.state.gateway, keys, fakes["r0"], admin), fakes, switches)


# ---- the ring alone --------------------------------------------------------------------------

def test_ring_homes_are_stable_when_a_replica_is_added_or_removed() -> None:
    keys = [f"adapter-{i}@v1" for i in range(400)]
    ring = HashRing(["r0", "r1", "r2"])
    before = {k: ring.home(k) for k in keys}
    ring.add("r3")
    after = {k: ring.home(k) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "r3" for k in moved)  # keys only move to the newcomer
    assert 0 < len(moved) < len(keys) / 2
    ring.remove("r3")
    assert {k: ring.home(k) for k in keys} == before
    ring.remove("r1")
    assert all(ring.home(k) == before[k] for k in keys if before[k] != "r1")


def test_ring_spreads_adapters_over_replicas_and_orders_every_replica_once() -> None:
    ring = HashRing(["r0", "r1", "r2", "r3"])
    counts = {n: 0 for n in ring.nodes}
    for i in range(800):
        counts[ring.home(f"a{i}@v1")] += 1
    assert all(100 < c < 350 for c in counts.values()), counts
    order = ring.preference("x@v1")
    assert sorted(order) == ["r0", "r1", "r2", "r3"] and order[0] == ring.home("x@v1")
    assert HashRing().preference("x") == []


def test_parse_waiting_reads_vllm_queue_depth() -> None:
    assert parse_waiting(VLLM_METRICS) == 7
    assert parse_waiting("vllm:num_requests_running 3\n") is None
    assert parse_waiting("vllm:num_requests_waiting{a=\"1\"} 2\nvllm:num_requests_waiting{a=\"2\"} 3\n") == 5


# ---- the gateway in front of three fake replicas ---------------------------------------------

async def test_an_adapter_is_loaded_and_served_on_its_home_only(serve_settings, key_store, gw_registry) -> None:
    async with fleet(serve_settings, key_store) as f:
        for _ in range(4):
            assert (await f.gw.chat("pirate")).status_code == 200
        home = f.chooser.ring.home("pirate@v1")
        assert f.loaded_on("pirate@v1") == [home]
        assert f.served_by("pirate@v1") == [home]


async def test_adapters_are_distributed_over_replicas(serve_settings, key_store, gw_registry, tmp_path) -> None:
    names = [f"ad{i}" for i in range(9)]
    for name in names:
        register_dummy(gw_registry, name, tmp_path)
    async with fleet(serve_settings, key_store) as f:
        for name in names:
            assert (await f.gw.chat(name)).status_code == 200
        homes = {name: f.chooser.ring.home(f"{name}@v1") for name in names}
        for name in names:
            assert f.loaded_on(f"{name}@v1") == [homes[name]]
        assert len(set(homes.values())) >= 2


async def test_failover_when_home_is_down_then_rehome_after_recovery(serve_settings, key_store, gw_registry) -> None:
    async with fleet(serve_settings, key_store) as f:
        home = f.chooser.ring.home("pirate@v1")
        await f.set_down(home, True)
        assert not f.upstream(home).ready
        f.clear_logs()
        for _ in range(3):
            assert (await f.gw.chat("pirate")).status_code == 200
        elsewhere = f.served_by("pirate@v1")
        assert len(elsewhere) == 1 and elsewhere[0] != home  # reloaded once, on one other replica
        assert f.loaded_on("pirate@v1") == elsewhere

        await f.set_down(home, False)
        assert f.upstream(home).ready
        f.clear_logs()
        assert (await f.gw.chat("pirate")).status_code == 200
        assert f.served_by("pirate@v1") == [home]
        assert "pirate@v1" in f.fakes[home].loaded


async def test_every_replica_down_is_503(serve_settings, key_store, gw_registry) -> None:
    async with fleet(serve_settings, key_store, n=2) as f:
        for name in list(f.fakes):
            await f.set_down(name, True)
        resp = await f.gw.chat("pirate")
        assert resp.status_code == 503
        assert "error" in resp.json()


async def test_spill_over_when_home_queue_is_saturated(serve_settings, key_store, gw_registry) -> None:
    async with fleet(serve_settings, key_store) as f:
        home = f.chooser.ring.home("pirate@v1")
        f.chooser.saturated_at = 5
        f.switches[home].metrics_text = VLLM_METRICS  # vLLM reports 7 waiting
        await f.pool.check_all()
        assert f.upstream(home).waiting == 7
        assert (await f.gw.chat("pirate")).status_code == 200
        assert f.served_by("pirate@v1") not in ([], [home])

        f.switches[home].metrics_text = VLLM_METRICS.replace(" 7.0", " 0.0")
        await f.pool.check_all()
        f.clear_logs()
        assert (await f.gw.chat("pirate")).status_code == 200
        assert f.served_by("pirate@v1") == [home]


async def test_a_hot_adapter_spreads_over_a_second_replica_only(serve_settings, key_store, gw_registry) -> None:
    async with fleet(serve_settings, key_store) as f:
        f.chooser.spread_at = 2
        for fake in f.fakes.values():
            fake.load_delay = 0.2  # keeps requests in flight together
        results = await asyncio.gather(*(f.gw.chat("pirate") for _ in range(8)))
        assert all(r.status_code == 200 for r in results)
        order = [u.name for u in f.chooser.home_order("pirate@v1")]
        assert sorted(f.served_by("pirate@v1")) == sorted(order[:2])
        assert order[2] not in f.loaded_on("pirate@v1")


async def test_base_requests_go_to_the_least_loaded_replica(serve_settings, key_store, gw_registry) -> None:
    async with fleet(serve_settings, key_store) as f:
        f.switches["r0"].metrics_text = VLLM_METRICS.replace(" 7.0", " 5.0")
        f.switches["r2"].metrics_text = VLLM_METRICS.replace(" 7.0", " 3.0")
        await f.pool.check_all()
        assert (await f.gw.chat(BASE)).status_code == 200
        assert f.served_by(BASE) == ["r1"]
        await f.set_down("r1", True)
        f.clear_logs()
        assert (await f.gw.chat(BASE)).status_code == 200
        assert f.served_by(BASE) == ["r2"]


# ---- --replicas N: local children under the same supervisor code (the fake as the program) ----

async def test_replicas_start_children_and_route_around_a_killed_one(serve_settings, key_store, gw_registry,
                                                                      tmp_path) -> None:
    import sys

    from lorafleet.cli.serve import create_replicated_app

    program = [sys.executable, "-m", "tests.fakes.openai_upstream"]
    settings = serve_settings.updated(**{"vllm_program": program, "base": tmp_path})
    app = create_replicated_app(settings, 2, key_store=key_store)
    admin = key_store.create(name="rep-admin", admin=True)[1]
    state = app.state.gateway
    auth = {"Authorization": f"Bearer {admin}"}
    body = {"model": "pirate", "messages": [{"role": "user", "content": "x"}]}
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                                                   base_url="http://gw") as client:
        sups = {s.replica.name: s for s in state.supervisor.supervisors}
        assert sorted(sups) == ["local0", "local1"]
        assert len({s.launch.port for s in sups.values()}) == 2
        assert (await client.post("/v1/chat/completions", json=body, headers=auth)).status_code == 200
        home = state.chooser.ring.home("pirate@v1")
        other = next(n for n in sups if n != home)
        assert "pirate@v1" in await sups[home].replica.upstream.model_ids()
        assert "pirate@v1" not in await sups[other].replica.upstream.model_ids()

        sups[home].process.kill()
        sups[home].process.proc.wait(10)
        await state.pool.check_all()  # the health loop would notice within health_interval
        resp = await client.post("/v1/chat/completions", json=body, headers=auth)
        assert resp.status_code == 200 and resp.json()["model"] == "pirate@v1"
        assert "pirate@v1" in await sups[other].replica.upstream.model_ids()  # reloaded on the survivor
    assert not any(s.process.alive() for s in sups.values())


def test_replicas_with_upstream_is_one_clear_line(capsys, tmp_path) -> None:
    from tests.unit.serve.test_cli import run

    code, _, err = run(capsys, "--data-dir", str(tmp_path / "data"), "serve", "--replicas", "2",
                       "--upstream", "http://127.0.0.1:1")
    assert code == 2 and err.startswith("error:") and "--replicas" in err and "Traceback" not in err
    code, _, err = run(capsys, "--data-dir", str(tmp_path / "data"), "serve", "--replicas", "2",
                       "--base", str(tmp_path))
    assert code == 2 and "no base model here" in err and "Traceback" not in err
