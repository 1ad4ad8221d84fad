"""`lorafleet eval correlate RUN --grades G`: metric ↔ grade correlation written to correlation.json and shown
by `eval report`; synthetic grades follow a known rule plus noise, so the expected correlation is known."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.unit.evaluate.conftest import SUITE, intent_rows, script_intents, write_jsonl
from tests.unit.evaluate.test_cli import cli, eval_run, only_run


@pytest.fixture
def run(capsys, fake, tmp_path: Path, data_dir: Path) -> Path:  # noqa: ANN001
    """A finished run of 30 intent samples: the adapter answers 18 right, the base none."""
    rows = intent_rows(30)
    write_jsonl(tmp_path / "suites" / "data" / "test.jsonl", rows)
    suite = tmp_path / "suites" / "suite.yaml"
    suite.write_text(SUITE.format(threshold=0.1), encoding="utf-8")
    script_intents(fake, rows, adapter_correct=18)
    code, _, err = eval_run(capsys, data_dir, suite, fake)
    assert code in (0, 1), err
    return only_run(data_dir)


def _grades(run: Path, path: Path, *, seed: int = 0, ids: str = "item") -> Path:
    """One reviewer's grades: accuracy = round(1 + 4·rougeL) + noise; relevance random, coherence constant."""
    run_id = json.loads((run / "manifest.json").read_text())["run_id"]
    noise, coin = random.Random(seed), random.Random(seed + 100)
    out = []
    for r in (json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()):
        accuracy = min(5, max(1, round(1 + 4 * r["scores"]["rougeL"] + noise.gauss(0, 0.7))))
        row = {"queue": "q", "reviewer": "ann", "scores": {"accuracy": accuracy, "relevance": coin.randint(1, 5),
                                                           "coherence": 4}, "choice": None}
        if ids == "item":
            row["item"] = f"{run_id}:{r['target']}:{r['id']}"
        else:  # an item imported under another id, carrying the eval ids as fields
            row.update(item=f"imported-{r['id']}-{r['target']}", target=r["target"], sample_id=r["id"])
        out.append(row)
    return write_jsonl(path, out)


def test_repro_eval_correlate_finds_the_rule_and_the_report_shows_it(capsys, run, tmp_path) -> None:  # noqa: ANN001
    grades = _grades(run, tmp_path / "grades.jsonl")
    code, out, err = cli(capsys, "eval", "correlate", str(run), "--grades", str(grades))
    assert code == 0, err
    assert "Spearman" in out and "rougeL" in out and "correlation.json" in out
    saved = json.loads((run / "correlation.json").read_text())
    assert saved["samples"] == 60 and saved["matched_rows"] == 60 and saved["targets"] == ["base", "intents@latest"]
    cells = {(r["metric"], r["criterion"]): r for r in saved["table"]["rows"]}
    rouge = cells[("rougeL", "accuracy")]
    assert rouge["n"] == 60 and rouge["spearman"] > 0.7 and rouge["spearman_ci"][0] > 0 and rouge["kendall_ci"][0] > 0
    rand = cells[("rougeL", "relevance")]
    assert rand["spearman_ci"][0] < 0 < rand["spearman_ci"][1]  # a random rule: the CI holds 0
    assert cells[("rougeL", "coherence")]["spearman"] is None  # constant grades: undefined, not a number
    code, md, _ = cli(capsys, "eval", "report", str(run), "--format", "md")
    assert code == 0 and "**Metric ↔ human grades** (60 graded samples" in md
    assert f"| rougeL | accuracy | 60 | {rouge['spearman']:.3f} [" in md
    code, html, _ = cli(capsys, "eval", "report", str(run), "--format", "html")
    assert code == 0 and 'id="correlation"' in html and "Metric ↔ human grades" in html


def test_correlate_matches_rows_by_target_and_sample_id_fields(capsys, run, tmp_path) -> None:  # noqa: ANN001
    grades = _grades(run, tmp_path / "grades.jsonl", ids="fields")
    code, out, err = cli(capsys, "eval", "correlate", str(run), "--grades", str(grades), "--json")
    assert code == 0, err
    assert json.loads(out)["matched_rows"] == 60


def test_too_few_graded_samples_are_not_enough_data_never_a_number(capsys, run, tmp_path) -> None:  # noqa: ANN001
    grades = tmp_path / "grades.jsonl"
    _grades(run, grades)
    lines = grades.read_text().splitlines()[:7]
    grades.write_text("\n".join(lines) + "\n")
    code, out, err = cli(capsys, "eval", "correlate", str(run), "--grades", str(grades), "--json")
    assert code == 0, err
    rows = json.loads(out)["table"]["rows"]
    assert rows and all(r["spearman"] is None and r["kendall"] is None for r in rows)
    assert all(r["note"] == "not enough data: 7 shared sample(s), need 10" for r in rows)
    _, md, _ = cli(capsys, "eval", "report", str(run), "--format", "md")
    assert "| rougeL | accuracy | 7 | not enough data: 7 shared sample(s), need 10 |" in md


def test_bad_grades_files_are_input_errors_naming_file_and_line(capsys, run, tmp_path) -> None:  # noqa: ANN001
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"item": "x", "scores": {"accuracy": 3}}\nnot json\n')
    code, _, err = cli(capsys, "eval", "correlate", str(run), "--grades", str(bad))
    assert code == 2 and f"{bad}:2" in err and "not JSON" in err
    bad.write_text('{"item": "x", "scores": {"accuracy": "high"}}\n')
    code, _, err = cli(capsys, "eval", "correlate", str(run), "--grades", str(bad))
    assert code == 2 and f"{bad}:1" in err and "scores.accuracy" in err
    other = tmp_path / "other.jsonl"
    other.write_text('{"item": "another-run:base:s1", "scores": {"accuracy": 3}}\n')
    code, _, err = cli(capsys, "eval", "correlate", str(run), "--grades", str(other))
    assert code == 2 and "belong to run" in err and not (run / "correlation.json").exists()
    code, _, err = cli(capsys, "eval", "correlate", str(run), "--grades", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "no such grades file" in err
