"""Capture: a sampled copy of prompt + response per adapter goes to the human-review app through
core's AsyncSampleSink (bounded queue, never blocks a request) and ReviewClient (spools to JSONL
while the app is unreachable, sends later, ids make re-sends no-ops)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from pathlib import Path
from typing import Any

import httpx
from lorafleet.serve.metrics import Metrics

from lorafleet.samples import AsyncSampleSink, ReviewClient, ReviewItem

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 15.0


class CountingReviewClient(ReviewClient):
    """ReviewClient that counts what it sent and what it had to spool."""

    def __init__(self, url: str, token: str, spool: Path, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(url, token, spool, **kwargs)
        self.metrics = metrics

    def _send(self, queue: str, items: list[ReviewItem]) -> bool:
        ok = super()._send(queue, items)
        if ok:
            self.metrics.capture_sent.inc(len(items))
        return ok

    def push(self, queue: str, items: list[ReviewItem]) -> bool:
        ok = super().push(queue, items)
        if not ok and items:
            # everything pushed now stays in the spool until a later flush
            self.metrics.capture_spooled.inc(len(items))
        return ok


class Capture:
    """Decides per request whether to capture (per-adapter rate) and hands samples to the sink."""

    def __init__(self, rates: dict[str, float], sink: AsyncSampleSink | None, *, seed: int | None = None) -> None:
        self.rates = rates
        self.sink = sink
        self._rng = random.Random(seed)
        self._flush_task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, rates: dict[str, float], review_url: str | None, token: str | None, queue: str,
                      spool: Path, metrics: Metrics,
                      transport: httpx.BaseTransport | None = None) -> Capture:
        if not rates or not review_url:
            return cls({}, None)
        client = CountingReviewClient(review_url, token or "", spool, metrics, transport=transport)
        return cls(rates, AsyncSampleSink(client, queue))

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
        item = ReviewItem(id=f"capture-{uuid.uuid4().hex}", prompt=prompt, response=response,
                          adapter=served_name, source="capture",
                          metadata={"endpoint": endpoint, **({"user": user} if user else {})})
        self.sink.offer(item)

    def start(self) -> None:
        if self.sink is not None:
            self.sink.start()
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        # samples spooled while the review app was down go out even when no new traffic arrives
        assert self.sink is not None
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            with contextlib.suppress(Exception):
                if await asyncio.to_thread(self.sink.client.pending):
                    await asyncio.to_thread(self.sink.client.flush)

    async def stop(self) -> None:
        if self._flush_task is not None:
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
        if self.sink is not None:
            await self.sink.stop()
            self.sink.client.close()


def _text(content: Any) -> str:
    """Message content as text (OpenAI allows a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)
