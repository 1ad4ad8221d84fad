"""card.review cost: what a grade submit pays for noting its version in the outbox (side by side with items
that name no version, interleaved in one run), and how long one version's recompute + card write takes.

    .venv/bin/python benchmarks/review_cards.py                 # SQLite, 400 submits, recompute at 50/200/1000 items
    .venv/bin/python benchmarks/review_cards.py --submits 100 --sizes 50,200
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--submits", type=int, default=400, help="Grade submits per arm.")
    parser.add_argument("--sizes", default="50,200,1000", help="Items per version (2 grades each) to recompute.")
    args = parser.parse_args()

    from lorafleet.human_review import card_review, crud, db, leases
    from lorafleet.human_review.schemas import GradeIn
    from lorafleet.human_review.service import open_db
    from lorafleet.human_review.settings import ReviewSettings

    from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo
    from lorafleet.registry import Registry
    from lorafleet.samples import ReviewItem
    from tests.unit.core.peft_files import write_fake_peft
    from tests.unit.human_review.conftest import add_queue, add_user

    tmp = Path(tempfile.mkdtemp(prefix="review-cards-"))
    settings = ReviewSettings(data_dir=tmp, review_database_url=f"sqlite:///{tmp / 'review.db'}")
    factory = open_db(settings)
    registry = Registry(tmp / "registry")
    sizes = [int(s) for s in args.sizes.split(",")]
    for _ in range(len(sizes) + 1):
        card = AdapterCard(name="bench", version="v1", base=BaseModelRef(id="tiny"),
                           lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj"]))
        registry.register("bench", write_fake_peft(tmp / "peft"), card)
    ann, ben = add_user(factory, "ann"), add_user(factory, "ben")
    grade = GradeIn(scores={"relevance": 4, "accuracy": 3, "coherence": 4, "safety": 5})

    # 1. submit latency: items naming a version (outbox row written in the grade's transaction) vs none,
    #    interleaved so both arms see the same database state.
    add_queue(factory, "sub", members=["ann"])
    with db.session_scope(factory) as s:
        q = crud.get_queue(s, name="sub")
        crud.ingest(s, queue=q, items=[ReviewItem(id=f"{arm}{i}", prompt="p", response="r",
                                                  adapter="bench@v1" if arm == "v" else None)
                                       for i in range(args.submits) for arm in ("v", "n")])
    times: dict[str, list[float]] = {"version": [], "none": []}
    with factory() as s:
        q = crud.get_queue(s, name="sub")
        while (lease := leases.next_item(s, queue=q, reviewer_id=ann, lease_seconds=60)) is not None:
            t0 = time.perf_counter()
            leases.submit(s, queue=q, item=lease.item, reviewer_id=ann, grade=grade)
            times["version" if lease.item.adapter else "none"].append(time.perf_counter() - t0)
    out: dict[str, object] = {"submit_ms": {arm: {"n": len(v), "p50": round(statistics.median(v) * 1e3, 3),
                                                  "p95": round(sorted(v)[int(len(v) * 0.95)] * 1e3, 3)}
                                            for arm, v in times.items()}}

    # 2. one version's recompute (all four criteria, mean CIs and α CIs) and its locked card write.
    recompute = []
    for k, n in enumerate(sizes, start=2):
        ref = f"bench@v{k}"
        name = f"rc{n}"
        add_queue(factory, name, overlap=2, members=["ann", "ben"])
        with db.session_scope(factory) as s:
            crud.ingest(s, queue=crud.get_queue(s, name=name),
                        items=[ReviewItem(id=f"i{i}", prompt="p", response="r", adapter=ref) for i in range(n)])
        with factory() as s:
            q = crud.get_queue(s, name=name)
            for i in range(2 * n):
                reviewer = (ann, ben)[i % 2]
                lease = leases.next_item(s, queue=q, reviewer_id=reviewer, lease_seconds=60)
                g = GradeIn(scores={**grade.scores, "accuracy": 1 + (i * 7) % 5})
                leases.submit(s, queue=q, item=lease.item, reviewer_id=reviewer, grade=g)
        t0 = time.perf_counter()
        with factory() as s:
            review = card_review.version_review(s, ref)
        t1 = time.perf_counter()
        card_review.write_card(registry, ref, review, as_of=time.time())
        t2 = time.perf_counter()
        recompute.append({"items": n, "grades": 2 * n, "compute_s": round(t1 - t0, 3), "write_s": round(t2 - t1, 4)})
    out["recompute"] = recompute
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
