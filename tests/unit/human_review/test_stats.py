"""Queue statistics a review lead can trust: κ with a CI, Wilson win rates with ties apart, reviewer
drift, and metric ↔ grade correlation; and the grades export keeps the items' metric scores."""

from __future__ import annotations

import random

import pytest
from lorafleet.human_review import crud, db, export, stats
from scipy.stats import binomtest

from lorafleet.samples import ReviewItem
from tests.unit.human_review.conftest import add_queue, add_user
from tests.unit.human_review.test_export import grade, put_items

OTHER = {"relevance": 4, "coherence": 4, "safety": 5}


def _stats(factory, queue: str) -> dict:  # noqa: ANN001
    with db.session_scope(factory) as s:
        return stats.queue_stats(s, queue=crud.get_queue(s, name=queue))


def _scored_items(n: int, seed: int = 0) -> list[tuple[ReviewItem, float]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rouge = rng.random()
        out.append((ReviewItem(id=f"run1:tuned:s{i}", prompt=f"q{i}", response=f"a{i}", source="eval",
                               scores={"rougeL": rouge, "exact_match": float(rng.random() < 0.5)},
                               metadata={"run_id": "run1", "target": "tuned", "sample_id": f"s{i}"}), rouge))
    return out


def test_repro_kappa_per_reviewer_pair_comes_with_a_bootstrap_ci(factory) -> None:  # noqa: ANN001
    for name in ("ann", "ben"):
        add_user(factory, name)
    add_queue(factory, "q", overlap=2, members=["ann", "ben"])
    put_items(factory, "q", [ReviewItem(id=f"i{i}", prompt="p", response="r") for i in range(30)])
    rng = random.Random(1)
    for i in range(30):
        level = rng.randint(1, 5)
        grade(factory, "q", f"i{i}", "ann", {**OTHER, "accuracy": level})
        grade(factory, "q", f"i{i}", "ben", {**OTHER, "accuracy": min(5, max(1, level + rng.choice([-1, 0, 0, 1])))})
    acc = next(a for a in _stats(factory, "q")["agreement"] if a["criterion"] == "accuracy")
    (pair,) = acc["kappa"]
    assert pair["a"] == "ann" and pair["b"] == "ben" and pair["n"] == 30
    lo, hi = pair["ci"]
    assert 0.5 < pair["kappa"] < 1 and lo < pair["kappa"] < hi and lo > 0
    assert acc["kappa_mean"] == pair["kappa"]


def test_repro_win_rate_counts_decisive_comparisons_with_a_wilson_ci_and_ties_apart(factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_queue(factory, "pq", pairwise=True, members=["ann"])
    put_items(factory, "pq", [ReviewItem(id=f"p{i}", prompt="p", responses={"base": "b", "v2": "t"})
                              for i in range(10)])
    for i, choice in enumerate(["v2"] * 6 + ["base"] * 2 + ["tie", "both_bad"]):
        with db.session_scope(factory) as s:
            from lorafleet.human_review.models import Grade, Item, User

            q = crud.get_queue(s, name="pq")
            item_id = s.query(Item.id).filter_by(queue_id=q.id, ext_id=f"p{i}").scalar()
            user_id = s.query(User.id).filter_by(name="ann").scalar()
            s.add(Grade(queue_id=q.id, item_id=item_id, reviewer_id=user_id, scores={}, choice=choice, created_at=0))
    out = _stats(factory, "pq")["pairwise"]
    v2 = next(r for r in out["ranking"] if r["target"] == "v2")
    assert (v2["wins"], v2["losses"], v2["ties"], v2["both_bad"], v2["decisive"]) == (6, 2, 1, 1, 8)
    assert v2["win_rate"] == 0.75  # 6 of 8 decisive; ties are not half-losses
    expected = binomtest(6, 8).proportion_ci(method="wilson")
    assert v2["win_rate_ci"] == pytest.approx([expected.low, expected.high], abs=1e-4)
    assert v2["tie_rate"] == 0.1 and v2["both_bad_rate"] == 0.1
    (h2h,) = out["head_to_head"]
    assert (h2h["a"], h2h["b"], h2h["a_wins"], h2h["b_wins"]) == ("base", "v2", 2, 6) and h2h["win_rate"] == 0.25


def test_repro_reviewer_drift_flags_the_lenient_reviewer(factory) -> None:  # noqa: ANN001
    for name in ("ann", "ben", "cat"):
        add_user(factory, name)
    add_queue(factory, "q", overlap=3, members=["ann", "ben", "cat"])
    put_items(factory, "q", [ReviewItem(id=f"i{i}", prompt="p", response="r") for i in range(25)])
    rng = random.Random(2)
    for i in range(25):
        level = rng.randint(1, 3)
        for name, bias in (("ann", 0), ("ben", 0), ("cat", 2)):
            noisy = min(5, max(1, level + bias + rng.choice([-1, 0, 0, 0, 1])))
            grade(factory, "q", f"i{i}", name, {**OTHER, "accuracy": noisy})
    drift = {d["reviewer"]: d for d in _stats(factory, "q")["drift"] if d["criterion"] == "accuracy"}
    cat = drift["cat"]
    assert cat["paired"] and cat["shared_items"] == 25 and cat["n"] == 25
    assert cat["flag"] == "higher" and 1.2 < cat["diff"] < 2.5 and cat["ci"][0] > 0
    assert drift["ann"]["flag"] != "higher" and drift["ben"]["flag"] != "higher"


def test_reviewer_drift_without_overlap_compares_group_means_and_says_n(factory) -> None:  # noqa: ANN001
    for name in ("ann", "ben"):
        add_user(factory, name)
    add_queue(factory, "q", members=["ann", "ben"])
    put_items(factory, "q", [ReviewItem(id=f"i{i}", prompt="p", response="r") for i in range(12)])
    for i in range(12):
        grade(factory, "q", f"i{i}", "ann" if i < 6 else "ben", {**OTHER, "accuracy": 5 if i < 6 else 2})
    drift = {d["reviewer"]: d for d in _stats(factory, "q")["drift"] if d["criterion"] == "accuracy"}
    assert not drift["ann"]["paired"] and drift["ann"]["n"] == 6 and drift["ann"]["others_n"] == 6
    assert drift["ann"]["diff"] == 3.0 and drift["ann"]["flag"] == "higher" and drift["ben"]["flag"] == "lower"


def test_repro_stats_correlate_item_metric_scores_with_grades(factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    scored = _scored_items(40)
    put_items(factory, "q", [it for it, _ in scored])
    rng, coin = random.Random(3), random.Random(4)
    for it, rouge in scored:  # the rule: accuracy follows rougeL plus noise; relevance is random
        accuracy = min(5, max(1, round(1 + 4 * rouge + rng.gauss(0, 0.5))))
        grade(factory, "q", it.id, "ann", {**OTHER, "accuracy": accuracy, "relevance": coin.randint(1, 5)})
    corr = _stats(factory, "q")["correlation"]
    assert corr["items_with_scores"] == 40 and corr["min_shared"] == 10
    cell = next(r for r in corr["rows"] if r["metric"] == "rougeL" and r["criterion"] == "accuracy")
    assert cell["n"] == 40 and cell["spearman"] > 0.7 and cell["spearman_ci"][0] > 0 and cell["kendall_ci"][0] > 0
    rand = next(r for r in corr["rows"] if r["metric"] == "rougeL" and r["criterion"] == "relevance")
    assert rand["spearman_ci"][0] < 0 < rand["spearman_ci"][1]
    # safety is 5 throughout: undefined, not a number
    flat = next(r for r in corr["rows"] if r["metric"] == "rougeL" and r["criterion"] == "safety")
    assert flat["spearman"] is None and "undefined" in flat["note"]


def test_correlation_with_too_few_items_is_not_enough_data_never_a_number(factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    scored = _scored_items(6)
    put_items(factory, "q", [it for it, _ in scored])
    for i, (it, _) in enumerate(scored):
        grade(factory, "q", it.id, "ann", {**OTHER, "accuracy": 1 + i % 5})
    rows = _stats(factory, "q")["correlation"]["rows"]
    assert rows and all(r["spearman"] is None and r["kendall"] is None and not r["enough"] for r in rows)
    assert all(r["note"].startswith("not enough data: 6 shared sample(s), need 10") for r in rows)


def test_repro_grades_export_keeps_the_items_metric_scores_and_eval_ids(factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    scored = _scored_items(2)
    put_items(factory, "q", [it for it, _ in scored])
    grade(factory, "q", scored[0][0].id, "ann", {**OTHER, "accuracy": 3})
    with db.session_scope(factory) as s:
        (row,) = list(export.export_rows(s, queue=crud.get_queue(s, name="q"), fmt="grades"))
    assert row["metric_scores"] == scored[0][0].scores and row["scores"]["accuracy"] == 3
    assert (row["run_id"], row["target"], row["sample_id"], row["source"]) == ("run1", "tuned", "s0", "eval")


def test_admin_page_shows_kappa_drift_and_correlation(client, factory) -> None:  # noqa: ANN001
    from tests.unit.human_review.conftest import login

    add_user(factory, "boss", role="admin")
    add_queue(factory, "q", members=["boss"])
    scored = _scored_items(12)
    put_items(factory, "q", [it for it, _ in scored])
    for it, rouge in scored:
        grade(factory, "q", it.id, "boss", {**OTHER, "accuracy": min(5, max(1, round(1 + 4 * rouge)))})
    login(client, "boss")
    html = client.get("/admin/q/q").text
    assert "Metric ↔ grade correlation" in html and "Spearman" in html and "rougeL" in html
    assert "not enough data" not in html.split('id="correlation"')[1].split("accuracy")[0]
