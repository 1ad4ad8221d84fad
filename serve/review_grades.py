"""Review grades of captured samples, per adapter version, polled from the review app at a low rate.

The gateway captures samples into one review queue; reviewers grade them there. Every `interval` seconds
(default 60; 0 turns it off) a background task reads that queue's grades export
(`GET /api/v1/queues/{queue}/export?format=grades`, oldest first, streamed line by line) in a worker
thread and keeps the last `window` grades per version: the mean of each rubric criterion becomes
`lorafleet_review_grade_mean{adapter,version,criterion}`. The export needs the admin token: with a queue
(ingest-only) token the app answers 403, which is logged once, and polling stops. The cost is one
streamed read of the queue's grades per interval, off the request path; Prometheus keeps the history
("over time").
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from typing import Any

import httpx
from lorafleet.serve.metrics import Metrics

from lorafleet.periodic import Periodic

log = logging.getLogger(__name__)

TIMEOUT = 30.0


class ReviewGrades:
    """Polls the capture queue's grades and exports windowed means per adapter version and criterion."""

    def __init__(self, url: str, token: str, queue: str, metrics: Metrics, *, interval: float = 60.0,
                 window: int = 200, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.queue = queue
        self.metrics = metrics
        self.interval = interval
        self.window = window
        self.transport = transport
        self.stopped_because: str | None = None  # set when the app refuses the export for good (401/403/404)
        self._rounds: Periodic | None = None
        self._exported: set[tuple[str, str, str]] = set()

    def start(self) -> None:
        self._rounds = Periodic(self._round, self.interval, what=f"review grades: polling {self.url}", logger=log)
        self._rounds.start()

    async def stop(self) -> None:
        if self._rounds is not None:
            await self._rounds.stop()

    async def _round(self) -> bool:
        try:
            await asyncio.to_thread(self.poll)
        except httpx.HTTPError as exc:  # the app is down: try again next time
            log.info("review grades: %s unreachable (%s); retrying in %.0f s", self.url,
                     exc.__class__.__name__, self.interval)
        return self.stopped_because is None  # the app refused the export for good: stop asking

    def poll(self) -> dict[tuple[str, str], dict[str, float]]:
        """Read the export once and set the gauges; returns {(adapter, version): {criterion: mean}}."""
        grades: dict[tuple[str, str], collections.deque[dict[str, Any]]] = {}
        client = httpx.Client(base_url=self.url, timeout=TIMEOUT, transport=self.transport,
                              headers={"Authorization": f"Bearer {self.token}"})
        with client, client.stream("GET", f"/api/v1/queues/{self.queue}/export",
                                   params={"format": "grades"}) as resp:
            if resp.status_code in (401, 403, 404):
                self.stopped_because = f"HTTP {resp.status_code}"
                log.warning("review grades: %s refuses the grades export of queue %r (HTTP %s); grades of "
                            "captured samples are not exported. Fix: give the gateway the review admin token, "
                            "or set LORAFLEET_REVIEW_POLL_INTERVAL=0", self.url, self.queue, resp.status_code)
                return {}
            resp.raise_for_status()
            for line in resp.iter_lines():
                row = _row(line)
                if row is None:
                    continue
                adapter, scores = row
                key = _split(adapter)
                if key is None:
                    continue
                grades.setdefault(key, collections.deque(maxlen=self.window)).append(scores)
        return self._export(grades)

    def _export(self, grades: dict[tuple[str, str], collections.deque[dict[str, Any]]]
                ) -> dict[tuple[str, str], dict[str, float]]:
        means: dict[tuple[str, str], dict[str, float]] = {}
        for key, rows in grades.items():
            per: dict[str, list[float]] = collections.defaultdict(list)
            for scores in rows:
                for criterion, value in scores.items():
                    per[criterion].append(float(value))
            means[key] = {c: sum(v) / len(v) for c, v in per.items()}
            self.metrics.review_grades.labels(*key).set(len(rows))
            for criterion, mean in means[key].items():
                self.metrics.review_grade_mean.labels(*key, criterion).set(mean)
                self._exported.add((*key, criterion))
        return means


def _row(line: str) -> tuple[str, dict[str, Any]] | None:
    """(adapter, numeric scores) of one export line; pairwise choices and odd lines are skipped."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(row, dict) or not isinstance(row.get("adapter"), str) or not isinstance(row.get("scores"), dict):
        return None
    scores = {str(k): v for k, v in row["scores"].items()
              if isinstance(v, int | float) and not isinstance(v, bool)}
    return (row["adapter"], scores) if scores else None


def _split(served: str) -> tuple[str, str] | None:
    """`name@v3` → (name, v3); captured items carry the served (immutable) name."""
    name, sep, version = served.partition("@")
    return (name, version) if sep and name and version else None
