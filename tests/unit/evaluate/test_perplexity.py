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
    assert any("perplexity left out" in w for w in outcome.results.warnings)  # said, not silent


def test_an_endpoint_refusing_prompt_logprobs_degrades_perplexity_not_the_run(fake, tmp_path: Path,
                                                                               data_dir: Path) -> None:
    """A 400 to prompt_logprobs used to raise EndpointError and fail the whole run."""
    write_jsonl(tmp_path / "data.jsonl", intent_rows(4))
    (tmp_path / "s.yaml").write_text(SUITE.split("gates:")[0] + "gates: ['exact_match >= 0']\n")
    fake.state.reject_prompt_logprobs = True
    outcome = run_suite(load_suite(tmp_path / "s.yaml"), tmp_path / "s.yaml",
                        RunOptions(endpoint=fake.url, concurrency=2), runs_dir=data_dir / "runs")
    results = outcome.results
    assert all("perplexity" not in t.metrics and "exact_match" in t.metrics for t in results.targets.values())
    assert len(results.warnings) == 1 and "perplexity left out for base (4 of 4 samples)" in results.warnings[0]
    assert "prompt_logprobs" in results.warnings[0]
    assert outcome.exit_code == 0 and [g.passed for g in results.gates] == [True]
    assert "**Warnings**" in (outcome.path / "report.md").read_text()
    assert "perplexity left out" in (outcome.path / "report.html").read_text()
    # Once refused, a model's log-probs are not asked for sample after sample.
    asked = [r for r in fake.state.requests if r.get("prompt_logprobs") is not None]
    assert len(asked) <= 4  # of 8: at most the two in flight per model


def test_a_perplexity_gate_fails_by_its_verdict_when_perplexity_is_left_out(capsys, fake, tmp_path: Path,
                                                                            data_dir: Path) -> None:
    from lorafleet.cli.main import main

    write_jsonl(tmp_path / "data.jsonl", intent_rows(3))
    (tmp_path / "s.yaml").write_text(SUITE)
    fake.state.reject_prompt_logprobs = True
    with pytest.raises(SystemExit) as exc:
        main(["--data-dir", str(data_dir), "eval", "run", str(tmp_path / "s.yaml"), "--endpoint", fake.url])
    out = capsys.readouterr().out
    assert exc.value.code == 1  # the gates' exit code, not an endpoint error (2)
    assert "metric not computed" in out and "warning: perplexity left out" in " ".join(out.split())


def test_a_real_endpoint_error_on_logprobs_still_fails(fake, tmp_path: Path, data_dir: Path) -> None:
    from lorafleet.evaluate.client import EndpointError

    write_jsonl(tmp_path / "data.jsonl", intent_rows(2))
    (tmp_path / "s.yaml").write_text(SUITE.split("gates:")[0].replace("targets: [base, intents@latest]",
                                                                       "targets: [base]"))
    fake.state.token_logprob = {"fake-base": -1.0}
    fake.state.fail_from = 2  # generation answers; every log-prob request gets 503
    with pytest.raises(EndpointError, match="failed"):
        run_suite(load_suite(tmp_path / "s.yaml"), tmp_path / "s.yaml",
                  RunOptions(endpoint=fake.url, max_retries=1, backoff_s=0.01), runs_dir=data_dir / "runs")
