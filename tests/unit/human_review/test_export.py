"""Training export with overlap: one record per item by a stated policy, conflicts reported, eval-run
items left out, records whose prompt is held out refused (exit 1)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from lorafleet.human_review import crud, db, export
from lorafleet.human_review.models import Grade, Item, User
from lorafleet.human_review.service import export_records, open_db
from lorafleet.human_review.settings import ReviewSettings

from lorafleet.errors import HeldOutError
from lorafleet.heldout import HeldOutIndex
from lorafleet.samples import ReviewItem
from tests.unit.human_review.conftest import add_queue, add_user
from tests.unit.human_review.test_cli import run

APPROVE = {"relevance": 5, "accuracy": 4, "coherence": 5, "safety": 5}
REJECT = {"relevance": 1, "accuracy": 1, "coherence": 2, "safety": 5}


def grade(factory, queue: str, item: str, reviewer: str, scores: dict, correction: str | None = None) -> None:  # noqa: ANN001
    """A submitted grade, written directly (the export only reads grades, not slots)."""
    with db.session_scope(factory) as s:
        q = crud.get_queue(s, name=queue)
        item_id = s.query(Item.id).filter_by(queue_id=q.id, ext_id=item).scalar()
        user_id = s.query(User.id).filter_by(name=reviewer).scalar()
        s.add(Grade(queue_id=q.id, item_id=item_id, reviewer_id=user_id, scores=scores, correction=correction,
                    created_at=time.time()))


def put_items(factory, queue: str, rows: list[ReviewItem]) -> None:  # noqa: ANN001
    with db.session_scope(factory) as s:
        crud.ingest(s, queue=crud.get_queue(s, name=queue), items=rows)


def item(i: int, **kw) -> ReviewItem:  # noqa: ANN003
    return ReviewItem(id=f"i{i}", prompt=f"question {i}", response=f"answer {i}", adapter="support@v3", **kw)


@pytest.fixture
def overlap_queue(factory):  # noqa: ANN001, ANN201
    """k=2 (ann, ben) on five items, plus the admin boss on one: agreeing and conflicting grades."""
    for name in ("ann", "ben"):
        add_user(factory, name)
    add_user(factory, "boss", role="admin")
    add_queue(factory, "q", overlap=2, members=["ann", "ben"])
    put_items(factory, "q", [item(i) for i in range(5)])
    grade(factory, "q", "i0", "ann", APPROVE)  # both approve
    grade(factory, "q", "i0", "ben", APPROVE)
    grade(factory, "q", "i1", "ann", REJECT, "fixed answer 1")  # same correction (spacing aside)
    grade(factory, "q", "i1", "ben", REJECT, "fixed  answer 1 ")
    grade(factory, "q", "i2", "ann", REJECT, "X")  # different corrections; the admin sides with ben
    grade(factory, "q", "i2", "ben", REJECT, "Y")
    grade(factory, "q", "i2", "boss", REJECT, "Y")
    grade(factory, "q", "i3", "ann", APPROVE)  # approve vs reject without a correction: a tie
    grade(factory, "q", "i3", "ben", REJECT)
    grade(factory, "q", "i4", "ann", REJECT)  # both reject, nobody corrects: no record, no conflict
    grade(factory, "q", "i4", "ben", REJECT)
    return factory


def _training(factory, resolve: str) -> export.TrainingExport:  # noqa: ANN001
    with db.session_scope(factory) as s:
        return export.training_export(s, queue=crud.get_queue(s, name="q"), resolve=resolve)


def _answers(result: export.TrainingExport) -> list[tuple[str, str]]:
    return [(r["item"], r["messages"][-1]["content"]) for r in result.records]


def test_majority_one_record_per_item_and_ties_are_conflicts(overlap_queue) -> None:  # noqa: ANN001
    result = _training(overlap_queue, "majority")
    assert _answers(result) == [("i0", "answer 0"), ("i1", "fixed answer 1"), ("i2", "Y")]
    first = result.records[0]
    assert first["provenance"] == "approved" and first["votes"] == 2 and first["grades"] == 2
    assert first["reviewers"] == ["ann", "ben"] and first["resolve"] == "majority"
    assert result.records[2]["votes"] == 2 and result.records[2]["grades"] == 3
    assert [(c.item, c.why) for c in result.conflicts] == [("i3", "tie")]
    assert result.conflicts[0].answers == {"answer 3": 1, "-": 1}


def test_adjudicated_exports_only_what_an_admin_decided(overlap_queue) -> None:  # noqa: ANN001
    result = _training(overlap_queue, "adjudicated")
    assert _answers(result) == [("i2", "Y")]
    assert result.records[0]["reviewer"] == "boss" and result.records[0]["reviewers"] == ["ben", "boss"]
    assert result.unadjudicated == 4
    assert [(c.item, c.why) for c in result.conflicts] == [("i3", "awaiting adjudication")]


def test_all_keeps_every_grade_and_marks_duplicates_and_conflicts(overlap_queue) -> None:  # noqa: ANN001
    result = _training(overlap_queue, "all")
    assert [i for i, _ in _answers(result)] == ["i0", "i0", "i1", "i1", "i2", "i2", "i2", "i3"]
    assert all(r["grades"] == (3 if r["item"] == "i2" else 2) for r in result.records)
    assert {r["item"]: r["conflict"] for r in result.records} == {"i0": False, "i1": False, "i2": True,
                                                                  "i3": True}
    assert [c.item for c in result.conflicts] == ["i2", "i3"]


def _cli_db(tmp_path: Path):  # noqa: ANN202
    data = tmp_path / "data"
    settings = ReviewSettings(data_dir=data)
    factory = open_db(settings)
    add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    return data, factory


def test_repro_eval_items_not_exported_for_training(capsys, tmp_path: Path) -> None:
    """Issue 14, reproduction 2 (export half): corrections of items `eval run --push-review` sent (test-split
    prompts) were exported for training with no marker. Now they are left out unless --include-held-out."""
    data, factory = _cli_db(tmp_path)
    put_items(factory, "q", [item(0), item(1, source="eval", metadata={"run_id": "r1", "suite": "intents"})])
    grade(factory, "q", "i0", "ann", REJECT, "fixed 0")
    grade(factory, "q", "i1", "ann", REJECT, "fixed 1")
    dd = ["--data-dir", str(data)]
    out = tmp_path / "train.jsonl"
    code, _, err = run(capsys, *dd, "review", "export", "q", "--format", "training", "-o", str(out))
    assert code == 0, err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["item"] for r in rows] == ["i0"] and "held_out" not in rows[0]
    assert "left out 1 item(s) from eval runs" in err and "i1" in err

    code, stdout, err = run(capsys, *dd, "review", "export", "q", "--format", "training", "--include-held-out")
    assert code == 0, err
    rows = [json.loads(x) for x in stdout.splitlines()]
    assert [r["item"] for r in rows] == ["i0", "i1"]
    assert rows[1]["held_out"] is True and rows[1]["run_id"] == "r1" and rows[1]["source"] == "eval"


def test_records_whose_prompt_is_held_out_are_refused(capsys, tmp_path: Path) -> None:
    data, factory = _cli_db(tmp_path)
    put_items(factory, "q", [item(0), item(1)])
    grade(factory, "q", "i0", "ann", APPROVE)
    grade(factory, "q", "i1", "ann", APPROVE)
    test_file = tmp_path / "test.jsonl"
    test_file.write_text(json.dumps({"messages": [{"role": "user", "content": "Question 1!"},
                                                  {"role": "assistant", "content": "x"}]}) + "\n")
    HeldOutIndex(data).add_file(test_file, "test")
    dd = ["--data-dir", str(data)]
    out = tmp_path / "train.jsonl"
    code, _, err = run(capsys, *dd, "review", "export", "q", "--format", "training", "-o", str(out))
    assert code == 1 and "Traceback" not in err
    assert "review item q:i1: matches held-out test" in err and "test.jsonl:1" in err and "--allow-held-out" in err
    assert "review item q:i0" not in err and not out.exists()  # nothing half-written

    code, stdout, err = run(capsys, *dd, "review", "export", "q", "--format", "training", "-o", str(out),
                            "--allow-held-out", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["records"] == 2 and [m["where"] for m in summary["held_out_allowed"]] == ["review item q:i1"]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[1]["held_out"] is True and rows[1]["held_out_source"].endswith("test.jsonl:1")
    assert "warning (--allow-held-out)" in err

    with pytest.raises(HeldOutError):
        export_records(factory, queue="q", fmt="training", data_dir=data)


def test_conflicts_are_listed_on_stderr_and_in_json(capsys, tmp_path: Path) -> None:
    data = tmp_path / "data"
    factory = open_db(ReviewSettings(data_dir=data))
    for name in ("ann", "ben"):
        add_user(factory, name)
    add_queue(factory, "q", overlap=2, members=["ann", "ben"])
    put_items(factory, "q", [item(0), item(1)])
    for reviewer, fix in (("ann", "A"), ("ben", "B")):
        grade(factory, "q", "i0", reviewer, REJECT, fix)
        grade(factory, "q", "i1", reviewer, REJECT, "same")
    out = tmp_path / "t.jsonl"
    code, stdout, err = run(capsys, "--data-dir", str(data), "review", "export", "q", "--format", "training",
                            "-o", str(out), "--json")
    assert code == 0, err
    assert "1 conflict(s) between reviewers (left out): i0" in err
    summary = json.loads(stdout)
    assert summary["resolve"] == "majority" and [c["item"] for c in summary["conflicts"]] == ["i0"]
    assert [json.loads(x)["item"] for x in out.read_text().splitlines()] == ["i1"]
    code, _, err = run(capsys, "--data-dir", str(data), "review", "export", "q", "--format", "training", "--json")
    assert code == 2 and "-o FILE" in err


def test_api_training_export_applies_the_same_policy(client, factory, review_settings) -> None:  # noqa: ANN001
    add_user(factory, "ann")
    add_queue(factory, "q", members=["ann"])
    put_items(factory, "q", [item(0), item(1, source="eval", metadata={"run_id": "r1"})])
    grade(factory, "q", "i0", "ann", APPROVE)
    grade(factory, "q", "i1", "ann", APPROVE)
    auth = {"Authorization": "Bearer rva_test_admin_token"}

    def items_of(query: str) -> list[str]:
        r = client.get(f"/api/v1/queues/q/export?format=training{query}", headers=auth)
        assert r.status_code == 200, r.text
        return [json.loads(x)["item"] for x in r.text.splitlines()]

    assert items_of("") == ["i0"]
    assert items_of("&include_held_out=true&resolve=all") == ["i0", "i1"]
    HeldOutIndex(review_settings.data_dir).add_texts("test", [("x/test.jsonl:3", "question 0")])
    refused = client.get("/api/v1/queues/q/export?format=training", headers=auth)
    assert refused.status_code == 409 and "review item q:i0: matches held-out" in refused.json()["error"]["message"]
    assert items_of("&allow_held_out=true") == ["i0"]
