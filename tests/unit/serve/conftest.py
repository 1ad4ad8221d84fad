"""Gateway under test: the real app, in-process, in front of the fake vLLM upstream."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from lorafleet.serve.app import create_app
from lorafleet.serve.config import ServeSettings
from lorafleet.serve.keys import KeyStore
from lorafleet.serve.state import GatewayState
from lorafleet.serve.upstream import HttpUpstream

from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo
from lorafleet.registry import Registry
from tests.fakes.openai_upstream import FakeUpstream

BASE = "base-model"


def register_dummy(registry: Registry, name: str, tmp: Path, times: int = 1) -> None:
    """Register `times` versions of an adapter whose files only the fake upstream sees."""
    src = tmp / f"src-{name}"
    src.mkdir(exist_ok=True)
    (src / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}')
    (src / "adapter_model.safetensors").write_bytes(b"not really weights")
    for _ in range(times):
        card = AdapterCard(name=name, version="v1", base=BaseModelRef(id=BASE),
                           lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj"]))
        registry.register(name, src, card)


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream(BASE, api_key="upstream-key")


@pytest.fixture
def serve_settings(tmp_path: Path) -> ServeSettings:
    data = tmp_path / "data"
    data.mkdir()
    return ServeSettings(data_dir=data, base_name=BASE, probe=False, health_interval=3600, key_cache_ttl=0,
                         registry_ttl=0, hot_set=4)


@pytest.fixture
def gw_registry(serve_settings: ServeSettings, tmp_path: Path) -> Registry:
    registry = Registry(serve_settings.registry_dir)
    register_dummy(registry, "support-intents", tmp_path, times=2)
    register_dummy(registry, "clauses", tmp_path)
    register_dummy(registry, "pirate", tmp_path)
    registry.set_alias("support-intents", "prod", "v1")
    return registry


@pytest.fixture
def key_store(serve_settings: ServeSettings) -> KeyStore:
    return KeyStore(serve_settings.db_url)


@dataclass
class Harness:
    client: httpx.AsyncClient
    state: GatewayState
    keys: KeyStore
    fake: FakeUpstream
    admin: str

    def key(self, adapters: str = "*", **kwargs: Any) -> str:
        import uuid

        return self.keys.create(name=f"k-{uuid.uuid4().hex[:8]}", adapters=adapters, **kwargs)[1]

    async def chat(self, model: str, key: str | None = None, **body: Any) -> httpx.Response:
        payload = {"model": model, "messages": [{"role": "user", "content": "hi"}], **body}
        return await self.client.post("/v1/chat/completions", json=payload,
                                      headers={"Authorization": f"Bearer {key or self.admin}"})


@contextlib.asynccontextmanager
async def running(settings: ServeSettings, fake: FakeUpstream, keys: KeyStore,
                  upstream_url: str | None = None, **app_kwargs: Any) -> AsyncIterator[Harness]:
    """The app with its lifespan running; upstream in-process unless `upstream_url` is given."""
    transport = None if upstream_url else fake.transport()
    upstream = HttpUpstream("u0", upstream_url or "http://fake-vllm", fake.api_key, transport=transport)
    app = create_app(settings, upstreams=[upstream], key_store=keys, **app_kwargs)
    admin = keys.create(name="admin-" + str(id(app)), admin=True)[1]
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport,
                                                                   base_url="http://gateway") as client:
        yield Harness(client, app.state.gateway, keys, fake, admin)


@pytest.fixture
async def gw(serve_settings: ServeSettings, fake: FakeUpstream, key_store: KeyStore,
             gw_registry: Registry) -> AsyncIterator[Harness]:
    async with running(serve_settings, fake, key_store) as harness:
        yield harness


@contextlib.contextmanager
def gateway_on_loopback(settings: ServeSettings, upstream_url: str, api_key: str | None, keys: KeyStore):
    """The app under real uvicorn on 127.0.0.1 (a thread), so streaming is end-to-end; yields (url, admin)."""
    import threading
    import time

    import uvicorn

    upstream = HttpUpstream("u0", upstream_url, api_key)
    app = create_app(settings, upstreams=[upstream], key_store=keys)
    admin = keys.create(name="admin-" + str(id(app)), admin=True)[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("gateway failed to start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", admin, app.state.gateway
    finally:
        server.should_exit = True
        thread.join(15)
