"""Running a suite holds its dataset out: the held-out guard then refuses its prompts in training data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lorafleet.evaluate.runner import RunOptions, run_suite
from lorafleet.evaluate.suite import load_suite

from lorafleet.cli.main import main
from lorafleet.heldout import HeldOutIndex
from tests.unit.evaluate.conftest import intent_rows, script_intents, write_jsonl


def test_a_suite_run_registers_its_dataset_as_held_out(fake, intent_suite: Path, data_dir: Path,
                                                       tmp_path: Path) -> None:
    script_intents(fake, intent_rows(), adapter_correct=12)
    outcome = run_suite(load_suite(intent_suite), intent_suite, RunOptions(endpoint=fake.url, data_dir=data_dir),
                        runs_dir=data_dir / "runs")
    assert outcome.path.is_dir()
    # A training file that copies one of the suite's prompts is now caught, naming the suite.
    train = write_jsonl(tmp_path / "train.jsonl", [intent_rows()[4], {"messages": [
        {"role": "user", "content": "something new entirely"}, {"role": "assistant", "content": "ok"}]}])
    matches = HeldOutIndex(data_dir).check_file(train)
    assert [(m.where, m.role, m.kind) for m in matches] == [(f"{train}:1", "eval", "exact")]
    assert "test.jsonl:5" in matches[0].source and "suite intents" in matches[0].source
    # A second run of the same dataset adds nothing (idempotent).
    version = HeldOutIndex(data_dir).version()
    run_suite(load_suite(intent_suite), intent_suite, RunOptions(endpoint=fake.url, data_dir=data_dir),
              runs_dir=data_dir / "runs")
    assert HeldOutIndex(data_dir).version() == version


def test_eval_run_from_the_cli_holds_the_dataset_out(capsys, fake, intent_suite: Path, data_dir: Path) -> None:
    script_intents(fake, intent_rows(), adapter_correct=12)
    with pytest.raises(SystemExit):
        main(["--data-dir", str(data_dir), "eval", "run", str(intent_suite), "--endpoint", fake.url, "--json"])
    assert json.loads(capsys.readouterr().out)["samples"] == 12
    prompt = intent_rows()[0]["messages"][0]["content"]
    assert HeldOutIndex(data_dir).check([("x", prompt)])[0].role == "eval"


def test_without_a_data_dir_nothing_is_written(fake, intent_suite: Path, tmp_path: Path) -> None:
    runs = tmp_path / "elsewhere"
    run_suite(load_suite(intent_suite), intent_suite, RunOptions(endpoint=fake.url), runs_dir=runs)
    assert not (tmp_path / "heldout").exists() and not (runs / "heldout").exists()
