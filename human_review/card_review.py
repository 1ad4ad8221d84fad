"""card.review: each adapter version's grades summary and agreement, recomputed from the database and
written to its registry card under the registry lock.

Every write is a full recompute from the database, so it is idempotent and order-safe: a summary read
earlier than the one on the card is never written over it (`updated_at` compares). Grade submits and
ingests only note the version in the card_updates outbox (same transaction); `CardWriter` flushes the
outbox off the request path every few seconds, and `sync_all` rewrites every version (`review sync-cards`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lorafleet.human_review import card_outbox
from lorafleet.human_review.models import Grade, Item, Queue
from lorafleet.human_review.rubrics import Rubric
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lorafleet import correlation
from lorafleet.card import AdapterCard
from lorafleet.errors import InvalidNameError, NotFoundError
from lorafleet.periodic import Periodic
from lorafleet.registry import Registry
from lorafleet.review_summary import CardReview, CriterionSummary, GradeSummary, PairwiseSummary, QueueSummary

log = logging.getLogger(__name__)

MEAN_REPS = 1000  # bootstrap draws of the mean: a list mean per draw, cheap
ALPHA_REPS = 300  # Krippendorff's α costs ~1 ms a call; 300 draws keep one version's recompute well under 1 s
MIN_ALPHA_ITEMS = 5

# item id -> reviewer id -> level, one criterion
ByItem = dict[int, dict[int, int]]


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _flat_mean(units: Sequence[Sequence[int]]) -> float:
    values = [v for u in units for v in u]
    return sum(values) / len(values) if values else float("nan")


def criterion_summary(by_item: ByItem, scale: tuple[int, int] | None) -> CriterionSummary:
    """n, mean (CI over items) and Krippendorff's α (ordinal, CI over items) of one criterion's grades."""
    units = [list(g.values()) for g in by_item.values() if g]
    n = sum(len(u) for u in units)
    reviewers = sorted({r for g in by_item.values() for r in g})
    mean = _flat_mean(units) if n else None
    ci = correlation.bootstrap_ci(units, _flat_mean, reps=MEAN_REPS) if n else None
    alpha = correlation.alpha_ci([[g.get(r) for r in reviewers] for g in by_item.values() if len(g) >= 2],
                                 level="ordinal", reps=ALPHA_REPS, min_items=MIN_ALPHA_ITEMS)
    return CriterionSummary(
        n=n, items=len(units), reviewers=len(reviewers), scale=scale, mean=_r(mean),
        mean_ci=(_r(ci[0]), _r(ci[1])) if ci else None, alpha=_r(alpha.value),
        alpha_ci=(_r(alpha.ci[0]), _r(alpha.ci[1])) if alpha.ci else None, alpha_items=alpha.n, alpha_note=alpha.note)


@dataclass
class _Part:
    """Items and grades of one slice (a queue, all, captured): what a GradeSummary is computed from."""

    items: set[int] = field(default_factory=set)
    grades: int = 0
    reviewers: set[int] = field(default_factory=set)
    graded: set[int] = field(default_factory=set)
    # (criterion, scale) -> item -> reviewer -> level
    levels: dict[tuple[str, tuple[int, int]], ByItem] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(dict)))

    def summary(self, cls: type[GradeSummary] = GradeSummary, **extra: Any) -> Any:
        criteria, note = _pooled(self.levels)
        return cls(items=len(self.items), graded_items=len(self.graded), grades=self.grades,
                   reviewers=len(self.reviewers), criteria=criteria, **extra), note


def _pooled(levels: dict[tuple[str, tuple[int, int]], ByItem]) -> tuple[dict[str, CriterionSummary], str | None]:
    """One summary per criterion name; where queues grade it on different scales, its most-graded scale wins."""
    by_name: dict[str, list[tuple[tuple[int, int], ByItem]]] = defaultdict(list)
    for (name, scale), by_item in levels.items():
        by_name[name].append((scale, by_item))
    out, notes = {}, []
    for name, options in by_name.items():
        options.sort(key=lambda o: -sum(len(g) for g in o[1].values()))
        scale, by_item = options[0]
        if len(options) > 1:
            notes.append(f"{name}: pooled over scale {list(scale)} only (also graded on "
                         f"{', '.join(str(list(s)) for s, _ in options[1:])})")
        out[name] = criterion_summary(by_item, scale)
    return out, "; ".join(notes) or None


def version_review(session: Session, adapter: str, *, now: float | None = None) -> CardReview | None:
    """card.review of one exact version from the database (deleted queues left out): rubric queues pooled
    per criterion, pairwise queues as win rates; None when no live queue holds an item of it."""
    now = time.time() if now is None else now
    held = select(Item.queue_id).where(Item.adapter == adapter).distinct()  # no DISTINCT over JSON columns
    queues = {q.id: q for q in session.scalars(select(Queue).where(Queue.id.in_(held), Queue.deleted_at.is_(None)))}
    if not queues:
        return None
    pairwise = {qid: q for qid, q in queues.items() if q.mode == "pairwise"}
    queues = {qid: q for qid, q in queues.items() if q.mode != "pairwise"}
    items = session.execute(select(Item.id, Item.queue_id, Item.data).where(
        Item.adapter == adapter, Item.queue_id.in_(queues))).all()
    source = {item_id: (data or {}).get("source") or "import" for item_id, _q, data in items}
    everything, captured = _Part(), _Part()
    per_queue: dict[int, _Part] = defaultdict(_Part)
    q_sources: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    q_runs: dict[int, list[str]] = defaultdict(list)
    for item_id, queue_id, data in items:
        for part in (everything, per_queue[queue_id], *([captured] if source[item_id] == "capture" else [])):
            part.items.add(item_id)
        q_sources[queue_id][source[item_id]] += 1
        run = ((data or {}).get("metadata") or {}).get("run_id")
        if isinstance(run, str) and run not in q_runs[queue_id]:
            q_runs[queue_id].append(run)
    scales = {qid: {c.name: tuple(c.scale) for c in Rubric.model_validate(q.rubric).criteria}
              for qid, q in queues.items() if q.mode == "rubric"}
    for item_id, queue_id, reviewer, scores in session.execute(
            select(Grade.item_id, Grade.queue_id, Grade.reviewer_id, Grade.scores)
            .join(Item, Item.id == Grade.item_id).where(Item.adapter == adapter, Grade.queue_id.in_(queues))):
        parts = (everything, per_queue[queue_id], *([captured] if source.get(item_id) == "capture" else []))
        for part in parts:
            part.grades += 1
            part.reviewers.add(reviewer)
            part.graded.add(item_id)
            for crit, level in (scores or {}).items():
                if crit in scales.get(queue_id, {}) and isinstance(level, int | float):
                    part.levels[(crit, scales[queue_id][crit])][item_id][reviewer] = int(level)
    queue_out, notes = {}, []
    for qid, q in sorted(queues.items(), key=lambda kv: kv[1].name):
        summary, note = per_queue[qid].summary(QueueSummary, mode=q.mode, rubric=(q.rubric or {}).get("name"),
                                               sources=dict(q_sources[qid]), eval_runs=q_runs[qid])
        queue_out[q.name] = summary
    total, note = everything.summary()
    notes += [note] if note else []
    capture, _ = captured.summary()
    pairs = {q.name: _pairwise(session, adapter, q) for q in sorted(pairwise.values(), key=lambda q: q.name)}
    runs = list(dict.fromkeys([*(r for qid in sorted(q_runs) for r in q_runs[qid]),
                               *(r for p in pairs.values() for r in p.eval_runs)]))
    return CardReview(adapter=adapter, updated_at=datetime.fromtimestamp(now, UTC), **total.model_dump(),
                      capture=capture, queues=queue_out, pairwise=pairs, eval_runs=runs,
                      pooling_note="; ".join(notes) or None)


def _pairwise(session: Session, adapter: str, queue: Queue) -> PairwiseSummary:
    """This version's A/B record in one pairwise queue: the side it answered (metadata.served) against the other."""
    mine: dict[int, tuple[str, str]] = {}  # item -> (its label, the opponent's served name or label)
    runs: list[str] = []
    for item_id, data in session.execute(select(Item.id, Item.data).where(Item.adapter == adapter,
                                                                          Item.queue_id == queue.id)):
        meta = (data or {}).get("metadata") or {}
        served = meta.get("served") if isinstance(meta.get("served"), dict) else {}
        labels = sorted((data or {}).get("responses") or {})
        side = next((lab for lab in labels if served.get(lab) == adapter), None)
        if side is None or len(labels) != 2:
            continue  # which side this version answered is unknown: not counted
        other = labels[1] if side == labels[0] else labels[0]
        mine[item_id] = (side, str(served.get(other) or other))
        if isinstance(meta.get("run_id"), str) and meta["run_id"] not in runs:
            runs.append(meta["run_id"])
    tally = {"wins": 0, "losses": 0, "ties": 0, "both_bad": 0}
    reviewers, graded = set(), set()
    for item_id, reviewer, choice in session.execute(select(Grade.item_id, Grade.reviewer_id, Grade.choice).where(
            Grade.queue_id == queue.id, Grade.item_id.in_(list(mine)))):
        side, _ = mine[item_id]
        key = {side: "wins", "tie": "ties", "both_bad": "both_bad"}.get(choice or "", "losses" if choice else None)
        if key is None:
            continue
        tally[key] += 1
        reviewers.add(reviewer)
        graded.add(item_id)
    decisive, total = tally["wins"] + tally["losses"], sum(tally.values())
    ci = correlation.wilson_ci(tally["wins"], decisive)
    return PairwiseSummary(
        items=len(mine), graded_items=len(graded), comparisons=total, reviewers=len(reviewers),
        opponents=sorted({o for _, o in mine.values()}), **tally,
        win_rate=_r(tally["wins"] / decisive) if decisive else None,
        win_rate_ci=(_r(ci[0]), _r(ci[1])) if ci else None,
        tie_rate=_r(tally["ties"] / total) if total else None, eval_runs=runs)


