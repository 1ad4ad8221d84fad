"""The vLLM child: launch line and env, and the supervisor restarting a dead child and replaying
its adapters (with the fake upstream started as a process, exactly like vLLM)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
from lorafleet.serve.vllm_child import VllmLaunch

FAKE_PROGRAM = [sys.executable, "-m", "tests.fakes.openai_upstream"]


def test_launch_line_and_env() -> None:
    launch = VllmLaunch(model=Path("/m"), served_name="b", port=1234, api_key="k", max_loras=3,
                        max_lora_rank=32, lora_plugin=False, extra_args=["--dtype", "bfloat16"])
    cmd = launch.command()
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(cmd)
    for part in ["--model /m", "--served-model-name b", "--host 127.0.0.1", "--port 1234",
                 "--enable-lora", "--max-lora-rank 32", "--max-loras 3", "--dtype bfloat16"]:
        assert part in joined
    # The key never goes on argv (readable by any local user in /proc/*/cmdline), only in the child's env;
    # a random key starting with '-' also broke argparse there.
    assert "k" not in cmd and "--api-key" not in joined
    env = launch.env()
    assert env["VLLM_API_KEY"] == "k"
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["LORAFLEET_LORA_PLUGIN"] == "0"
    assert VllmLaunch(model=Path("/m"), served_name="b").env()["LORAFLEET_LORA_PLUGIN"] == "1"


async def _until(predicate, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_dead_child_is_restarted_and_adapters_replayed(serve_settings, key_store, gw_registry,
                                                             tmp_path) -> None:
    settings = serve_settings.updated(**{"vllm_program": FAKE_PROGRAM, "base": tmp_path,
                                                 "health_interval": 0.1})
    # upstream_url=None and no upstreams: build the app in child mode
    from lorafleet.serve.app import create_app

    app = create_app(settings, key_store=key_store)
    admin = key_store.create(name="sup-admin", admin=True)[1]
    state = app.state.gateway
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport,
                                                                   base_url="http://gw") as client:
        auth = {"Authorization": f"Bearer {admin}"}
        body = {"model": "pirate", "messages": [{"role": "user", "content": "x"}]}
        assert (await client.post("/v1/chat/completions", json=body, headers=auth)).status_code == 200
        first_pid = state.supervisor.process.pid
        upstream = state.pool.replicas[0].upstream
        assert "pirate@v1" in await upstream.model_ids()

        state.supervisor.process.kill()

        async def down() -> bool:
            return (await client.get("/ready")).status_code == 503

        await _until(down)
        resp = await client.post("/v1/chat/completions", json=body, headers=auth)
        assert resp.status_code in (502, 503) and resp.json()["error"]["code"] == "upstream_unavailable"

        async def ready() -> bool:
            return (await client.get("/ready")).status_code == 200

        await _until(ready)
        assert state.supervisor.process.pid != first_pid
        assert state.supervisor.restarts == 1
        assert "pirate@v1" in await upstream.model_ids()  # replayed into the new process
        resp = await client.post("/v1/chat/completions", json=body, headers=auth)
        assert resp.status_code == 200 and resp.json()["model"] == "pirate@v1"
    assert not state.supervisor.process.alive()
