"""Review samples: the item schema shared by serve (capture), evaluate (push) and human_review
(ingest), and the one client that pushes items, spooling to JSONL while the app is unreachable.

Wire contract of the review app's ingest API:
    POST {review_url}/api/v1/items
    Authorization: Bearer <queue token or admin token>
    body: IngestRequest {"queue": "q", "items": [ReviewItem, …]}
    200:  IngestResponse {"created": n, "existing": m}     idempotent by item id
    4xx:  refused (404 no such queue, 401 bad or rotated token, 403 not this token's queue, 400/422
          invalid): the client keeps the batch spooled and reports why (`Refusal`); never "sent".
    GET {review_url}/api/v1/queues/{name}: 200 when the queue exists and the token may use it, else
          404/401/403 as above: the cheap check `lorafleet serve --capture` runs at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lorafleet.formats import Message
from lorafleet.fsutil import atomic_write_jsonl

log = logging.getLogger(__name__)

Source = Literal["eval", "capture", "import"]

# Caps on one item, independent of any settings so every part agrees: a text (prompt, each response,
# reference) up to MAX_TEXT_CHARS, a chat prompt's contents together too, metadata as JSON too.
MAX_TEXT_CHARS = 100_000
MAX_PROMPT_MESSAGES = 200
MAX_SCORES = 200
MAX_BATCH_BYTES = 8 * 1024 * 1024  # the client sends at most this much per POST (the app refuses > 64 MiB)
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


class ReviewItem(BaseModel):
    """One thing to review: a prompt and one response (rubric) or several (pairwise)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200, description="Stable id; re-sending it is a no-op.")
    prompt: Text | Annotated[list[Message], Field(min_length=1, max_length=MAX_PROMPT_MESSAGES)]
    response: Text | None = None
    responses: dict[Annotated[str, Field(max_length=200)], Text] | None = Field(
        default=None, description="Pairwise: target label → response; shown blind as A/B.")
    reference: Text | None = None
    adapter: str | None = Field(default=None, max_length=200, description="Exact served ref, e.g. support-intents@v3.")
    source: Source = "import"
    scores: dict[Annotated[str, Field(max_length=200)], float] = Field(
        default_factory=dict, max_length=MAX_SCORES, description="Per-sample metric scores.")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("prompt")
    @classmethod
    def _prompt_size(cls, prompt: str | list[Message]) -> str | list[Message]:
        if isinstance(prompt, list) and sum(len(m.content) for m in prompt) > MAX_TEXT_CHARS:
            raise ValueError(f"the prompt's messages hold more than {MAX_TEXT_CHARS} characters together")
        return prompt

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        if metadata and len(json.dumps(metadata, ensure_ascii=False, default=str)) > MAX_TEXT_CHARS:
            raise ValueError(f"metadata is larger than {MAX_TEXT_CHARS} characters as JSON")
        return metadata

    @model_validator(mode="after")
    def _one_kind(self) -> ReviewItem:
        if (self.response is None) == (self.responses is None):
            raise ValueError("give exactly one of 'response' (rubric) or 'responses' (pairwise)")
        if self.responses is not None and len(self.responses) != 2:
            raise ValueError("'responses' needs exactly two entries for a pairwise comparison")
        return self

    @classmethod
    def clipped(cls, **fields: Any) -> ReviewItem:
        """An item from live traffic, its texts cut to the caps (metadata says `clipped`) instead of refused."""
        cut = False

        def clip(text: str | None, room: int = MAX_TEXT_CHARS) -> str | None:
            nonlocal cut
            if text is not None and len(text) > room:
                cut = True
                return text[:max(room, 0)]
            return text

        prompt = fields.get("prompt")
        if isinstance(prompt, str):
            fields["prompt"] = clip(prompt)
        elif isinstance(prompt, list):
            kept, room = [], MAX_TEXT_CHARS
            for m in prompt[-MAX_PROMPT_MESSAGES:]:  # the latest turns matter most to a reviewer
                content = clip(str(m.get("content") if isinstance(m, dict) else m.content), room) or ""
                room -= len(content)
                kept.append({**m, "content": content} if isinstance(m, dict) else {"role": m.role, "content": content})
            cut = cut or len(prompt) > MAX_PROMPT_MESSAGES
            fields["prompt"] = kept
        for name in ("response", "reference"):
            fields[name] = clip(fields.get(name))
        if cut:
            fields["metadata"] = {**fields.get("metadata", {}), "clipped": True}
        return cls(**fields)

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


