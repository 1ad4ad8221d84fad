"""Send run samples to the human-review app through core's ReviewClient (spools when unreachable)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from lorafleet.evaluate.client import Completion
from lorafleet.evaluate.dataset import Sample
from lorafleet.evaluate.suite import ReviewSpec
from pydantic import BaseModel, Field

from lorafleet.errors import InvalidNameError
from lorafleet.refs import parse_ref
from lorafleet.samples import Refusal, ReviewClient, ReviewItem


def review_items(run_id: str, suite_name: str, spec: ReviewSpec, samples: list[Sample],
                 outputs: dict[str, dict[str, Completion]], scores: list[dict[str, Any]]) -> list[ReviewItem]:
    """Rubric items (`sample` per target, seeded) and pairwise items, tagged with run, target, scores."""
    rng = random.Random(spec.seed)
    per_sample = {(r["target"], r["id"]): r["scores"] for r in scores}
    chosen = rng.sample(samples, min(spec.sample, len(samples))) if spec.sample else []
    meta = {"run_id": run_id, "suite": suite_name, **({"rubric": spec.rubric} if spec.rubric else {})}
    items = []
    for target, rows in outputs.items():
        for s in chosen:
            c = rows.get(s.id)
            if c is None:
                continue
            items.append(ReviewItem(id=f"{run_id}:{target}:{s.id}"[:200], prompt=s.messages, response=c.output,
                                    reference=s.reference or None, adapter=c.served_model or target, source="eval",
                                    scores=per_sample.get((target, s.id), {}),
                                    metadata={**meta, "target": target, "sample_id": s.id}))
    if spec.pairwise:
        a, b = spec.pairwise
        picks = chosen or samples
        for s in picks:
            if s.id in outputs.get(a, {}) and s.id in outputs.get(b, {}):
                # Which exact version answered on each side: card.review's win rates are per version.
                served = {t: outputs[t][s.id].served_model for t in (a, b) if outputs[t][s.id].served_model}
                items.append(ReviewItem(
                    id=f"{run_id}:pair:{s.id}"[:200], prompt=s.messages, reference=s.reference or None,
                    responses={a: outputs[a][s.id].output, b: outputs[b][s.id].output}, source="eval",
                    adapter=next((served[t] for t in (b, a) if _is_version(served.get(t))), None),
                    metadata={**meta, "pairwise": [a, b], "sample_id": s.id, "served": served,
                              "scores": {a: per_sample.get((a, s.id), {}), b: per_sample.get((b, s.id), {})}}))
    return items


def _is_version(served: str | None) -> bool:
    """An exact `name@vN` (the only kind a card can be found by)."""
    try:
        return served is not None and parse_ref(served).is_version
    except InvalidNameError:
        return False


class PushSummary(BaseModel):
    """Where this run's review items ended up: accepted by the app, spooled (app down) or refused (kept)."""

    items: int = 0
    accepted: int = 0
    spooled: int = Field(default=0, description="Kept in the spool because the app did not answer; sent later.")
    refused: int = Field(default=0, description="Kept in the spool because the app refused them (a 4xx).")
    refusals: list[Refusal] = Field(default_factory=list, description="Why, per queue (ids: this run's only).")
    unreachable: str | None = None

    @property
    def ok(self) -> bool:
        """Every item was accepted."""
        return self.accepted == self.items


def push_to_queues(client: ReviewClient, spec: ReviewSpec, items: list[ReviewItem]) -> PushSummary:
    """Rubric items to `spec.queue`, A/B items to the pairwise queue."""
    rubric = [i for i in items if i.responses is None]
    pairs = [i for i in items if i.responses is not None]
    batches = [(spec.queue, rubric), (spec.pairwise_target_queue, pairs)]
    return _summarise(client, [(q, chunk) for q, part in batches if part for q, chunk in _chunks(q, part)])


def push(client: ReviewClient, queue: str, items: list[ReviewItem]) -> PushSummary:
    """Push in batches the ingest API accepts."""
    return _summarise(client, list(_chunks(queue, items)))


def _chunks(queue: str, items: list[ReviewItem]) -> Iterator[tuple[str, list[ReviewItem]]]:
    for start in range(0, len(items), 500):
        yield queue, items[start:start + 500]


def _summarise(client: ReviewClient, batches: list[tuple[str, list[ReviewItem]]]) -> PushSummary:
    """Push each batch; an item's last outcome counts (a batch refused first may be accepted later)."""
    status: dict[str, str] = {i.id: "spooled" for _, chunk in batches for i in chunk}
    refusals: dict[tuple[str, int], Refusal] = {}
    unreachable = None
    for queue, chunk in batches:
        result = client.push(queue, chunk)
        unreachable = result.unreachable or unreachable
        for item_id in result.sent_ids:
            if item_id in status:
                status[item_id] = "accepted"
        for r in result.refusals:
            mine = [i for i in r.ids if i in status]
            for item_id in mine:
                status[item_id] = "refused"
            if mine:
                seen = refusals.get((r.queue, r.status))
                refusals[(r.queue, r.status)] = r.model_copy(update={"ids": [*(seen.ids if seen else []), *mine]})
    kept = [r.model_copy(update={"ids": [i for i in dict.fromkeys(r.ids) if status[i] == "refused"]})
            for r in refusals.values()]
    counts = {s: sum(1 for v in status.values() if v == s) for s in ("accepted", "spooled", "refused")}
    return PushSummary(items=len(status), **counts, refusals=[r for r in kept if r.ids],
                       unreachable=unreachable if counts["spooled"] else None)