def review_field(review: CardReview | None) -> dict[str, Any]:
    """The JSON that goes into card.review ({} when nothing is left to summarise)."""
    return review.model_dump(mode="json") if review is not None else {}


def write_card(registry: Registry, adapter: str, review: CardReview | None, *, as_of: float) -> bool:
    """Write card.review under the registry lock unless the card holds a summary read later; True when written."""
    wrote = False
    stamp = datetime.fromtimestamp(as_of, UTC)

    def apply(card: AdapterCard) -> dict[str, Any]:
        nonlocal wrote
        old = card.review.get("updated_at") if card.review else None
        try:
            if old is not None and datetime.fromisoformat(str(old)) > stamp:
                return {}  # another writer (the app, or sync-cards) already wrote a newer read
        except ValueError:
            pass  # an unreadable stamp: ours replaces it
        new = review_field(review)
        if new == card.review:
            return {}
        wrote = True
        return {"review": new}

    registry.update_card_with(adapter, apply)
    return wrote


class NotInRegistry(Exception):
    """The version is not in this registry (another deployment's adapter, or removed)."""


def sync_version(factory: sessionmaker[Session], registry: Registry, adapter: str) -> CardReview | None:
    """Recompute one version's summary and write it; raises NotInRegistry when the registry lacks it."""
    now = time.time()
    session = factory()
    try:
        review = version_review(session, adapter, now=now)
    finally:
        session.close()
    try:
        write_card(registry, adapter, review, as_of=now)
    except (NotFoundError, InvalidNameError) as exc:
        raise NotInRegistry(str(exc)) from None
    return review


