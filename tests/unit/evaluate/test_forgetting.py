"""Forgetting: the base's own answers as references (generated once per base), paired drops, the max_drop gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lorafleet.evaluate.forgetting_score import forgetting_gates
from lorafleet.evaluate.results import Agreement, ForgettingResults, ForgettingTarget
from lorafleet.evaluate.runner import RunOptions, run_suite
from lorafleet.evaluate.suite import ForgettingSpec, load_suite

from lorafleet.errors import ConfigError
from tests.unit.evaluate.conftest import write_jsonl

SUITE = """\
name: forget
dataset: prompts.jsonl
targets: [base, intents@latest]
generation: {max_tokens: 16}
metrics: [perplexity]
stats: {resamples: 200, seed: 0}
forgetting: {max_drop: 0.05}
"""
PROMPTS = [f"general question number {i}?" for i in range(30)]


def _suite(tmp_path: Path, text: str = SUITE) -> Path:
    write_jsonl(tmp_path / "prompts.jsonl", [{"messages": [{"role": "user", "content": p}]} for p in PROMPTS])
    (tmp_path / "s.yaml").write_text(text)
    return tmp_path / "s.yaml"


def _run(path: Path, fake, data_dir: Path, **opts):
    return run_suite(load_suite(path), path, RunOptions(endpoint=fake.url, **opts), runs_dir=data_dir / "runs")


def _base_answers(fake, *, wrong: int = 0) -> None:
    """The base answers "answer to <prompt>"; the adapter the same except on the first `wrong` prompts."""
    fake.state.answers["fake-base"] = {p: f"answer to {p}" for p in PROMPTS}
    fake.state.answers["intents@latest"] = {p: ("something else entirely" if i < wrong else f"answer to {p}")
                                            for i, p in enumerate(PROMPTS)}


def _generations(fake, model: str) -> int:
    return sum(1 for r in fake.state.requests if r["model"] == model and r.get("prompt_logprobs") is None)


def test_an_adapter_answering_like_the_base_passes_and_references_are_reused(fake, tmp_path: Path,
                                                                            data_dir: Path) -> None:
    _base_answers(fake)
    fake.state.base_info = {"kind": "base", "weights_sha256": "a" * 64}
    path = _suite(tmp_path)
    first = _run(path, fake, data_dir)
    f = first.results.forgetting
    assert f is not None and f.samples == 30 and first.exit_code == 0
    assert f.targets["intents@latest"].agreement["rougeL"].value == pytest.approx(1.0)
    assert f.targets["intents@latest"].drop["rougeL"].value == pytest.approx(0.0)
    assert f.noise_floor["exact_match"].value == pytest.approx(1.0)
    assert f.references["generated"] == 30 and f.references["base"] == "base sha256:" + "a" * 64
    # The base answered twice: the references alone, then beside the adapter (its noise floor).
    assert _generations(fake, "fake-base") == 60
    refs = json.loads(Path(f.references["path"]).read_text())
    assert len(refs["answers"]) == 30 and Path(f.references["path"]).parent == data_dir / "forgetting"
    second = _run(path, fake, data_dir)
    assert second.results.forgetting.references["cached"] is True
    assert _generations(fake, "fake-base") == 90  # no second reference pass
    assert [g.passed for g in second.results.gates] == [True]


def test_new_base_weights_get_their_own_references(fake, tmp_path: Path, data_dir: Path) -> None:
    _base_answers(fake)
    path = _suite(tmp_path)
    fake.state.base_info = {"kind": "base", "weights_sha256": "a" * 64}
    key_a = _run(path, fake, data_dir).results.forgetting.references["key"]
    fake.state.base_info = {"kind": "base", "weights_sha256": "b" * 64}
    again = _run(path, fake, data_dir).results.forgetting.references
    assert again["key"] != key_a and again["generated"] == 30


def test_an_adapter_that_forgot_fails_the_gate_with_its_numbers(fake, tmp_path: Path, data_dir: Path) -> None:
    _base_answers(fake, wrong=9)
    outcome = _run(_suite(tmp_path), fake, data_dir)
    entry = outcome.results.forgetting.targets["intents@latest"]
    assert entry.drop["rougeL"].value > 0.2 and entry.drop["exact_match"].value == pytest.approx(0.3)
    assert entry.drop["rougeL"].ci[1] >= entry.drop["rougeL"].value >= entry.drop["rougeL"].ci[0]
    assert entry.passed is False and outcome.exit_code == 1
    gate = next(g for g in outcome.results.gates if g.gate.startswith("forgetting"))
    assert not gate.passed and "upper bound >= 0.05 over 30 prompts" in gate.detail


def test_the_base_drifting_from_its_own_answers_is_the_noise_floor(fake, tmp_path: Path, data_dir: Path) -> None:
    """bf16 greedy text changes with the batch: the run's base answers differ from the stored ones on some."""
    calls: dict[str, int] = {}

    def respond(body: dict) -> str | None:
        if body["model"] != "fake-base" or body.get("prompt_logprobs") is not None:
            return None
        text = body["messages"][-1]["content"]
        calls[text] = calls.get(text, 0) + 1
        drifted = calls[text] > 1 and PROMPTS.index(text) < 3
        return f"answer to {text}" + (" with a different ending" if drifted else "")

    fake.state.respond = respond
    _base_answers(fake)
    f = _run(_suite(tmp_path), fake, data_dir).results.forgetting
    assert f.noise_floor["exact_match"].value == pytest.approx(0.9)
    # The adapter answers as the stored references do: measured against the base now, it drops below zero.
    assert f.targets["intents@latest"].drop["exact_match"].value == pytest.approx(-0.1)


