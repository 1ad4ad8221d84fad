"""Send run samples to the human-review app through core's ReviewClient (spools when unreachable)."""

from __future__ import annotations

import random
from typing import Any

from lorafleet.evaluate.client import Completion
from lorafleet.evaluate.dataset import Sample
from lorafleet.evaluate.suite import ReviewSpec

from lorafleet.samples import ReviewClient, ReviewItem


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
                items.append(ReviewItem(
                    id=f"{run_id}:pair:{s.id}"[:200], prompt=s.messages, reference=s.reference or None,
                    responses={a: outputs[a][s.id].output, b: outputs[b][s.id].output}, source="eval",
                    metadata={**meta, "pairwise": [a, b], "sample_id": s.id,
                              "scores": {a: per_sample.get((a, s.id), {}), b: per_sample.get((b, s.id), {})}}))
    return items


def push_to_queues(client: ReviewClient, spec: ReviewSpec, items: list[ReviewItem]) -> bool:
    """Rubric items to `spec.queue`, A/B items to the pairwise queue; True when nothing is spooled."""
    rubric = [i for i in items if i.responses is None]
    pairs = [i for i in items if i.responses is not None]
    sent = push(client, spec.queue, rubric) if rubric else True
    if pairs:
        sent = push(client, spec.pairwise_target_queue, pairs) and sent
    return sent


def push(client: ReviewClient, queue: str, items: list[ReviewItem]) -> bool:
    """Push in batches the ingest API accepts; True when nothing is left spooled."""
    ok = True
    for start in range(0, len(items), 500):
        ok = client.push(queue, items[start:start + 500]) and ok
    return ok
