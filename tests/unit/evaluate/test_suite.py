"""Suite YAML: valid suites load; every bad input is a ConfigError naming file:line and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from lorafleet.evaluate.suite import load_suite

from lorafleet.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]

GOOD = """\
name: demo
dataset: data.jsonl
targets: [base, a@latest]
metrics:
  - rouge: {stemmer: false}
  - bleu
gates:
  - rougeL >= 0.2
  - bleu: {vs: base, min_delta: 1, significant: true}
  - {metric: chrf, op: '>', threshold: 10}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_valid_suite_loads_with_all_gate_forms(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, GOOD))
    assert suite.dataset.path == "data.jsonl"
    assert suite.baseline_target == "base"
    assert [(g.metric, g.threshold, g.vs) for g in suite.gates] == [
        ("rougeL", 0.2, None), ("bleu", None, "base"), ("chrf", 10.0, None)]
    assert suite.metric_families() == {"rouge": {"stemmer": False}, "bleu": {}, "chrf": {}}
    assert suite.generation.params() == {"temperature": 0.0, "max_tokens": 128, "top_p": 1.0, "seed": 0}


@pytest.mark.parametrize("path", sorted((REPO / "examples" / "suites").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_suite_still_matches_the_code(path: Path) -> None:
    suite = load_suite(path)
    assert suite.targets[0] == "base"
    assert (path.parent / suite.dataset.path).parent.name == (suite.dataset.path.split("/")[-2])


@pytest.mark.parametrize(("text", "line", "key"), [
    (GOOD.replace("targets:", "targts:"), 3, "targts"),
    (GOOD.replace("  - bleu\n", "  - blue\n"), 4, "metrics"),
    (GOOD.replace("rougeL >= 0.2", "rougeL about 0.2"), 8, "gates.0"),
    (GOOD.replace("dataset: data.jsonl", "dataset: {path: d.jsonl, limit: 0}"), 2, "dataset.limit"),
    (GOOD + "generation:\n  temprature: 0\n", 12, "generation.temprature"),
    (GOOD + "extraction:\n  label_pattern: '(['\n", 12, "extraction.label_pattern"),
    (GOOD.replace("vs: base", "vs: nobody"), 9, "gates.1"),
    (GOOD + "review: {pairwise: [base, other]}\n", 11, "review.pairwise"),
    (GOOD.replace("targets: [base, a@latest]", "targets: [base, base]"), 3, "targets"),
])
def test_bad_suites_name_the_line_and_key(tmp_path: Path, text: str, line: int, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_suite(write(tmp_path, text))
    assert f"suite.yaml:{line}: {key}" in exc.value.message
    assert exc.value.hint


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"suite.yaml:2: invalid YAML"):
        load_suite(write(tmp_path, "name: x\n  bad: [\n"))
    with pytest.raises(ConfigError, match="no such file"):
        load_suite(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="YAML mapping"):
        load_suite(write(tmp_path, "- a\n- b\n"))
