"""Perplexity of the reference from the endpoint's prompt logprobs; lower-is-better gates."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from lorafleet.evaluate.client import reference_nll
from lorafleet.evaluate.runner import RunOptions, run_suite
from lorafleet.evaluate.suite import load_suite

from tests.unit.evaluate.conftest import intent_rows, write_jsonl


def test_reference_nll_walks_back_over_the_tokens_spelling_the_reference() -> None:
    # vLLM's shape, the chat template ending with the reference "Paris is big"
    lp = [None, {"9": {"logprob": -5.0, "rank": 3, "decoded_token": "assistant\n"}},
          {"1": {"logprob": -0.5, "rank": 1, "decoded_token": "Par"}},
          {"2": {"logprob": -0.25, "rank": 1, "decoded_token": "is"}},
          {"3": {"logprob": -1.0, "rank": 2, "decoded_token": " is"}},
          {"4": {"logprob": -0.25, "rank": 1, "decoded_token": " big"}}]
    assert reference_nll(lp, "Paris is big") == (2.0, 4)
    assert reference_nll(lp, "") is None
    assert reference_nll(None, "x") is None
    assert reference_nll([None], "longer than the prompt") is None


SUITE = """\
name: ppl
dataset: data.jsonl
targets: [base, intents@latest]
metrics: [perplexity, exact_match]
stats: {resamples: 100}
gates:
  - perplexity <= 2
  - perplexity: {vs: base, min_delta: 1}
"""


def test_perplexity_per_target_and_lower_is_better_gates(fake, tmp_path: Path, data_dir: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", intent_rows(6))
    (tmp_path / "s.yaml").write_text(SUITE)
    fake.state.token_logprob = {"fake-base": -1.0, "intents@latest": -0.1}
    outcome = run_suite(load_suite(tmp_path / "s.yaml"), tmp_path / "s.yaml", RunOptions(endpoint=fake.url),
                        runs_dir=data_dir / "runs")
    base = outcome.results.targets["base"].metrics["perplexity"]
    adapter = outcome.results.targets["intents@latest"].metrics["perplexity"]
    assert base.value == pytest.approx(math.e) and adapter.value == pytest.approx(math.exp(0.1))
    assert base.config["lower_is_better"]
    assert outcome.exit_code == 0, outcome.results.gates
    scored = [r for r in fake.state.requests if r.get("prompt_logprobs") is not None]
    assert len(scored) == 12 and scored[0]["messages"][-1]["role"] == "assistant"
    assert scored[0]["continue_final_message"] is True and scored[0]["add_generation_prompt"] is False


def test_endpoint_without_logprobs_just_leaves_perplexity_out(fake, tmp_path: Path, data_dir: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", intent_rows(3))
    (tmp_path / "s.yaml").write_text(SUITE.split("gates:")[0])
    outcome = run_suite(load_suite(tmp_path / "s.yaml"), tmp_path / "s.yaml", RunOptions(endpoint=fake.url),
                        runs_dir=data_dir / "runs")
    assert "perplexity" not in outcome.results.targets["base"].metrics
    assert "exact_match" in outcome.results.targets["base"].metrics
