"""`lorafleet review …` end to end through the CLI entry point (SQLite in a temp data dir)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from lorafleet.cli.main import main
from tests.unit.human_review.conftest import GENERAL


def run(capsys: pytest.CaptureFixture[str], *argv: str, stdin: str | None = None,
        monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_users_queues_import_export(capsys, monkeypatch, tmp_path: Path) -> None:  # noqa: ANN001
    dd = ["--data-dir", str(tmp_path / "data")]
    code, _, err = run(capsys, *dd, "review", "users", "add", "ann", "--password-stdin", stdin="long enough pw\n",
                       monkeypatch=monkeypatch)
    assert code == 0, err
    code, out, err = run(capsys, *dd, "review", "queues", "create", "q", "--rubric", str(GENERAL), "--overlap", "2",
                         "--member", "ann", "--json")
    assert code == 0, err
    created = json.loads(out)
    assert created["token"].startswith("rvq_") and created["overlap"] == 2
    src = tmp_path / "items.jsonl"
    src.write_text("\n".join(json.dumps({"id": f"i{i}", "prompt": "p", "response": "r"}) for i in range(3)) + "\n")
    for expected in ({"created": 3, "existing": 0}, {"created": 0, "existing": 3}):
        code, out, err = run(capsys, *dd, "review", "import", str(src), "--queue", "q", "--json")
        assert code == 0 and json.loads(out) == expected, err
    code, out, _ = run(capsys, *dd, "review", "queues", "list", "--json")
    assert json.loads(out)[0]["needed"] == 6
    out_file = tmp_path / "grades.jsonl"
    code, _, err = run(capsys, *dd, "review", "export", "q", "--format", "grades", "-o", str(out_file))
    assert code == 0 and out_file.read_text() == "", err


@pytest.mark.parametrize(("lines", "needle"), [
    (['{"id": "a", "prompt": "p", "response": "r"}', '{"id": "b", "prompt": "p"}'], ":2:"),
    (['{"id": "a", "prompt": "p", "response": "r"}', '{"id": "a", "prompt": "p", "response": "r"}'], "duplicate id"),
    (['{"id": "a", "prompt": "p", "response": "r", "colour": 1}'], "colour"),
    (["not json"], "invalid JSON"),
])
def test_bad_import_files_fail_with_one_line_and_write_nothing(capsys, tmp_path: Path, lines, needle) -> None:  # noqa: ANN001
    dd = ["--data-dir", str(tmp_path / "data")]
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join(lines) + "\n")
    code, _, err = run(capsys, *dd, "review", "import", str(src), "--queue", "q", "--rubric", str(GENERAL))
    assert code == 2 and "Traceback" not in err and needle in err, err
    code, out, _ = run(capsys, *dd, "review", "queues", "list", "--json")
    assert json.loads(out) == []  # the file is validated before the queue is created


def test_unknown_queue_and_bad_rubric_are_clean_errors(capsys, tmp_path: Path) -> None:  # noqa: ANN001
    dd = ["--data-dir", str(tmp_path / "data")]
    code, _, err = run(capsys, *dd, "review", "export", "nope")
    assert code == 2 and "queue 'nope' not found" in err
    bad = tmp_path / "r.yaml"
    bad.write_text("criteria: 3\n")
    code, _, err = run(capsys, *dd, "review", "queues", "create", "q", "--rubric", str(bad))
    assert code == 2 and "r.yaml" in err
