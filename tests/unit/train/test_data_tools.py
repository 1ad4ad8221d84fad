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
    code, _, err = run_cli(capsys, "--data-dir", str(tmp_path / "data"), "data", "split", str(DIRTY),
                           "--out", str(tmp_path), "--ratios", "0.9,0.2,0.1")
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


def test_augment_marks_provenance_and_refuses_val_when_told(tmp_path: Path) -> None:
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
    val = write_jsonl(tmp_path / "anything.jsonl", [chat("x", "y")])
    with pytest.raises(ConfigError, match="--role val: augmenting a val split"):
        augment_file(val, tmp_path / "o.jsonl", endpoint="http://127.0.0.1:9", model="m", role="val")
    marked = write_jsonl(tmp_path / "marked.jsonl", [chat("x", "y"), chat("z", "y", split="test")])
    with pytest.raises(ConfigError, match=r"marked split val/test: .*marked.jsonl:2"):
        augment_file(marked, tmp_path / "o.jsonl", endpoint="http://127.0.0.1:9", model="m")
    assert not (tmp_path / "o.jsonl").exists()


def test_split_skips_and_reports_broken_lines(capsys, tmp_path: Path) -> None:
    code, out, _ = run_cli(capsys, "--data-dir", str(tmp_path / "data"), "data", "split", str(DIRTY),
                           "--out", str(tmp_path / "s"), "--json")
    result = json.loads(out)
    assert code == 0 and len(result["skipped"]) == 1 and "invalid JSON" in result["skipped"][0]
    assert sum(result["counts"].values()) == len(DIRTY.read_text().splitlines()) - 1


def _originals(n: int) -> list[dict]:
    words = ["lamp", "desk", "chair", "kettle", "mouse", "phone", "sofa"]
    return [chat(f"ticket {i}: my {words[i % 7]} stopped working on day {i % 5} after {i * 3} hours", f"answer {i}")
            for i in range(n)]


def _augmented_copy(tmp_path: Path, n: int = 60) -> tuple[Path, list[dict]]:
    """What `data augment` writes: the originals, then one paraphrase of each (provenance → source line)."""
    orig = write_jsonl(tmp_path / "orig.jsonl", _originals(n))
    rows = _originals(n)
    for i, row in enumerate(_originals(n)):
        para = chat(f"reworded complaint number {i * 7}: nothing works anymore, help with item {i}",
                    row["messages"][1]["content"],
                    provenance={"augmented": True, "source": f"{orig}:{i + 1}", "model": "m", "n": 0})
        rows.append(para)
    return write_jsonl(tmp_path / "aug.jsonl", rows), rows


def test_repro_augmented_paraphrase_follows_source_split(tmp_path: Path) -> None:
    aug, rows = _augmented_copy(tmp_path)
    result = split_file(aug, tmp_path / "out", (0.6, 0.2, 0.2))
    written = {s: [json.loads(x) for x in (tmp_path / "out" / f"{s}.jsonl").read_text().splitlines()]
               for s in ("train", "val", "test")}
    held_answers = {r["messages"][1]["content"] for s in ("val", "test") for r in written[s]}
    assert held_answers, "the split must put some originals in val/test"
    leaked = [r for r in written["train"] if r.get("provenance") and r["messages"][1]["content"] in held_answers]
    assert leaked == []  # no paraphrase of a held-out prompt trains the adapter
    assert not any(r.get("provenance") for s in ("val", "test") for r in written[s])
    assert len(result.dropped_augmented) == len(held_answers)
    # originals split exactly as they do without any paraphrases
    plain = split_file(tmp_path / "orig.jsonl", tmp_path / "plain", (0.6, 0.2, 0.2))
    assert plain.counts["val"] == result.counts["val"] and plain.counts["test"] == result.counts["test"]