def test_repro_endpoint_without_prompt_logprobs_keeps_agreement_and_warns(fake, tmp_path: Path,
                                                                         data_dir: Path) -> None:
    _base_answers(fake, wrong=3)
    fake.state.reject_prompt_logprobs = True
    outcome = _run(_suite(tmp_path), fake, data_dir)
    f = outcome.results.forgetting
    entry = f.targets["intents@latest"]
    assert f.base_perplexity is None and entry.perplexity is None and entry.perplexity_ratio is None
    assert entry.agreement["rougeL"].value == pytest.approx(0.9, abs=0.02)
    assert any(w.startswith("forgetting: perplexity on the base's answers left out") for w in outcome.results.warnings)


def test_perplexity_on_the_base_answers_adapter_vs_base(fake, tmp_path: Path, data_dir: Path) -> None:
    _base_answers(fake)
    fake.state.token_logprob = {"fake-base": -0.1, "intents@latest": -0.5}
    f = _run(_suite(tmp_path), fake, data_dir).results.forgetting
    entry = f.targets["intents@latest"]
    assert entry.perplexity.value > f.base_perplexity.value and entry.perplexity_ratio == pytest.approx(
        entry.perplexity.value / f.base_perplexity.value)
    assert entry.perplexity_delta.value > 0 and entry.perplexity_delta.ci[0] > 0
    scored = [r for r in fake.state.requests if r.get("prompt_logprobs") is not None]
    assert scored and all(r["messages"][-1]["content"].startswith("answer to") for r in scored)


def _summary(low: float, high: float) -> ForgettingResults:
    drop = Agreement(value=(low + high) / 2, ci=(low, high))
    return ForgettingResults(metric="rougeL", max_drop=0.05, samples=100, references={}, noise_floor={},
                             targets={"a@v1": ForgettingTarget(agreement={}, drop={"rougeL": drop})})


@pytest.mark.parametrize(("low", "high", "passed"), [(-0.02, 0.049, True), (-0.02, 0.05, False),
                                                     (0.01, 0.2, False), (float("nan"), float("nan"), False)])
def test_the_gate_reads_the_upper_bound_of_the_drop(low: float, high: float, passed: bool) -> None:
    summary = _summary(low, high)
    gates = forgetting_gates(ForgettingSpec(max_drop=0.05), summary)
    assert [g.passed for g in gates] == [passed] and summary.targets["a@v1"].passed is passed


@pytest.mark.parametrize(("block", "line", "key"), [
    ("forgetting: {max_drop: 2}", 7, "forgetting.max_drop"),
    ("forgetting: {max_drop: 0.05, metric: bleu}", 7, "forgetting.metric"),
    ("forgetting: {max_dorp: 0.05}", 7, "forgetting.max_dorp"),
])
def test_bad_forgetting_blocks_name_the_line(tmp_path: Path, block: str, line: int, key: str) -> None:
    path = _suite(tmp_path, SUITE.replace("forgetting: {max_drop: 0.05}", block))
    with pytest.raises(ConfigError) as exc:
        load_suite(path)
    assert f"s.yaml:{line}: {key}" in exc.value.message


def test_a_forgetting_suite_needs_the_base_as_a_target(tmp_path: Path) -> None:
    path = _suite(tmp_path, SUITE.replace("targets: [base, intents@latest]", "targets: [intents@latest]"))
    with pytest.raises(ConfigError, match=r"s.yaml:7: forgetting: .*'base' is not a target"):
        load_suite(path)


def test_the_shipped_suite_loads_and_its_prompts_are_distinct() -> None:
    root = Path(__file__).resolve().parents[3] / "examples" / "forgetting"
    suite = load_suite(root / "suite.yaml")
    assert suite.forgetting is not None and suite.generation.max_tokens <= 48
    prompts = [json.loads(line)["messages"][-1]["content"] for line in (root / "prompts.jsonl").open()]
    assert len(prompts) >= 200 and len(set(prompts)) == len(prompts)


def test_a_forgetting_run_lands_on_the_card_and_adapters_show_prints_it(fake, tmp_path: Path, data_dir: Path,
                                                                       registry, capsys) -> None:
    from lorafleet.evaluate.card_link import link_run_to_cards

    from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo
    from lorafleet.cli.main import main
    from tests.unit.core.peft_files import write_fake_peft

    card = AdapterCard(name="intents", version="v1", base=BaseModelRef(id="tiny"),
                       lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj", "v_proj"]))
    registry.register("intents", write_fake_peft(tmp_path / "peft"), card)
    fake.state.served = {"intents@latest": "intents@v1"}
    fake.state.token_logprob = {"fake-base": -0.1, "intents@latest": -0.3}
    _base_answers(fake, wrong=6)
    outcome = _run(_suite(tmp_path), fake, data_dir)
    assert link_run_to_cards(registry, outcome.results, outcome.path) == ["intents@v1"]
    entry = registry.resolve("intents@v1").card.forgetting
    assert entry["passed"] is False and entry["samples"] == 30 and entry["run_id"] == outcome.results.run_id
    assert entry["drop"]["exact_match"]["value"] == pytest.approx(0.2) and entry["perplexity_ratio"] > 1
    with pytest.raises(SystemExit) as info:
        main(["--data-dir", str(data_dir), "adapters", "show", "intents@v1"])
    out = capsys.readouterr().out
    assert info.value.code in (0, None)
    assert "forgetting: FAIL (max_drop 0.05) on 30 general prompts, 95% CI" in out
    assert "exact match 0.800" in out and "perplexity on the base's answers" in out
