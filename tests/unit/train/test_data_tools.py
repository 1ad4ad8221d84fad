"""`lorafleet data split|convert|fix|augment`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lorafleet.train.data.augment import augment_file
from lorafleet.train.data.split import parse_ratios, split_file

from lorafleet.errors import ConfigError
from lorafleet.formats import read_records
from tests.fakes.openai_upstream import FakeUpstream
from tests.unit.train.helpers import EXAMPLES, chat, run_cli, write_jsonl

DIRTY = EXAMPLES / "support-intents-dirty" / "train.jsonl"


def _rows(n: int) -> list[dict]:
    rows = [chat(f"ticket number {i}: the {w} broke on day {i % 7}", f"answer {i}")
            for i, w in zip(range(n), ["lamp", "desk", "chair", "kettle", "mouse"] * n, strict=False)]
    # a near-duplicate family that must stay together
    rows += [chat(f"I was charged twice for my order last week and I would like the money back on my card "
                  f"as soon as possible because this is not fair to me {s}", "refund")
             for s in ("", "!", "thanks")]
    return rows


def test_split_is_deterministic_and_keeps_near_dups_together(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "all.jsonl", _rows(60))
    first = split_file(src, tmp_path / "a", (0.6, 0.2, 0.2))
    second = split_file(src, tmp_path / "b", (0.6, 0.2, 0.2))
    for split in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
    assert sum(first.counts.values()) == 63 and first.counts == second.counts
    assert first.counts["train"] > first.counts["test"] > 0
    homes = [s for s in ("train", "val", "test")
             if "charged twice" in (tmp_path / "a" / f"{s}.jsonl").read_text()]
    assert len(homes) == 1
    assert len([1 for line in (tmp_path / "a" / f"{homes[0]}.jsonl").read_text().splitlines()
                if "charged twice" in line]) == 3


def test_split_keeps_augmented_records_in_train(tmp_path: Path) -> None:
    rows = [{**r, "provenance": {"augmented": True}} for r in _rows(30)]
    result = split_file(write_jsonl(tmp_path / "aug.jsonl", rows), tmp_path / "out")
    assert result.counts["train"] == len(rows)


def test_bad_ratios_name_the_flag(capsys, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--ratios"):
        parse_ratios("0.5,0.5")
    code, _, err = run_cli(capsys, "data", "split", str(DIRTY), "--out", str(tmp_path), "--ratios", "0.9,0.2,0.1")
    assert code == 2 and "--ratios" in err and "Traceback" not in err


def test_convert_between_formats_keeps_labels(capsys, tmp_path: Path) -> None:
    src = EXAMPLES / "contract-clauses" / "test.jsonl"
    code, _, _ = run_cli(capsys, "data", "convert", str(src), "--out", str(tmp_path / "c.jsonl"), "--to", "chat")
    assert code == 0
    back = tmp_path / "pc.jsonl"
    code, _, _ = run_cli(capsys, "data", "convert", str(tmp_path / "c.jsonl"), "--out", str(back),
                         "--to", "prompt_completion")
    rows = [json.loads(line) for line in back.read_text().splitlines()]
    orig = [json.loads(line) for line in src.read_text().splitlines()]
    assert len(rows) == len(orig) and rows[0]["completion"] == orig[0]["output"]
    assert rows[0]["label"] == orig[0]["label"]
    code, _, err = run_cli(capsys, "data", "convert", str(src), "--out", str(back), "--to", "sharegpt")
    assert code == 2 and "--to" in err


def test_fix_writes_new_file_and_report(capsys, tmp_path: Path) -> None:
    out = tmp_path / "fixed.jsonl"
    before = DIRTY.read_bytes()
    code, stdout, _ = run_cli(capsys, "data", "fix", str(DIRTY), "--out", str(out), "--json")
    assert code == 0 and DIRTY.read_bytes() == before
    report = json.loads(stdout)
    actions = {c["action"] for c in report["changes"]}
    assert actions == {"dropped", "relabelled"}
    assert json.loads((tmp_path / "fixed.jsonl.report.json").read_text())["kept"] == report["kept"]
    labels = {r.raw["label"] for r in read_records(out)}
    assert "Refund" not in labels and "refund." not in labels and "refund" in labels
    from lorafleet.train.data.checks import check_files

    assert check_files([out]).errors == []


def test_augment_marks_provenance_and_refuses_val(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "train.jsonl", [chat("my parcel is late", "[Intent: shipping] ok")])
    fake = FakeUpstream(api_key=None)
    for text in ("the package has not arrived yet", "where is my delivery?"):
        fake.enqueue(text)
    with fake.serve() as url:
        added = augment_file(src, tmp_path / "aug.jsonl", endpoint=f"{url}/v1", model="base-model", n=2)
    rows = [json.loads(line) for line in (tmp_path / "aug.jsonl").read_text().splitlines()]
    assert added == 2 and len(rows) == 3
    assert rows[1]["provenance"]["augmented"] is True and rows[1]["provenance"]["source"].endswith("train.jsonl:1")
    assert rows[1]["messages"][0]["content"] == "the package has not arrived yet"
    assert rows[1]["messages"][1]["content"] == "[Intent: shipping] ok"
    val = write_jsonl(tmp_path / "val.jsonl", [chat("x", "y")])
    with pytest.raises(ConfigError, match="val split"):
        augment_file(val, tmp_path / "o.jsonl", endpoint="http://127.0.0.1:9", model="m")


def test_split_skips_and_reports_broken_lines(capsys, tmp_path: Path) -> None:
    code, out, _ = run_cli(capsys, "data", "split", str(DIRTY), "--out", str(tmp_path / "s"), "--json")
    result = json.loads(out)
    assert code == 0 and len(result["skipped"]) == 1 and "invalid JSON" in result["skipped"][0]
    assert sum(result["counts"].values()) == len(DIRTY.read_text().splitlines()) - 1
