"""`lorafleet data check` on the shipped dirty dataset and on hand-made problems."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from lorafleet.train.data.checks import check_files
from lorafleet.train.data.pii import find_pii, iban_ok, luhn_ok

from tests.unit.train.helpers import EXAMPLES, intent, run_cli, write_jsonl

DIRTY = EXAMPLES / "support-intents-dirty" / "train.jsonl"
CLEAN_VAL = EXAMPLES / "support-intents" / "val.jsonl"


def test_dirty_dataset_shows_every_planted_problem() -> None:
    report = check_files([DIRTY, CLEAN_VAL], roles={DIRTY: "train", CLEAN_VAL: "val"})
    codes = Counter(i.code for i in report.issues)
    for code in ("schema", "empty_turn", "duplicate", "near_duplicate", "label_variants", "pii", "leakage"):
        assert codes[code] >= 1, code
    assert codes["leakage"] == 4
    schema = next(i for i in report.issues if i.code == "schema")
    assert schema.where.startswith(f"{DIRTY}:") and "invalid JSON" in schema.message
    refund = next(i for i in report.issues if i.code == "label_variants" and "'refund'" in i.message)
    assert "'Refund'" in refund.message and "'refund.'" in refund.message
    assert not report.ok


def test_clean_splits_have_no_errors() -> None:
    split = EXAMPLES / "support-intents"
    files = [split / "train.jsonl", split / "val.jsonl", split / "test.jsonl"]
    report = check_files(files, roles=dict(zip(files, ("train", "val", "test"), strict=True)))
    assert report.errors == []
    assert len(report.files[0].labels) >= 10


def test_pii_finders() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and not iban_ok("DE00 3704 0044 0532 0130 00")
    assert find_pii("mail me at a.b@example.org") == ["email"]
    assert find_pii("card 4111-1111-1111-1111") == ["card"]
    assert find_pii("card 4111-1111-1111-1112") == []
    assert find_pii("key sk-live-8f3KdL92mZq7XpA1bC4dE5fG6hJ7") == ["api_key"]
    assert find_pii("call +44 20 7946 0958 today") == ["phone"]
    assert find_pii("order #12345 on 2024-01-02 for $480") == []


def test_lengths_and_imbalance_and_kappa(tmp_path: Path) -> None:
    rows = [intent(f"refund please {i} " + "word " * (40 if i == 0 else 3), "refund") for i in range(12)]
    rows.append(intent("where is my parcel", "shipping"))
    for i, (a, b) in enumerate([("x", "x"), ("x", "y"), ("y", "y"), ("y", "x"), ("x", "x"), ("y", "x")]):
        rows.append({**intent(f"annotated {i} item text here", a), "annotations": {"ann1": a, "ann2": b}})
    report = check_files([write_jsonl(tmp_path / "data.jsonl", rows)], max_length=20)
    assert report.lengths is not None and report.lengths.over == 1 and report.lengths.max > 40
    codes = Counter(i.code for i in report.issues)
    assert codes["overlong"] == 1 and codes["imbalance"] >= 1 and codes["agreement"] == 1
    assert -1 <= report.kappa["ann1~ann2"] < 0.6


def test_roles_and_missing_fields(tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "train.jsonl", [
        {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]},
        {"instruction": "classify"},
        {"messages": [{"role": "robot", "content": "x"}]},
    ])
    report = check_files([bad])
    where = {i.where: i for i in report.issues}
    assert where[f"{bad}:1"].code == "roles"
    assert where[f"{bad}:2"].code == "schema" and "output" in where[f"{bad}:2"].message
    assert where[f"{bad}:3"].code == "schema"


def test_cli_check_json_exit_code(capsys, tmp_path: Path) -> None:
    code, out, err = run_cli(capsys, "--data-dir", str(tmp_path), "data", "check", "--train", str(DIRTY),
                             "--val", str(CLEAN_VAL), "--json")
    assert code == 1
    data = json.loads(out)
    assert data["ok"] is False and any(i["code"] == "leakage" for i in data["issues"])
    code, out, _ = run_cli(capsys, "--data-dir", str(tmp_path), "data", "check",
                           str(EXAMPLES / "contract-clauses" / "train.jsonl"))
    assert code == 0 and "0 errors" in out


def test_file_names_never_decide_a_split(tmp_path: Path) -> None:
    rows = [intent("my lamp arrived broken, refund please", "refund"), intent("where is my parcel", "shipping")]
    values = write_jsonl(tmp_path / "values.jsonl", rows)
    devices = write_jsonl(tmp_path / "devices.jsonl", rows)
    report = check_files([values, devices])
    assert not [i for i in report.issues if i.code == "leakage"]  # no roles: nothing to leak between
    report = check_files([values, devices], roles={values: "train", devices: "val"})
    assert [i.where for i in report.issues if i.code == "leakage"] == [f"{devices}:1", f"{devices}:2"]
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{**rows[0], "split": "train"}, {**rows[0], "split": "test"}])
    assert [i.where for i in check_files([mixed]).issues if i.code == "leakage"] == [f"{mixed}:2"]


def test_cli_val_file_is_held_out_and_later_checks_find_it(capsys, tmp_path: Path) -> None:
    dd = str(tmp_path / "data")
    val = write_jsonl(tmp_path / "v.jsonl", [intent("my order 5512 arrived broken and the box was crushed", "refund")])
    other = write_jsonl(tmp_path / "t.jsonl", [intent("hello there", "greeting"),
                                               intent("My order 5512 arrived broken, and the box was crushed!", "x")])
    code, out, _ = run_cli(capsys, "--data-dir", dd, "data", "check", "--val", str(val))
    assert code == 0 and "0 errors" in out
    code, out, _ = run_cli(capsys, "--data-dir", dd, "data", "check", str(other))
    assert code == 1
    assert f"error held_out {other}:2: matches held-out val {val}:1 (exact, 1.00)" in out
    code, out, _ = run_cli(capsys, "--data-dir", dd, "data", "check", "--train", str(other), "--val", str(val))
    assert code == 1 and f"error leakage {val}:1" in out and "error held_out" not in out  # reported once


def test_cli_prints_full_locations_outside_a_terminal(capsys, tmp_path: Path) -> None:
    folder = tmp_path.joinpath(*[f"a-rather-long-folder-name-{i}" for i in range(6)])
    bad = write_jsonl(folder / "malformed.jsonl", [intent("hello there", "greeting"), intent("hi", "greeting")])
    with open(bad, "a", encoding="utf-8") as f:
        f.write('{"messages": [{"role": "user", "content": "x}')  # torn last line: no newline
    code, out, _ = run_cli(capsys, "--data-dir", str(tmp_path / "data"), "data", "check", str(bad))
    assert code == 1
    line = next(x for x in out.splitlines() if x.startswith("error schema "))
    assert line == f"error schema {bad}:3: invalid JSON: unterminated string starting at column 43"
    assert f"file {bad} (no role): 2 records" in out
