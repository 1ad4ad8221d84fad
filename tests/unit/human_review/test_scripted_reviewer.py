"""scripts/scripted_reviewer.py against the app in-process: logs in through the form, grades by its rule
from what the page shows, skips what the rule cannot judge, handles pairwise queues, refuses bad logins."""

from __future__ import annotations

import importlib.util
import random
import sys

import pytest
from lorafleet.human_review import crud, db, export

from tests.unit.human_review.conftest import GENERAL, PASSWORD, REPO, add_queue, add_user, ingest

_spec = importlib.util.spec_from_file_location("scripted_reviewer", REPO / "scripts" / "scripted_reviewer.py")
sr = importlib.util.module_from_spec(_spec)
sys.modules["scripted_reviewer"] = sr
_spec.loader.exec_module(sr)
TEXT = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"
WORDS = TEXT.split()


def _items(n: int) -> list[dict]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        keep = i / (n - 1)
        response = " ".join(w if rng.random() < keep else "x" for w in WORDS)
        out.append({"id": f"r:t:s{i}", "prompt": f"<q {i}>", "response": response, "reference": " ".join(WORDS),
                    "scores": {"rougeL": keep}})
    out.append({"id": "noref", "prompt": "p", "response": "r"})  # nothing to compare with: skipped
    return out


def test_it_grades_by_the_rule_through_the_form_and_skips_what_it_cannot_judge(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    ingest(client, "q", _items(12))
    summary = sr.review("", "ann", PASSWORD, "q", 50, sr.Reviewer("rougeL", "accuracy", 0.0, 0), client=client)
    assert summary["graded"] == 12 and summary["skipped"] == 1
    with db.session_scope(factory) as s:
        rows = list(export.export_rows(s, queue=crud.get_queue(s, name="q"), fmt="grades"))
    for r in rows:  # noise 0: accuracy = round(1 + 4·ROUGE-L) exactly, ROUGE-L recomputed from the page
        rouge = sr.Reviewer("rougeL", None, 0, 0).rouge_l(
            next(i for i in _items(12) if i["id"] == r["item"])["response"], " ".join(WORDS))
        assert r["scores"]["accuracy"] == min(5, max(1, round(1 + 4 * rouge)))
        assert set(r["scores"]) == {"relevance", "accuracy", "coherence", "safety"}
    by_item = {r["item"]: r["scores"]["accuracy"] for r in rows}
    assert by_item["r:t:s0"] <= 2 and by_item["r:t:s11"] == 5


def test_it_stops_at_n_and_on_a_pairwise_queue_picks_the_closer_side(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_queue(factory, "pq", pairwise=True, members=["ann"])
    ref = " ".join(WORDS)
    ingest(client, "pq", [{"id": f"p{i}", "prompt": "p", "reference": ref,
                           "responses": {"base": "nothing alike", "v2": ref}} for i in range(5)])
    summary = sr.review("", "ann", PASSWORD, "pq", 3, sr.Reviewer("rougeL", None, 0.0, 0), client=client)
    assert summary["graded"] == 3
    with db.session_scope(factory) as s:
        queue = crud.get_queue(s, name="pq")
        pairs = list(export.export_rows(s, queue=queue, fmt="pairs"))
    assert len(pairs) == 3 and all(p["chosen_target"] == "v2" for p in pairs)  # blind A/B order notwithstanding


def test_a_wrong_password_or_criterion_is_a_clear_failure(client, factory) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    ingest(client, "q", _items(3))
    with pytest.raises(SystemExit, match="login as 'ann' failed"):
        sr.review("", "ann", "wrong password!", "q", 1, sr.Reviewer("random", None, 0, 0), client=client)
    client.cookies.clear()
    with pytest.raises(SystemExit, match="no criterion 'tone'.*relevance, accuracy"):
        sr.review("", "ann", PASSWORD, "q", 1, sr.Reviewer("rougeL", "tone", 0, 0), client=client)
    assert GENERAL.is_file()
