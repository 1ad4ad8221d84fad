"""Capture: sampled prompt + response go to the review app; while it is down they spool to JSONL
and are sent later — none lost, none sent twice; requests never wait for it."""

from __future__ import annotations

import asyncio
import json

import httpx
from lorafleet.serve.capture import Capture
from pydantic import SecretStr

from tests.unit.serve.conftest import running


class FakeReview:
    def __init__(self) -> None:
        self.up = False
        self.received: list[dict] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("review app down")
        assert request.headers["authorization"] == "Bearer review-token"
        body = json.loads(request.content)
        assert body["queue"] == "capture"
        self.received.extend(body["items"])
        return httpx.Response(200, json={"created": len(body["items"]), "existing": 0})


async def _until(predicate, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_capture_spools_while_down_and_sends_each_sample_once(serve_settings, fake, key_store,
                                                                    gw_registry) -> None:
    review = FakeReview()
    settings = serve_settings.model_copy(update={
        "capture": {"pirate": 1.0}, "review_url": "http://review", "review_token": SecretStr("review-token")})
    async with running(settings, fake, key_store, review_transport=httpx.MockTransport(review.handler)) as gw:
        client = gw.state.capture.sink.client
        for i in range(3):
            assert (await gw.chat("pirate", messages=[{"role": "user", "content": f"q{i}"}])).status_code == 200
        assert (await gw.chat("clauses")).status_code == 200  # not captured (rate 0)
        await _until(lambda: client.pending() == 3)
        assert settings.spool_path.exists()

        review.up = True
        resp = await gw.chat("pirate", stream=True, messages=[{"role": "user", "content": "streamed"}])
        assert resp.status_code == 200
        await _until(lambda: len(review.received) == 4)
        await asyncio.sleep(0.1)
        assert client.pending() == 0
        ids = [item["id"] for item in review.received]
        assert len(set(ids)) == 4
        prompts = [item["prompt"][0]["content"] for item in review.received]
        assert prompts == ["q0", "q1", "q2", "streamed"]
        assert all(item["adapter"] == "pirate@v1" and item["source"] == "capture" for item in review.received)
        assert review.received[-1]["response"] == "pirate@v1 says hi"
        metrics = (await gw.client.get("/metrics")).text
        assert "lorafleet_capture_spooled_total 3.0" in metrics
        assert "lorafleet_capture_sent_total 4.0" in metrics


async def test_spooled_samples_survive_a_restart(serve_settings, fake, key_store, gw_registry) -> None:
    review = FakeReview()
    settings = serve_settings.model_copy(update={
        "capture": {"pirate": 1.0}, "review_url": "http://review", "review_token": SecretStr("review-token")})
    transport = httpx.MockTransport(review.handler)
    async with running(settings, fake, key_store, review_transport=transport) as gw:
        await gw.chat("pirate")
        await _until(lambda: gw.state.capture.sink.client.pending() == 1)
    review.up = True
    async with running(settings, fake, key_store, review_transport=transport) as gw:
        await asyncio.to_thread(gw.state.capture.sink.client.flush)
        assert len(review.received) == 1


def test_sampling_rate_is_per_adapter() -> None:
    capture = Capture({"a": 0.5, "b": 0.0}, sink=object(), seed=1)  # type: ignore[arg-type]
    picks = [capture.wants("a") for _ in range(400)]
    assert 120 < sum(picks) < 280
    assert not any(capture.wants("b") for _ in range(50))
    assert not any(capture.wants("other") for _ in range(50))
    assert not Capture({"a": 1.0}, sink=None).wants("a")
