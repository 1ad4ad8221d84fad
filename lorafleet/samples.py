"""Review samples: the item schema shared by serve (capture), evaluate (push) and human_review
(ingest), and the one client that pushes items, spooling to JSONL while the app is unreachable.

Wire contract of the review app's ingest API:
    POST {review_url}/api/v1/items
    Authorization: Bearer <queue token or admin token>
    body: IngestRequest {"queue": "q", "items": [ReviewItem, …]}
    200:  IngestResponse {"created": n, "existing": m}     idempotent by item id
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import httpx
from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lorafleet.formats import Message
from lorafleet.fsutil import atomic_write_jsonl

log = logging.getLogger(__name__)

Source = Literal["eval", "capture", "import"]


class ReviewItem(BaseModel):
    """One thing to review: a prompt and one response (rubric) or several (pairwise)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200, description="Stable id; re-sending it is a no-op.")
    prompt: str | list[Message]
    response: str | None = None
    responses: dict[str, str] | None = Field(
        default=None, description="Pairwise: target label → response; shown blind as A/B.")
    reference: str | None = None
    adapter: str | None = Field(default=None, description="Exact served ref, e.g. support-intents@v3.")
    source: Source = "import"
    scores: dict[str, float] = Field(default_factory=dict, description="Per-sample metric scores.")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_kind(self) -> ReviewItem:
        if (self.response is None) == (self.responses is None):
            raise ValueError("give exactly one of 'response' (rubric) or 'responses' (pairwise)")
        if self.responses is not None and len(self.responses) != 2:
            raise ValueError("'responses' needs exactly two entries for a pairwise comparison")
        return self

    def prompt_messages(self) -> list[Message]:
        if isinstance(self.prompt, str):
            return [Message(role="user", content=self.prompt)]
        return list(self.prompt)


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queue: str
    items: list[ReviewItem] = Field(min_length=1, max_length=1000)


class IngestResponse(BaseModel):
    created: int
    existing: int


class ReviewClient:
    """Pushes items to the review app; what cannot be sent now is spooled and sent later."""

    def __init__(self, url: str, token: str, spool: Path, *, timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/") + "/api/v1/items"
        self.token = token
        self.spool = Path(spool)
        self._lock = FileLock(str(self.spool) + ".lock", timeout=60)
        self._client = httpx.Client(timeout=timeout, transport=transport)

    def close(self) -> None:
        self._client.close()

    def push(self, queue: str, items: list[ReviewItem]) -> bool:
        """Send spooled items first, then these; returns True when nothing is left in the spool."""
        if items:
            self._append_spool(queue, items)
        return self.flush()

    def flush(self) -> bool:
        """Send everything spooled, oldest first; keeps what fails. True when the spool is empty."""
        with self._lock:
            batches = self._read_spool()
            remaining = []
            for i, (queue, items) in enumerate(batches):
                if not self._send(queue, items):
                    remaining = batches[i:]
                    break
            self._write_spool(remaining)
            return not remaining

    def pending(self) -> int:
        with self._lock:
            return sum(len(items) for _, items in self._read_spool())

    def _send(self, queue: str, items: list[ReviewItem]) -> bool:
        body = IngestRequest(queue=queue, items=items).model_dump(mode="json", exclude_none=True)
        try:
            resp = self._client.post(self.url, json=body, headers={"Authorization": f"Bearer {self.token}"})
        except httpx.HTTPError as exc:
            log.warning("review app unreachable (%s); %d item(s) spooled", exc.__class__.__name__, len(items))
            return False
        if resp.status_code >= 500 or resp.status_code == 429:
            log.warning("review app answered %s; %d item(s) spooled", resp.status_code, len(items))
            return False
        if resp.status_code >= 400:
            # A 4xx will not heal by retrying: drop the batch loudly rather than block the spool.
            log.error("review app refused %d item(s) for queue %r: %s %s", len(items), queue,
                      resp.status_code, resp.text[:300])
        return True

    def _append_spool(self, queue: str, items: list[ReviewItem]) -> None:
        with self._lock:
            self.spool.parent.mkdir(parents=True, exist_ok=True)
            with open(self.spool, "a", encoding="utf-8") as f:
                for item in items:
                    f.write(json.dumps({"queue": queue, "item": item.model_dump(mode="json")}) + "\n")
                f.flush()
                os.fsync(f.fileno())

    def _read_spool(self) -> list[tuple[str, list[ReviewItem]]]:
        if not self.spool.exists():
            return []
        batches: list[tuple[str, list[ReviewItem]]] = []
        for text in self.spool.read_text(encoding="utf-8").splitlines():
            if not text.strip():
                continue
            row = json.loads(text)
            item = ReviewItem.model_validate(row["item"])
            if batches and batches[-1][0] == row["queue"] and len(batches[-1][1]) < 500:
                batches[-1][1].append(item)
            else:
                batches.append((row["queue"], [item]))
        return batches

    def _write_spool(self, batches: list[tuple[str, list[ReviewItem]]]) -> None:
        if not batches and not self.spool.exists():
            return
        atomic_write_jsonl(self.spool, [{"queue": q, "item": i.model_dump(mode="json")}
                                        for q, items in batches for i in items])


class AsyncSampleSink:
    """A bounded queue in front of a ReviewClient, for servers: `offer()` never blocks a request.

    Items go to a background task that pushes them in a worker thread; when the queue is full
    the item is written straight to the spool instead of being dropped.
    """

    def __init__(self, client: ReviewClient, queue: str, *, maxsize: int = 1000, batch: int = 50) -> None:
        self.client = client
        self.queue_name = queue
        self._queue: asyncio.Queue[ReviewItem] = asyncio.Queue(maxsize=maxsize)
        self._batch = batch
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def offer(self, item: ReviewItem) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.client._append_spool(self.queue_name, [item])

    async def _run(self) -> None:
        while True:
            items = [await self._queue.get()]
            while len(items) < self._batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            await asyncio.to_thread(self.client.push, self.queue_name, items)

    async def stop(self) -> None:
        """Spool whatever is still queued, then stop the task."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        leftover = []
        while not self._queue.empty():
            leftover.append(self._queue.get_nowait())
        if leftover:
            self.client._append_spool(self.queue_name, leftover)
