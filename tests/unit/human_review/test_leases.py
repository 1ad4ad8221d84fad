"""Leases, expiry, exactly-k overlap under concurrency, idempotent submit — on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest
from lorafleet.human_review import crud, db, leases
from lorafleet.human_review.errors import Conflict, ReviewError
from lorafleet.human_review.models import Grade, Slot
from lorafleet.human_review.schemas import GradeIn
from sqlalchemy import func, select

from lorafleet.samples import ReviewItem
from tests.unit.human_review.conftest import add_queue, add_user, items

GOOD = GradeIn(scores={"relevance": 4, "accuracy": 5, "coherence": 4, "safety": 5})


def _fill(factory, queue: str, n: int, **kw) -> None:  # noqa: ANN001, ANN003
    with db.session_scope(factory) as s:
        crud.ingest(s, queue=crud.get_queue(s, name=queue), items=[ReviewItem(**r) for r in items(n, **kw)])


def _next(factory, queue: str, reviewer: int, now: float | None = None, seconds: float = 60):  # noqa: ANN001, ANN202
    with factory() as s:
        lease = leases.next_item(s, queue=crud.get_queue(s, name=queue), reviewer_id=reviewer,
                                 lease_seconds=seconds, now=now)
        return None if lease is None else lease.item.ext_id


def _submit(factory, queue: str, reviewer: int, ext_id: str, grade: GradeIn = GOOD, now: float | None = None):  # noqa: ANN001, ANN202
    with factory() as s:
        q = crud.get_queue(s, name=queue)
        item = next(i for i in s.scalars(select(leases.Item).where(leases.Item.queue_id == q.id,
                                                                   leases.Item.ext_id == ext_id)))
        grade_row, created = leases.submit(s, queue=q, item=item, reviewer_id=reviewer, grade=grade, now=now)
        return grade_row.id, created


def test_two_reviewers_never_hold_the_same_slot_and_refresh_returns_the_held_item(factory) -> None:  # noqa: ANN001
    a, b = add_user(factory, "a"), add_user(factory, "b")
    add_queue(factory, "q")
    _fill(factory, "q", 2)
    first = _next(factory, "q", a)
    assert _next(factory, "q", a) == first  # refresh / back button: same lease
    second = _next(factory, "q", b)
    assert second is not None and second != first
    assert _next(factory, "q", add_user(factory, "c")) is None  # overlap 1: both items are held


def test_an_expired_lease_returns_the_item_to_the_pool(factory) -> None:  # noqa: ANN001
    a, b = add_user(factory, "a"), add_user(factory, "b")
    add_queue(factory, "q")
    _fill(factory, "q", 1)
    took = _next(factory, "q", a, now=1000.0, seconds=30)
    assert _next(factory, "q", b, now=1029.0) is None  # still leased
    assert _next(factory, "q", b, now=1031.0) == took  # expired: b gets it
    with pytest.raises(Conflict):  # a's late submit is refused: the slot is b's now
        _submit(factory, "q", a, took, now=1032.0)
    assert _submit(factory, "q", b, took)[1] is True


def test_a_late_submit_is_kept_when_nobody_took_the_slot(factory) -> None:  # noqa: ANN001
    a = add_user(factory, "a")
    add_queue(factory, "q")
    _fill(factory, "q", 1)
    took = _next(factory, "q", a, now=1000.0, seconds=30)
    assert _submit(factory, "q", a, took, now=5000.0)[1] is True


def test_submit_is_idempotent(factory) -> None:  # noqa: ANN001
    a = add_user(factory, "a")
    add_queue(factory, "q", overlap=2)
    _fill(factory, "q", 1)
    took = _next(factory, "q", a)
    first = _submit(factory, "q", a, took)
    again = _submit(factory, "q", a, took, grade=GradeIn(scores={**GOOD.scores, "accuracy": 1}))
    assert first[1] is True and again == (first[0], False)
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Grade)) == 1
        assert s.scalar(select(func.count()).select_from(Slot).where(Slot.state == "done")) == 1
    assert _next(factory, "q", a) is None  # never the same item twice for one reviewer


def test_skip_frees_the_slot_and_hides_the_item_from_that_reviewer(factory) -> None:  # noqa: ANN001
    a, b = add_user(factory, "a"), add_user(factory, "b")
    add_queue(factory, "q")
    _fill(factory, "q", 1)
    took = _next(factory, "q", a)
    with factory() as s:
        leases.skip(s, item=s.scalar(select(leases.Item).where(leases.Item.ext_id == took)), reviewer_id=a)
    assert _next(factory, "q", a) is None
    assert _next(factory, "q", b) == took


@pytest.mark.parametrize("bad", [
    {"scores": {"relevance": 4}},                                                           # missing criteria
    {"scores": {"relevance": 9, "accuracy": 5, "coherence": 4, "safety": 5}},               # off the scale
    {"scores": {**GOOD.scores, "vibes": 3}},                                                # unknown criterion
])
def test_grades_that_do_not_fit_the_rubric_are_refused(factory, bad) -> None:  # noqa: ANN001
    a = add_user(factory, "a")
    add_queue(factory, "q")
    _fill(factory, "q", 1)
    took = _next(factory, "q", a)
    with pytest.raises(ReviewError):
        _submit(factory, "q", a, took, grade=GradeIn(**bad))


def test_pairwise_choice_maps_back_to_the_target_whatever_the_side(factory) -> None:  # noqa: ANN001
    reviewers = [add_user(factory, f"r{i}") for i in range(8)]
    add_queue(factory, "pq", overlap=8, pairwise=True)
    _fill(factory, "pq", 1, pairwise=True)
    seen_flips = set()
    for r in reviewers:
        with factory() as s:
            q = crud.get_queue(s, name="pq")
            lease = leases.next_item(s, queue=q, reviewer_id=r, lease_seconds=60, rng=random.Random(r))
            sides = dict(leases.pairwise_sides(lease.item, lease.slot))
            seen_flips.add(lease.slot.flipped)
            shown = "A" if sides["A"].startswith("tuned") else "B"  # always pick the tuned answer
            grade, _ = leases.submit(s, queue=q, item=lease.item, reviewer_id=r, grade=GradeIn(choice=shown))
            assert grade.choice == "support@v2"
    assert seen_flips == {True, False}  # sides really are randomised


@pytest.mark.slow
def test_exactly_k_overlap_with_20_reviewers_racing_over_500_items(factory) -> None:  # noqa: ANN001
    k, n_items, n_reviewers = 2, 500, 20
    reviewers = [add_user(factory, f"r{i}") for i in range(n_reviewers)]
    add_queue(factory, "race", overlap=k)
    _fill(factory, "race", n_items)
    errors: list[BaseException] = []

    def work(reviewer: int) -> None:
        rng = random.Random(reviewer)
        try:
            with factory() as s:
                q = crud.get_queue(s, name="race")
                while (lease := leases.next_item(s, queue=q, reviewer_id=reviewer, lease_seconds=600, rng=rng)):
                    leases.submit(s, queue=q, item=lease.item, reviewer_id=reviewer, grade=GOOD)
                    if rng.random() < 0.05:  # double submits along the way
                        assert leases.submit(s, queue=q, item=lease.item, reviewer_id=reviewer, grade=GOOD)[1] is False
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r,)) for r in reviewers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    with factory() as s:
        pairs = s.execute(select(Grade.item_id, Grade.reviewer_id)).all()
    assert len(pairs) == len(set(pairs))  # nobody graded an item twice
    per_item = Counter(item for item, _ in pairs)
    assert len(per_item) == n_items  # none lost
    assert set(per_item.values()) == {k}  # exactly k each