RefusalReason = Literal["queue_missing", "unauthorized", "forbidden", "invalid"]


class Refusal(BaseModel):
    """The review app answered a batch with a 4xx: those items stay spooled until the cause is fixed."""

    queue: str
    status: int
    reason: RefusalReason
    message: str = Field(description="The app's own error message.")
    fix: str = Field(description="What the operator does about it.")
    ids: list[str] = Field(default_factory=list, description="Items held back by this refusal.")
    first: int = Field(default=0, description="How many of `ids` this client saw refused for the first time.")


class PushResult(BaseModel):
    """What one push or flush did: accepted, refused (kept), left spooled, quarantined."""

    sent_ids: list[str] = Field(default_factory=list, description="Items the app accepted in this call.")
    refusals: list[Refusal] = Field(default_factory=list)
    pending: int | None = Field(default=None, description="Items left in the spool afterwards (None: not read).")
    held: int = Field(default=0, description="Of the items given to this call, how many stay in the spool.")
    quarantined: int = Field(default=0, description="Corrupt spool lines moved to the quarantine file.")
    unreachable: str | None = Field(default=None, description="Why sending stopped early (app down, 5xx).")

    @property
    def sent(self) -> int:
        return len(self.sent_ids)

    @property
    def refused(self) -> int:
        return sum(len(r.ids) for r in self.refusals)

    @property
    def empty(self) -> bool:
        """Nothing is left in the spool."""
        return self.pending == 0


def refusal_of(queue: str, status: int, body: str) -> Refusal:
    """Classify a 4xx answer and name the fix (the batch itself stays spooled)."""
    message = _error_message(body) or f"HTTP {status}"
    if status == 404:
        reason, fix = "queue_missing", (f"create queue {queue}: lorafleet review queues create {queue} "
                                        f"--rubric RUBRIC.yaml (or --pairwise)")
    elif status == 401:
        reason, fix = "unauthorized", (f"rotate the token: set LORAFLEET_REVIEW_TOKEN to the queue's current token "
                                       f"(lorafleet review queues token {queue}) or the admin token "
                                       f"(lorafleet review admin-token)")
    elif status == 403:
        reason, fix = "forbidden", (f"use queue {queue}'s own token (lorafleet review queues token {queue}) or the "
                                    f"admin token, and create the queue if it does not exist "
                                    f"(lorafleet review queues create {queue} ...)")
    else:
        reason, fix = "invalid", ("the app refused these items as invalid: fix or delete those spool lines, "
                                  "or run a review app of this lorafleet version")
    return Refusal(queue=queue, status=status, reason=reason, message=message, fix=fix)


def _error_message(body: str) -> str:
    """The message of an OpenAI-shaped error body, else the body's start."""
    try:
        error = json.loads(body).get("error", {})
        return str(error.get("message") or "") if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        return body[:300]


class QueueCheck(BaseModel):
    """The answer of `GET /api/v1/queues/{name}`: ok, refused (with the fix) or unreachable."""

    queue: str
    ok: bool
    refusal: Refusal | None = None
    unreachable: str | None = None