@dataclass
class FlushReport:
    written: list[str] = field(default_factory=list)
    not_in_registry: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # kept in the outbox, retried next round


def flush(factory: sessionmaker[Session], registry: Registry, *, limit: int = 100) -> FlushReport:
    """Write the cards the outbox names; a row leaves the outbox only once its card was written (or cannot be)."""
    from lorafleet.human_review.db import session_scope, writing

    report = FlushReport()
    with session_scope(factory) as session:
        todo = card_outbox.pending(session, limit=limit)
    for adapter, seq in todo:
        try:
            sync_version(factory, registry, adapter)
            report.written.append(adapter)
        except NotInRegistry:
            report.not_in_registry.append(adapter)
        except Exception as exc:  # noqa: BLE001 - lock timeout, disk, a bad card: keep the row, retry later;
            report.failed[adapter] = f"{exc.__class__.__name__}: {exc}"  # one bad version never stalls the rest
            continue
        with session_scope(factory) as session, writing(session):
            card_outbox.done(session, adapter=adapter, seq=seq)
    return report


def sync_all(factory: sessionmaker[Session], registry: Registry) -> FlushReport:
    """Recompute every version any live queue holds (and everything the outbox names): `review sync-cards`."""
    from lorafleet.human_review.db import session_scope, writing

    with session_scope(factory) as session:
        adapters = {a for a in session.scalars(select(Item.adapter).where(Item.adapter.is_not(None)).distinct())}
        queued = dict(card_outbox.pending(session, limit=1_000_000))
    report = FlushReport()
    for adapter in sorted(a for a in adapters | set(queued) if card_outbox.is_version(a)):
        try:
            sync_version(factory, registry, adapter)
            report.written.append(adapter)
        except NotInRegistry:
            report.not_in_registry.append(adapter)
        except Exception as exc:  # noqa: BLE001 - reported per version; the others are still written
            report.failed[adapter] = f"{exc.__class__.__name__}: {exc}"
            continue
        if adapter in queued:
            with session_scope(factory) as session, writing(session):
                card_outbox.done(session, adapter=adapter, seq=queued[adapter])
    return report


class CardWriter:
    """Background task of the review app: flushes the outbox every `interval` seconds in a worker thread."""

    def __init__(self, factory: sessionmaker[Session], registry: Registry, *, interval: float = 2.0) -> None:
        self.factory = factory
        self.registry = registry
        self.interval = interval
        self._rounds: Periodic | None = None
        self._unknown: set[str] = set()  # versions not in this registry, logged once each

    def start(self) -> None:
        self._rounds = Periodic(self._round, self.interval, what="card.review: flushing the outbox", logger=log)
        self._rounds.start()

    async def stop(self) -> None:
        """Cancel the rounds, then flush once more so grades given just before shutdown reach their cards."""
        if self._rounds is not None:
            await self._rounds.stop()
            await asyncio.to_thread(self._flush_logged)

    async def _round(self) -> None:
        await asyncio.to_thread(self._flush_logged)

    def _flush_logged(self) -> FlushReport | None:
        try:
            report = flush(self.factory, self.registry)
        except Exception:  # noqa: BLE001 - the outbox keeps the rows; try again next round, never silently
            log.exception("card.review: flushing the outbox failed; retrying in %.0f s", self.interval)
            return None
        for adapter in set(report.not_in_registry) - self._unknown:
            log.info("card.review: %s is not in the registry %s; its grades are not written to a card",
                     adapter, self.registry.root)
            self._unknown.add(adapter)
        for adapter, why in report.failed.items():
            log.warning("card.review: writing %s failed (%s); retrying in %.0f s", adapter, why, self.interval)
        return report
