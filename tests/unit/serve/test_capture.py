"""Capture: sampled prompt + response go to the review app; while it is down they spool to JSONL
and are sent later — none lost, none sent twice; requests never wait for it."""

from __future__ import annotations

import asyncio
import json

import httpx
from lorafleet.serve.capture import Capture
from pydantic import SecretStr

from tests.unit.serve.conftest import running
from tests.waiting import until


class FakeReview:
    def __init__(self) -> None:
        self.up = False
        self.queue_exists = True
        self.received: list[dict] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("review app down")
        assert request.headers["authorization"] == "Bearer review-token"
        if not self.queue_exists:  # like human_review with the admin token: 404 for a missing queue
            return httpx.Response(404, json={"error": {"message": "queue 'capture' not found"}})
        if request.method == "GET":  # the start-up check
            assert request.url.path == "/api/v1/queues/capture"
            return httpx.Response(200, json={"name": "capture"})
        body = json.loads(request.content)
        assert body["queue"] == "capture"
        self.received.extend(body["items"])
        return httpx.Response(200, json={"created": len(body["items"]), "existing": 0})


def counted(gw, name: str, **labels: str) -> float:  # noqa: ANN001 - the Harness
    return gw.state.metrics_registry.get_sample_value(name, labels) or 0.0


async def test_capture_spools_while_down_and_sends_each_sample_once(serve_settings, fake, key_store,
                                                                    gw_registry) -> None:
    review = FakeReview()
    settings = serve_settings.updated(**{
        "capture": {"pirate": 1.0}, "review_url": "http://review", "review_token": SecretStr("review-token")})
    async with running(settings, fake, key_store, review_transport=httpx.MockTransport(review.handler)) as gw:
        client = gw.state.capture.sink.client
        for i in range(3):
            assert (await gw.chat("pirate", messages=[{"role": "user", "content": f"q{i}"}])).status_code == 200
        assert (await gw.chat("clauses")).status_code == 200  # not captured (rate 0)
        # each push counts what it spooled last, after its send failed: all three are done (none sent)
        await until(lambda: counted(gw, "lorafleet_capture_spooled_total") == 3, "three pushes spooled")
        assert client.pending() == 3 and settings.spool_path.exists()

        review.up = True
        resp = await gw.chat("pirate", stream=True, messages=[{"role": "user", "content": "streamed"}])
        assert resp.status_code == 200
        await until(lambda: counted(gw, "lorafleet_capture_sent_total") == 4, "the four samples sent")
        assert client.pending() == 0 and len(review.received) == 4
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
    settings = serve_settings.updated(**{
        "capture": {"pirate": 1.0}, "review_url": "http://review", "review_token": SecretStr("review-token")})
    transport = httpx.MockTransport(review.handler)
    async with running(settings, fake, key_store, review_transport=transport) as gw:
        await gw.chat("pirate")
        await until(lambda: counted(gw, "lorafleet_capture_spooled_total") == 1, "the push spooled")
        assert gw.state.capture.sink.client.pending() == 1
    review.up = True
    async with running(settings, fake, key_store, review_transport=transport) as gw:
        await asyncio.to_thread(gw.state.capture.sink.client.flush)
        assert len(review.received) == 1


