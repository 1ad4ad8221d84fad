"""Streaming end to end on loopback: SSE passed through chunk by chunk, usage handling, an upstream
that dies mid-stream, and the official openai client."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from lorafleet.serve.protocol import ApiError
from lorafleet.serve.proxy import _unless_disconnected

from tests.fakes.openai_upstream import FakeUpstream, dying_upstream
from tests.unit.serve.conftest import BASE, gateway_on_loopback


@pytest.fixture
def live(serve_settings, key_store, gw_registry):
    fake = FakeUpstream(BASE, api_key="upstream-key")
    with fake.serve() as url, gateway_on_loopback(serve_settings, url, fake.api_key, key_store) as (gw, admin, st):
        yield fake, gw, admin, st


def _events(lines) -> list[str]:
    return [line[6:] for line in lines if line.startswith("data: ")]


def _stream_body(model: str, **extra) -> dict:
    return {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_chunks_arrive_before_the_upstream_finishes(live) -> None:
    fake, gw, admin, _ = live
    fake.enqueue("one two three four", pause_after=2)
    with httpx.stream("POST", f"{gw}/v1/chat/completions", json=_stream_body("pirate"),
                      headers={"Authorization": f"Bearer {admin}"}, timeout=30) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = resp.iter_lines()
        got = []
        while len(got) < 2:
            line = next(lines)
            if line.startswith("data: "):
                got.append(json.loads(line[6:])["choices"][0]["delta"]["content"])
        assert got == ["one", " two"]
        fake.release()  # only now does the upstream send the rest
        rest = _events(lines)
    assert not fake.gate_timed_out, "the gateway held chunks back until the upstream finished"
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in rest[:-1]] == [" three", " four"]
    assert rest[-1] == "[DONE]"


def test_usage_chunk_only_when_the_client_asked(live) -> None:
    fake, gw, admin, state = live
    auth = {"Authorization": f"Bearer {admin}"}
    plain = httpx.post(f"{gw}/v1/chat/completions", json=_stream_body("clauses"), headers=auth, timeout=30)
    events = _events(plain.text.splitlines())
    assert all("usage" not in json.loads(e) for e in events[:-1])
    # the gateway asked upstream for usage anyway, to count tokens
    assert fake.calls("/v1/chat/completions")[-1].body["stream_options"] == {"include_usage": True}
    asked = httpx.post(f"{gw}/v1/chat/completions", headers=auth, timeout=30,
                       json=_stream_body("clauses", stream_options={"include_usage": True}))
    assert json.loads(_events(asked.text.splitlines())[-2])["usage"]["completion_tokens"] == 3
    text = httpx.get(f"{gw}/metrics").text
    assert 'lorafleet_completion_tokens_total{adapter="clauses",version="v1"} 6.0' in text
    assert 'lorafleet_time_to_first_token_seconds_count{adapter="clauses",version="v1"} 2.0' in text


def test_upstream_dying_mid_stream_gives_a_clean_error(serve_settings, key_store, gw_registry) -> None:
    with dying_upstream(BASE, ["a", " b"]) as url, \
            gateway_on_loopback(serve_settings, url, None, key_store) as (gw, admin, state):
        client = openai.OpenAI(base_url=f"{gw}/v1", api_key=admin, max_retries=0)
        stream = client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "x"}],
                                                stream=True)
        pieces = []
        with pytest.raises(openai.APIError, match="mid-stream"):
            for chunk in stream:
                pieces.append(chunk.choices[0].delta.content)
        assert pieces == ["a", " b"]
        assert not state.pool.replicas[0].ready  # until the health loop sees it answer again
        text = httpx.get(f"{gw}/metrics").text
        assert 'lorafleet_requests_total{adapter="base",endpoint="chat",status="502",version="-"} 1.0' in text
        assert 'lorafleet_requests_in_flight{adapter="base"} 0.0' in text


def test_openai_client_streams_and_sees_the_version(live) -> None:
    fake, gw, admin, _ = live
    client = openai.OpenAI(base_url=f"{gw}/v1", api_key=admin, max_retries=0)
    chunks = list(client.chat.completions.create(model="support-intents@prod", stream=True,
                                                 messages=[{"role": "user", "content": "x"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "support-intents@v1 says hi"
    assert {c.model for c in chunks} == {"support-intents@v1"}
    completion = client.completions.create(model="pirate", prompt="x")
    assert completion.model == "pirate@v1" and completion.choices[0].text == "pirate@v1 says hi"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gw}/v1", api_key="lf-wrong", max_retries=0).models.list()


def test_stream_error_before_first_chunk_keeps_status(live) -> None:
    fake, gw, admin, _ = live
    fake.enqueue("bad request from vllm", status=400)
    resp = httpx.post(f"{gw}/v1/chat/completions", json=_stream_body(BASE),
                      headers={"Authorization": f"Bearer {admin}"}, timeout=30)
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "bad request from vllm"


async def test_client_disconnect_cancels_the_upstream_call() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow_upstream():
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def client_leaves():
        await started.wait()

    with pytest.raises(ApiError) as info:
        await _unless_disconnected(slow_upstream(), client_leaves)
    assert info.value.status == 499
    await asyncio.sleep(0)
    assert cancelled.is_set()


async def test_stream_released_even_if_the_body_never_starts() -> None:
    from lorafleet.serve.proxy import Stream
    from lorafleet.serve.routes.openai import SseRelay

    cleaned = []

    async def body():
        yield b"data: x\n\n"

    async def cleanup() -> None:
        cleaned.append(True)

    async def receive():
        return {"type": "http.disconnect"}

    async def send(_message):
        raise OSError("client gone")

    await SseRelay(Stream(body(), cleanup))({"type": "http", "asgi": {"spec_version": "2.3"}}, receive, send)
    assert cleaned == [True]


async def test_stream_stops_reading_upstream_when_the_client_leaves() -> None:
    """uvicorn (ASGI 2.3) drops sends to a gone client silently: the relay must notice the
    disconnect itself and close the stream, or vLLM keeps generating for nobody."""
    from lorafleet.serve.proxy import Stream
    from lorafleet.serve.routes.openai import SseRelay

    cleaned, sent = [], []
    gone = asyncio.Event()

    async def body():
        for i in range(1000):
            yield f"data: {i}\n\n".encode()
            if i == 2:
                gone.set()
            await asyncio.sleep(0.01)

    async def cleanup() -> None:
        cleaned.append(True)

    async def receive():
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await asyncio.wait_for(SseRelay(Stream(body(), cleanup))({"type": "http"}, receive, send), 5)
    assert cleaned == [True] and len(sent) < 10