class ReviewClient:
    """Pushes items to the review app; what cannot be sent now is spooled and sent later.

    A 5xx, 429 or a connection error stops the flush (the app is down: later batches wait too). A
    4xx keeps the batch spooled and the flush goes on with other queues' batches, so one missing
    queue never blocks another. Corrupt spool lines go to `<spool>.quarantine`.
    """

    def __init__(self, url: str, token: str, spool: Path, *, timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = url.rstrip("/")
        self.url = self.base_url + "/api/v1/items"
        self.token = token
        self.spool = Path(spool)
        self.quarantine = Path(str(self.spool) + ".quarantine")
        self._lock = FileLock(str(self.spool) + ".lock", timeout=60)
        self._client = httpx.Client(timeout=timeout, transport=transport)
        self._refused_seen: set[str] = set()  # so a batch refused on every flush is counted once

    def close(self) -> None:
        self._client.close()

    def push(self, queue: str, items: list[ReviewItem]) -> PushResult:
        """Spool these items, then send everything spooled, oldest first."""
        if items:
            self._append_spool(queue, items)
        result = self._flush()
        sent = set(result.sent_ids)
        result.held = sum(1 for i in items if i.id not in sent)
        self._observe(result)
        return result

    def flush(self) -> PushResult:
        """Send everything spooled, oldest first; keeps what is refused or cannot be sent now."""
        result = self._flush()
        self._observe(result)
        return result

    def spool_items(self, queue: str, items: list[ReviewItem]) -> None:
        """Only spool (a later flush sends them), e.g. when a server's queue is full."""
        self._append_spool(queue, items)
        self._observe(PushResult(held=len(items)))

    def pending(self) -> int:
        with self._lock:
            return sum(len(items) for _, items in self._read_spool()[0])

    def check_queue(self, queue: str) -> QueueCheck:
        """Does `queue` exist and does the token reach it? One cheap GET, nothing is sent."""
        try:
            resp = self._client.get(f"{self.base_url}/api/v1/queues/{queue}", headers=self._headers())
        except httpx.HTTPError as exc:
            return QueueCheck(queue=queue, ok=False, unreachable=f"{exc.__class__.__name__}: {exc}")
        if resp.status_code == 200:
            return QueueCheck(queue=queue, ok=True)
        if resp.status_code >= 500 or resp.status_code in (405, 429):
            # 405: a review app from before the check endpoint; its answer says nothing about the queue
            return QueueCheck(queue=queue, ok=False, unreachable=f"HTTP {resp.status_code}")
        return QueueCheck(queue=queue, ok=False, refusal=refusal_of(queue, resp.status_code, resp.text))

    def _observe(self, result: PushResult) -> None:
        """Hook for subclasses that count (serve's metrics); called once per push, flush or spool."""

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _flush(self) -> PushResult:
        with self._lock:
            batches, bad = self._read_spool()
            result = PushResult(quarantined=self._quarantine(bad) if bad else 0)
            kept: list[tuple[str, list[ReviewItem]]] = []
            refused_queues: dict[str, Refusal] = {}
            for queue, items in batches:
                if result.unreachable is not None:
                    kept.append((queue, items))
                    continue
                if queue in refused_queues:  # refused once in this flush: the rest of it waits, unsent
                    refused_queues[queue].ids.extend(i.id for i in items)
                    kept.append((queue, items))
                    continue
                outcome = self._send(queue, items)
                if outcome is True:
                    result.sent_ids.extend(i.id for i in items)
                    continue
                kept.append((queue, items))
                if isinstance(outcome, Refusal):
                    result.refusals.append(outcome)
                    if outcome.reason != "invalid":  # a queue-wide cause: don't resend its other batches now
                        refused_queues[queue] = outcome
                else:
                    result.unreachable = outcome
            for refusal in result.refusals:
                new = [i for i in refusal.ids if i not in self._refused_seen]
                refusal.first = len(new)
                self._refused_seen.update(new)
                log.error("review app refused %d item(s) for queue %r (%s, %s): %s; kept in %s until fixed. fix: %s",
                          len(refusal.ids), refusal.queue, refusal.status, refusal.reason, refusal.message,
                          self.spool, refusal.fix)
            if kept or bad or batches:
                self._write_spool(kept)
            result.pending = sum(len(items) for _, items in kept)
            return result

    def _send(self, queue: str, items: list[ReviewItem]) -> bool | Refusal | str:
        """True when accepted; a Refusal for a 4xx; else why the app could not take it now."""
        body = IngestRequest(queue=queue, items=items).model_dump(mode="json", exclude_none=True)
        try:
            resp = self._client.post(self.url, json=body, headers=self._headers())
        except httpx.HTTPError as exc:
            log.warning("review app unreachable (%s); %d item(s) spooled", exc.__class__.__name__, len(items))
            return exc.__class__.__name__
        if resp.status_code >= 500 or resp.status_code in (408, 429):
            log.warning("review app answered %s; %d item(s) spooled", resp.status_code, len(items))
            return f"HTTP {resp.status_code}"
        if resp.status_code >= 400:
            refusal = refusal_of(queue, resp.status_code, resp.text)
            refusal.ids = [i.id for i in items]
            return refusal
        return True

    def _append_spool(self, queue: str, items: list[ReviewItem]) -> None:
        with self._lock:
            self.spool.parent.mkdir(parents=True, exist_ok=True)
            with open(self.spool, "ab") as f:
                if f.tell() and not _ends_with_newline(self.spool):
                    f.write(b"\n")  # a torn last line stays one bad line instead of swallowing this record
                for item in items:
                    f.write(json.dumps({"queue": queue, "item": item.model_dump(mode="json")}).encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())

    def _read_spool(self) -> tuple[list[tuple[str, list[ReviewItem]]], list[tuple[int, bytes, str]]]:
        """Batches (consecutive items of one queue, at most 500 and MAX_BATCH_BYTES) and the lines that do not parse."""
        if not self.spool.exists():
            return [], []
        batches: list[tuple[str, list[ReviewItem]]] = []
        bad: list[tuple[int, bytes, str]] = []
        batch_bytes = 0
        for lineno, raw in enumerate(self.spool.read_bytes().split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
                queue = row["queue"]
                if not isinstance(queue, str) or not queue:
                    raise ValueError("'queue' is not a name")
                item = ReviewItem.model_validate(row["item"])
            except (ValueError, KeyError, TypeError) as exc:  # JSON, UTF-8 and pydantic errors are ValueErrors
                bad.append((lineno, raw, f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}"))
                continue
            if (batches and batches[-1][0] == queue and len(batches[-1][1]) < 500
                    and batch_bytes + len(raw) <= MAX_BATCH_BYTES):
                batches[-1][1].append(item)
                batch_bytes += len(raw)
            else:
                batches.append((queue, [item]))
                batch_bytes = len(raw)  # a line is at least its item's JSON: a safe bound on the POST's size
        return batches, bad

    def _quarantine(self, bad: list[tuple[int, bytes, str]]) -> int:
        """Move corrupt lines aside (appended, fsynced before the spool is rewritten without them)."""
        with open(self.quarantine, "ab") as f:
            for _, raw, _ in bad:
                f.write(raw + b"\n")
            f.flush()
            os.fsync(f.fileno())
        where = ", ".join(f"line {n}: {why}" for n, _, why in bad[:3]) + (" …" if len(bad) > 3 else "")
        log.error("%d corrupt line(s) of %s moved to %s (%s); the rest of the spool is sent",
                  len(bad), self.spool, self.quarantine, where)
        return len(bad)

    def _write_spool(self, batches: list[tuple[str, list[ReviewItem]]]) -> None:
        if not batches and not self.spool.exists():
            return
        atomic_write_jsonl(self.spool, [{"queue": q, "item": i.model_dump(mode="json")}
                                        for q, items in batches for i in items])


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


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
            self.client.spool_items(self.queue_name, [item])

    async def _run(self) -> None:
        while True:
            items = [await self._queue.get()]
            while len(items) < self._batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            try:
                await asyncio.to_thread(self.client.push, self.queue_name, items)
            except Exception:  # noqa: BLE001 - a failed push (disk full, a bug) must not end capture silently
                # push spools before it sends, so only a failed spool write loses these items
                log.exception("capture push of %d item(s) to queue %r failed", len(items), self.queue_name)

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
            self.client.spool_items(self.queue_name, leftover)