async def test_repro_refused_batch_kept_and_counted(serve_settings, fake, key_store, gw_registry, caplog) -> None:
    """Issue 14, reproduction 5: a 4xx (the capture queue was never created) dropped the batch and counted it
    as sent. Now it stays spooled, `sent` does not move, `rejected{reason}` does, and the log names the fix."""
    review = FakeReview()
    review.up, review.queue_exists = True, False
    settings = serve_settings.updated(**{
        "capture": {"pirate": 1.0}, "review_url": "http://review", "review_token": SecretStr("review-token")})
    async with running(settings, fake, key_store, review_transport=httpx.MockTransport(review.handler)) as gw:
        client = gw.state.capture.sink.client
        for i in range(2):
            assert (await gw.chat("pirate", messages=[{"role": "user", "content": f"q{i}"}])).status_code == 200
        # a push counts sent, spooled, rejected, then the pending gauge: wait for the second push's last count
        await until(lambda: counted(gw, "lorafleet_capture_spooled_total") == 2
                    and counted(gw, "lorafleet_capture_rejected_total", reason="queue_missing") == 2
                    and counted(gw, "lorafleet_capture_spool_pending") == 2, "both pushes counted")
        await until(lambda: gw.state.capture.queue_check is not None, "the start-up queue check")
        assert client.pending() == 2
        assert gw.state.capture.queue_check.refusal.reason == "queue_missing"
        metrics = (await gw.client.get("/metrics")).text
        assert "lorafleet_capture_sent_total 0.0" in metrics
        assert 'lorafleet_capture_rejected_total{reason="queue_missing"} 2.0' in metrics
        assert 'lorafleet_capture_rejected_total{reason="unauthorized"} 0.0' in metrics
        assert "lorafleet_capture_spool_pending 2.0" in metrics  # the spool alert's series
        assert "lorafleet_capture_spooled_total 2.0" in metrics
        assert "create queue capture: lorafleet review queues create capture" in caplog.text

        review.queue_exists = True  # the operator creates the queue: the kept samples go out
        await asyncio.to_thread(client.flush)
        assert [i["prompt"][0]["content"] for i in review.received] == ["q0", "q1"]
        metrics = (await gw.client.get("/metrics")).text
        assert "lorafleet_capture_sent_total 2.0" in metrics
        assert 'lorafleet_capture_rejected_total{reason="queue_missing"} 2.0' in metrics
        assert "lorafleet_capture_spool_pending 0.0" in metrics


async def test_corrupt_spool_lines_are_quarantined_and_counted(serve_settings, fake, key_store, gw_registry) -> None:
    review = FakeReview()
    review.up = True
    settings = serve_settings.updated(**{
        "capture": {"pirate": 1.0}, "review_url": "http://review", "review_token": SecretStr("review-token")})
    good = {"queue": "capture", "item": {"id": "left-over", "prompt": "hi", "response": "yo", "source": "capture"}}
    settings.spool_path.write_text("not json\n" + json.dumps(good) + "\n" + '{"queue": "capture", "it')
    async with running(settings, fake, key_store, review_transport=httpx.MockTransport(review.handler)) as gw:
        # the start-up flush sends what a crash left and counts (sent first, quarantined after)
        await until(lambda: counted(gw, "lorafleet_capture_quarantined_total") == 2, "the start-up flush")
        assert len(review.received) == 1
        metrics = (await gw.client.get("/metrics")).text
        assert "lorafleet_capture_quarantined_total 2.0" in metrics and "lorafleet_capture_sent_total 1.0" in metrics
    quarantine = settings.spool_path.with_name(settings.spool_path.name + ".quarantine").read_text()
    assert quarantine == 'not json\n{"queue": "capture", "it\n'


async def test_the_flush_loop_logs_its_errors_and_keeps_going(monkeypatch, tmp_path, caplog) -> None:
    from lorafleet.serve import capture as capture_mod

    from lorafleet.samples import AsyncSampleSink, ReviewClient

    class Broken(ReviewClient):
        calls = 0

        def check_queue(self, queue):  # noqa: ANN001, ANN201
            raise RuntimeError("check broke")

        def pending(self) -> int:
            Broken.calls += 1
            raise OSError("disk on fire")

    monkeypatch.setattr(capture_mod, "FLUSH_INTERVAL", 0.01)
    cap = Capture({"a": 1.0}, AsyncSampleSink(Broken("http://review", "t", tmp_path / "spool.jsonl"), "capture"))
    cap.start()
    await until(lambda: Broken.calls >= 2, "two flush rounds")
    await cap.stop()
    assert "checking review queue 'capture' failed" in caplog.text
    assert "flushing the spool" in caplog.text and "disk on fire" in caplog.text


def test_sampling_rate_is_per_adapter() -> None:
    capture = Capture({"a": 0.5, "b": 0.0}, sink=object(), seed=1)  # type: ignore[arg-type]
    picks = [capture.wants("a") for _ in range(400)]
    assert 120 < sum(picks) < 280
    assert not any(capture.wants("b") for _ in range(50))
    assert not any(capture.wants("other") for _ in range(50))
    assert not Capture({"a": 1.0}, sink=None).wants("a")
