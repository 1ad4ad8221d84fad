"""Capture: a sampled copy of prompt + response per adapter goes to the human-review app through
core's AsyncSampleSink (bounded queue, never blocks a request) and ReviewClient (spools to JSONL
while the app is unreachable, sends later, ids make re-sends no-ops)."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import httpx
from lorafleet.serve.metrics import Metrics

from lorafleet.periodic import Periodic
from lorafleet.samples import AsyncSampleSink, PushResult, QueueCheck, RefusalReason, ReviewClient, ReviewItem

if TYPE_CHECKING:
    from lorafleet.serve.config import ReviewSettings

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 15.0


class CountingReviewClient(ReviewClient):
    """ReviewClient that counts what the app accepted, refused, what stayed spooled or was quarantined."""

    def __init__(self, url: str, token: str, spool: Path, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(url, token, spool, **kwargs)
        self.metrics = metrics
        for reason in get_args(RefusalReason):  # every reason exported at 0, so increase() sees the first one
            metrics.capture_rejected.labels(reason)

    def _observe(self, result: PushResult) -> None:
        self.metrics.capture_sent.inc(result.sent)
        self.metrics.capture_spooled.inc(result.held)
        for refusal in result.refusals:
            self.metrics.capture_rejected.labels(refusal.reason).inc(refusal.first)
        self.metrics.capture_quarantined.inc(result.quarantined)
        if result.pending is not None:
            self.metrics.capture_spool_pending.set(result.pending)


def check_review_queue(review_url: str, token: str | None, queue: str, spool: Path, *,
                       transport: httpx.BaseTransport | None = None) -> QueueCheck:
    """Does the capture queue exist and does the review app accept the token? (start-up check)"""
    client = ReviewClient(review_url, token or "", spool, timeout=5.0, transport=transport)
    try:
        return client.check_queue(queue)
    finally:
        client.close()


class Capture:
    """Decides per request whether to capture (per-adapter rate) and hands samples to the sink."""

    def __init__(self, rates: dict[str, float], sink: AsyncSampleSink | None, *, seed: int | None = None) -> None:
        self.rates = rates
        self.sink = sink
        self._rng = random.Random(seed)
        self._flush_rounds: Periodic | None = None
        self._checked = False  # the review queue is checked once, in the first flush round
        self.queue_check: QueueCheck | None = None  # the start-up check's answer, once it came

    @classmethod
    def from_settings(cls, review: ReviewSettings, spool: Path, metrics: Metrics,
                      transport: httpx.BaseTransport | None = None) -> Capture:
        """The gateway's capture from its review group (off without rates or a review URL)."""
        if not review.capture or not review.url:
            return cls({}, None)
        client = CountingReviewClient(review.url, review.secret() or "", spool, metrics, transport=transport)
        return cls(review.capture, AsyncSampleSink(client, review.queue))

    def wants(self, adapter: str) -> bool:
        rate = self.rates.get(adapter, 0.0)
        return self.sink is not None and rate > 0 and self._rng.random() < rate

    def record(self, *, served_name: str, prompt: Any, response: str, endpoint: str, user: str | None) -> None:
        """Queue one sample; never blocks (a full queue spools to disk)."""
        assert self.sink is not None
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
            prompt = [{"role": m.get("role", "user"), "content": _text(m.get("content"))} for m in prompt]
        elif not isinstance(prompt, str):
            prompt = str(prompt)
        item = ReviewItem.clipped(id=f"capture-{uuid.uuid4().hex}", prompt=prompt, response=response,
                          adapter=served_name, source="capture",
                          metadata={"endpoint": endpoint, **({"user": user} if user else {})})
        self.sink.offer(item)

    def start(self) -> None:
        if self.sink is not None:
            self.sink.start()
            self._flush_rounds = Periodic(self._flush_round, FLUSH_INTERVAL, logger=log,
                                          what=f"capture: flushing the spool {self.sink.client.spool}")
            self._flush_rounds.start()

    async def _flush_round(self) -> None:
        # samples spooled while the review app was down go out even when no new traffic arrives;
        # the first round runs at once: it checks the queue and sends what a previous process left
        assert self.sink is not None
        client = self.sink.client
        if not self._checked:
            self._checked = True
            try:
                self.queue_check = await asyncio.to_thread(client.check_queue, self.sink.queue_name)
                _log_check(self.queue_check, client.base_url, client.spool)
            except Exception:  # noqa: BLE001 - the check is advice; capture goes on spooling
                log.exception("capture: checking review queue %r failed", self.sink.queue_name)
        if await asyncio.to_thread(client.pending):  # a failure is logged by the rounds, which go on
            await asyncio.to_thread(client.flush)

    async def stop(self) -> None:
        if self._flush_rounds is not None:
            await self._flush_rounds.stop()
        if self.sink is not None:
            await self.sink.stop()
            self.sink.client.close()


def _log_check(check: QueueCheck, url: str, spool: Path) -> None:
    """One loud line when the capture queue is refused, a warning when the app does not answer."""
    if check.refusal is not None:
        r = check.refusal
        log.error("capture: review app %s refuses queue %r (%s, %s): %s; samples are kept in %s. fix: %s",
                  url, check.queue, r.status, r.reason, r.message, spool, r.fix)
    elif check.unreachable is not None:
        log.warning("capture: review app %s unreachable (%s); samples are spooled to %s until it answers",
                    url, check.unreachable, spool)


def _text(content: Any) -> str:
    """Message content as text (OpenAI allows a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)
