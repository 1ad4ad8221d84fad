"""Evaluation test fixtures: the fake OpenAI server and small suites on disk."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.openai_eval_server import FakeState, RunningServer, serve

INTENTS = ["billing", "refund", "shipping"]


@pytest.fixture(scope="module")
def fake_server() -> Iterator[RunningServer]:
    with serve() as server:
        yield server


@pytest.fixture
def fake(fake_server: RunningServer) -> RunningServer:
    """The module's server with its script reset for each test."""
    st = fake_server.state
    fresh = FakeState()
    st.base, st.adapters, st.answers, st.default = fresh.base, ["intents@v2", "intents@v3"], {}, fresh.default
    st.served, st.fail_next, st.fail_from, st.api_key = {"intents@latest": "intents@v3"}, [], None, None
    st.adapters.append("intents@latest")
    st.delay_s, st.max_in_flight, st.token_logprob, st.pins = 0.0, 0, None, {}
    st.base_info, st.roots, st.reject_prompt_logprobs = {}, {}, False
    st.requests.clear()
    return fake_server


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def intent_rows(n: int = 12) -> list[dict]:
    rows = []
    for i in range(n):
        label = INTENTS[i % 3]
        rows.append({"id": f"s{i}", "label": label, "messages": [
            {"role": "user", "content": f"ticket {i}: question about {label}"},
            {"role": "assistant", "content": f"[Intent: {label}] Routing your {label} question."}]})
    return rows


def script_intents(fake: RunningServer, rows: list[dict], *, adapter_correct: int, base_correct: int = 0) -> None:
    """The adapter answers the first `adapter_correct` rows right, the base `base_correct`."""
    for model, right in (("intents@latest", adapter_correct), ("intents@v2", adapter_correct),
                         ("fake-base", base_correct)):
        answers = fake.state.answers.setdefault(model, {})
        for i, row in enumerate(rows):
            text = row["messages"][0]["content"]
            answers[text] = row["messages"][1]["content"] if i < right else "I am not sure what you mean."


SUITE = """\
name: intents
dataset: data/test.jsonl
targets: [base, intents@latest]
generation: {{max_tokens: 16}}
metrics: [accuracy, label_f1, exact_match, rougeL]
extraction:
  label_pattern: '^\\[Intent:\\s*([^\\]]+)\\]'
  labels: [billing, refund, shipping]
stats: {{resamples: 200, seed: 1}}
gates:
  - label_f1 >= {threshold}
  - rougeL: {{vs: base, min_delta: 0.05, significant: true}}
"""


@pytest.fixture
def intent_suite(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "suites" / "data" / "test.jsonl", intent_rows())
    path = tmp_path / "suites" / "suite.yaml"
    path.write_text(SUITE.format(threshold=0.9), encoding="utf-8")
    return path