def test_split_paraphrase_of_unknown_source_joins_nearest_original(tmp_path: Path) -> None:
    base = ("I was charged twice for my order last week and I would like the money back on my card right now "
            "because the second charge pushed my account into the red and the bank wants a fee for it as well")
    rows = _originals(30) + [chat(base, "refund"),
                             chat(base + " please", "refund", provenance={"augmented": True, "source": "gone:1"})]
    result = split_file(write_jsonl(tmp_path / "a.jsonl", rows), tmp_path / "out", (0.0, 0.0, 1.0))
    assert result.counts == {"train": 0, "val": 0, "test": 30 + 1} and result.dropped_augmented == [
        f"{tmp_path / 'a.jsonl'}:32"]


def test_cli_split_adds_val_test_to_index_and_refuses_held_out(capsys, tmp_path: Path) -> None:
    from lorafleet.heldout import HeldOutIndex

    dd = str(tmp_path / "data")
    src = write_jsonl(tmp_path / "all.jsonl", _originals(40))
    code, out, _ = run_cli(capsys, "--data-dir", dd, "data", "split", str(src), "--out", str(tmp_path / "s"))
    assert code == 0
    idx = HeldOutIndex(Path(dd))
    roles = {Path(f.path).name: f.role for f in idx.sources().files}
    assert roles == {"val.jsonl": "val", "test.jsonl": "test"}
    # splitting the same file again into the same folder is no leak (its old val/test are replaced)
    assert run_cli(capsys, "--data-dir", dd, "data", "split", str(src), "--out", str(tmp_path / "s"))[0] == 0
    test_rows = (tmp_path / "s" / "test.jsonl").read_text().splitlines()
    other = write_jsonl(tmp_path / "other.jsonl", [*_originals(0), chat("a new prompt about my bike", "x"),
                                                   json.loads(test_rows[0])])
    code, out, err = run_cli(capsys, "--data-dir", dd, "data", "split", str(other), "--out", str(tmp_path / "o"),
                             "--ratios", "1,0,0")
    assert code == 1 and "Traceback" not in err
    assert f"{other}:2: matches held-out test {tmp_path / 's' / 'test.jsonl'}:1 (exact, 1.00)" in err
    assert "--allow-held-out" in err and not (tmp_path / "o").exists()
    code, out, _ = run_cli(capsys, "--data-dir", dd, "data", "split", str(other), "--out", str(tmp_path / "o"),
                           "--ratios", "1,0,0", "--allow-held-out")
    assert code == 0 and "--allow-held-out" in out


def test_cli_split_reports_dropped_paraphrases(capsys, tmp_path: Path) -> None:
    aug, _ = _augmented_copy(tmp_path)
    code, out, _ = run_cli(capsys, "--data-dir", str(tmp_path / "data"), "data", "split", str(aug),
                           "--out", str(tmp_path / "s"), "--ratios", "0.6,0.2,0.2")
    assert code == 0 and "augmented record(s) whose source is in val/test" in out


def test_cli_augment_refuses_held_out_records(capsys, tmp_path: Path) -> None:
    dd = str(tmp_path / "data")
    test = write_jsonl(tmp_path / "test.jsonl", [chat("my parcel is late and the tracking page shows nothing", "x")])
    run_cli(capsys, "--data-dir", dd, "data", "check", "--test", str(test))
    src = write_jsonl(tmp_path / "mine.jsonl", [chat("hello", "hi"),
                                                chat("My parcel is late, and the tracking page shows nothing.", "y")])
    args = ("--data-dir", dd, "data", "augment", str(src), "--out", str(tmp_path / "o.jsonl"),
            "--endpoint", "http://127.0.0.1:9/v1", "--model", "m")
    code, _, err = run_cli(capsys, *args)
    assert code == 1 and f"{src}:2: matches held-out test {test}:1 (exact, 1.00)" in err
    assert not (tmp_path / "o.jsonl").exists()
    code, _, err = run_cli(capsys, *args, "--role", "test")
    assert code == 2 and "--role test" in err
