"""Promotion reads the run folders `eval run` really writes (against the fake OpenAI server): failed gates named
from results.json, and the paired gain over prod from two runs' per-sample scores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lorafleet.registry import Registry
from tests.fakes.openai_eval_server import FakeState, RunningServer, serve
from tests.unit.evaluate.conftest import SUITE, intent_rows, write_jsonl
from tests.unit.promotion.helpers import register
from tests.unit.promotion.test_promote_cli import run


@pytest.fixture
def fake() -> Iterator[RunningServer]:
    state = FakeState()
    state.adapters = ["intents@latest"]
    with serve(state) as server:
        yield server


def answer(fake: RunningServer, rows: list[dict], right: int) -> None:
    """The adapter (whatever version `latest` serves) answers the first `right` rows correctly; the base none."""
    for model, n in (("intents@latest", right), (fake.state.base, 0)):
        fake.state.answers[model] = {r["messages"][0]["content"]: r["messages"][1]["content"] if i < n else "no idea"
                                     for i, r in enumerate(rows)}


def eval_run(capsys, data_dir: Path, suite: Path, fake: RunningServer) -> int:
    code, _, err = run(capsys, "--data-dir", str(data_dir), "eval", "run", str(suite), "--endpoint", fake.url,
                       "--no-cache")
    assert code in (0, 1), err
    return code


def test_promotion_reads_real_eval_runs(capsys, fake: RunningServer, registry: Registry, tmp_path: Path,
                                        data_dir: Path) -> None:
    rows = intent_rows(30)
    write_jsonl(tmp_path / "suites" / "data" / "test.jsonl", rows)
    suite = tmp_path / "suites" / "suite.yaml"
    suite.write_text(SUITE.format(threshold=0.9), encoding="utf-8")
    register(registry, tmp_path)
    fake.state.served = {"intents@latest": "intents@v1"}

    answer(fake, rows, right=3)  # a bad adapter: its gates fail
    assert eval_run(capsys, data_dir, suite, fake) == 1
    code, _, err = run(capsys, "--data-dir", str(data_dir), "adapters", "promote", "intents@v1", "--to", "prod")
    assert code == 1
    assert "✗ suite intents: gates: gates failed: label_f1 >= 0.9" in err, err

    answer(fake, rows, right=30)  # fixed: a later run of the same suite passes
    assert eval_run(capsys, data_dir, suite, fake) == 0
    code, out, err = run(capsys, "--data-dir", str(data_dir), "adapters", "promote", "intents@v1", "--to", "prod")
    assert code == 0, err
    assert "✓ suite intents: gates: all gates passed" in out

    register(registry, tmp_path)  # v2 answers exactly as v1 did: no gain over prod
    fake.state.served = {"intents@latest": "intents@v2"}
    assert eval_run(capsys, data_dir, suite, fake) == 0
    code, _, err = run(capsys, "--data-dir", str(data_dir), "adapters", "promote", "intents@v2", "--to", "prod")
    assert code == 1
    assert "✗ suite intents: paired gain vs v1: rougeL +0.0000" in err and "over 30 paired samples" in err, err
    assert registry.aliases("intents")["prod"] == "v1"
