"""Rubric YAML: the shipped examples load; bad files are refused naming the file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from lorafleet.human_review.rubrics import load_rubric

from lorafleet.errors import ConfigError
from tests.unit.human_review.conftest import REPO


@pytest.mark.parametrize("path", sorted((REPO / "examples" / "rubrics").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_rubrics_load(path: Path) -> None:
    rubric = load_rubric(path)
    assert rubric.criteria and all(len(c.anchors) == len(c.levels) for c in rubric.criteria)


@pytest.mark.parametrize(("text", "field"), [
    ("criteria:\n  - name: x\n    anchors: {1: a, 2: b}\n", "criteria.0"),            # anchors miss 3..5
    ("criteria:\n  - name: Bad Name\n    scale: [1, 2]\n    anchors: {1: a, 2: b}\n", "criteria.0.name"),
    ("criteria: []\nsurprise: 1\n", "surprise"),
    ("- just\n- a list\n", None),
    ("criteria: [\n", None),
])
def test_bad_rubrics_name_the_problem(tmp_path: Path, text: str, field: str | None) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_rubric(path)
    assert str(path) in info.value.message
    if field:
        assert f"'{field}'" in info.value.message


def test_missing_rubric_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_rubric(tmp_path / "nope.yaml")
