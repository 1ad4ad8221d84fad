"""The held-out index: exact and near matches, idempotent adds, rebuilds, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from lorafleet.card import AdapterCard, BaseModelRef, DatasetFile, LoraInfo
from lorafleet.errors import HeldOutError
from lorafleet.formats import Message
from lorafleet.heldout import HeldOutIndex, HeldOutMatch, heldout_text, refusal

LONG = "my order number 5512 arrived broken and the box was crushed, i would like a full refund please"


def chat(user: str, answer: str = "[Intent: refund]", system: str | None = None, **extra: object) -> dict:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": msgs, **extra}


def write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def test_file(tmp_path: Path) -> Path:
    return write(tmp_path / "d" / "test.jsonl", [chat(LONG), chat("where is my parcel", "[Intent: tracking]"),
                                                 {"instruction": "Classify", "input": "cancel my plan", "output": "x"}])


def test_heldout_text_is_the_user_turns_only() -> None:
    msgs = [Message(role="system", content="be nice"), Message(role="user", content="a"),
            Message(role="assistant", content="b"), Message(role="user", content="c")]
    assert heldout_text(msgs) == "a\nc"
    assert heldout_text("plain") == "plain"


def test_exact_match_survives_case_punctuation_system_prompt_and_answer(tmp_path: Path, test_file: Path) -> None:
    idx = HeldOutIndex(tmp_path / "data")
    assert idx.add_file(test_file, "test") == 3
    matches = idx.check([("t.jsonl:4", heldout_text([Message(role="system", content="You classify."),
                                                      Message(role="user", content=LONG.upper() + "!!")]))])
    assert matches == [HeldOutMatch(where="t.jsonl:4", source=f"{test_file}:1", role="test", kind="exact",
                                    similarity=1.0)]
    assert idx.note is None


def test_near_match_and_no_match(tmp_path: Path, test_file: Path) -> None:
    idx = HeldOutIndex(tmp_path / "data")
    idx.add_file(test_file, "test", label="suite support")
    near = LONG.replace("please", "please thanks")
    [m] = idx.check([("a:1", near), ("a:2", "something completely different about the weather today")])
    assert (m.where, m.kind, m.role) == ("a:1", "near", "test")
    assert m.source == f"{test_file}:1 (suite support)"
    assert 0.8 <= m.similarity < 1.0


def test_check_file_names_path_and_line(tmp_path: Path, test_file: Path) -> None:
    idx = HeldOutIndex(tmp_path / "data")
    idx.add_file(test_file, "val")
    train = write(tmp_path / "train.jsonl", [chat("hello there"), chat("Where is my parcel?", "other answer")])
    [m] = idx.check_file(train)
    assert m.where == f"{train}:2" and m.source == f"{test_file}:2" and m.role == "val"


def test_add_file_is_idempotent_and_a_rewrite_replaces(tmp_path: Path, test_file: Path) -> None:
    idx = HeldOutIndex(tmp_path / "data")
    assert idx.add_file(test_file, "test") == 3
    v1 = idx.version()
    assert idx.add_file(test_file, "test") == 0
    assert HeldOutIndex(tmp_path / "data").version() == v1
    write(test_file, [chat("brand new held out prompt")])
    assert idx.add_file(test_file, "test") == 1
    assert len(idx) == 1 and idx.version() != v1
    assert idx.check([("x", LONG)]) == []


def test_exclude_sources_skips_a_file(tmp_path: Path, test_file: Path) -> None:
    idx = HeldOutIndex(tmp_path / "data")
    idx.add_file(test_file, "val")
    assert idx.check([("x", LONG)], exclude_sources=[test_file]) == []
    assert len(idx.check([("x", LONG)])) == 1


def test_add_texts_holds_out_review_items(tmp_path: Path) -> None:
    idx = HeldOutIndex(tmp_path / "data")
    assert idx.add_texts("review", [("review item run1:base:s3", LONG), ("r2", "")]) == 1
    assert idx.add_texts("review", [("review item run1:base:s3", LONG)]) == 0
    [m] = HeldOutIndex(tmp_path / "data").check([("export:1", LONG)])
    assert (m.role, m.source) == ("review", "review item run1:base:s3")


def test_bad_role_is_refused(tmp_path: Path, test_file: Path) -> None:
    with pytest.raises(ValueError, match="role"):
        HeldOutIndex(tmp_path).add_file(test_file, "train")


def test_fresh_data_dir_is_empty_without_a_note(tmp_path: Path) -> None:
    idx = HeldOutIndex(tmp_path / "data")
    assert len(idx) == 0 and idx.note is None and idx.check([("a", LONG)]) == []


def test_corrupt_index_is_rebuilt_from_recorded_sources(tmp_path: Path, test_file: Path) -> None:
    idx = HeldOutIndex(tmp_path / "data")
    idx.add_file(test_file, "test")
    idx.add_texts("review", [("item 1", "a review prompt about a lost parcel in transit")])
    version = idx.version()
    (tmp_path / "data" / "heldout" / "index.json").write_text("{not json", encoding="utf-8")
    again = HeldOutIndex(tmp_path / "data")
    assert len(again.check([("a", LONG)])) == 1
    assert again.version() == version
    assert again.note and "corrupt" in again.note and "1 recorded source file" in again.note
    # The rebuilt index is on disk: the next reader needs no rebuild.
    assert HeldOutIndex(tmp_path / "data").check([("a", LONG)]) and HeldOutIndex(tmp_path / "data").note is None


def test_missing_index_is_rebuilt_from_registry_cards(tmp_path: Path, test_file: Path) -> None:
    data = tmp_path / "data"
    train = write(tmp_path / "train.jsonl", [chat("a training prompt")])
    card = AdapterCard(name="intents", version="v1", base=BaseModelRef(id="tiny"),
                       lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj"]),
                       dataset=[DatasetFile(path=str(train), sha256="0", split="train"),
                                DatasetFile(path=str(test_file), sha256="0", split="val"),
                                DatasetFile(path=str(tmp_path / "gone.jsonl"), sha256="0", split="test")])
    (data / "registry" / "intents" / "v1").mkdir(parents=True)
    (data / "registry" / "intents" / "v1" / "card.json").write_text(card.model_dump_json(), encoding="utf-8")
    (data / "heldout").mkdir()
    idx = HeldOutIndex(data)
    [m] = idx.check([("a", LONG)])
    assert m.role == "val" and m.source == f"{test_file}:1 (card intents@v1)"
    assert idx.check([("b", "a training prompt")]) == []
    assert idx.note and "missing" in idx.note and "1 registry val/test file" in idx.note


def test_missing_index_with_nothing_to_rebuild_says_empty(tmp_path: Path, test_file: Path) -> None:
    idx = HeldOutIndex(tmp_path / "data")
    idx.add_file(test_file, "test")
    test_file.unlink()
    (tmp_path / "data" / "heldout" / "index.json").unlink()
    again = HeldOutIndex(tmp_path / "data")
    assert len(again) == 0
    assert again.note and "EMPTY" in again.note and str(test_file) in again.note


def _add_one(data_dir: str, path: str) -> None:
    HeldOutIndex(Path(data_dir)).add_file(Path(path), "test")


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    files = [write(tmp_path / f"f{i}.jsonl", [chat(f"held out prompt number {i} about topic {i * 7}")])
             for i in range(6)]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add_one, args=(str(tmp_path / "data"), str(f))) for f in files]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    idx = HeldOutIndex(tmp_path / "data")
    assert len(idx) == 6 and len(idx.sources().files) == 6 and idx.note is None


def test_check_is_fast_for_thousands(tmp_path: Path) -> None:
    rows = [chat(f"customer {i} writes about order {i * 31} and item {i % 97} with words w{i} x{i % 13}")
            for i in range(2000)]
    idx = HeldOutIndex(tmp_path / "data")
    idx.add_file(write(tmp_path / "val.jsonl", rows), "val")
    items = [(f"t:{i}", f"a different text {i} about nothing in particular q{i}") for i in range(2000)]
    started = time.monotonic()
    assert HeldOutIndex(tmp_path / "data").check(items + [("t:x", rows[5]["messages"][0]["content"])])[0].where == "t:x"
    assert time.monotonic() - started < 20


def test_refusal_lists_one_line_per_match_and_exits_1() -> None:
    m = HeldOutMatch(where="train.jsonl:12", source="x/test.jsonl:7", role="test", kind="near", similarity=0.875)
    err = refusal([m, m.model_copy(update={"where": "train.jsonl:13", "kind": "exact", "similarity": 1.0})])
    assert isinstance(err, HeldOutError) and err.exit_code == 1 and len(err.matches) == 2
    assert "train.jsonl:12: matches held-out test x/test.jsonl:7 (near, 0.88)" in err.message
    assert "train.jsonl:13: matches held-out test x/test.jsonl:7 (exact, 1.00)" in err.message
    assert "--allow-held-out" in (err.hint or "")
