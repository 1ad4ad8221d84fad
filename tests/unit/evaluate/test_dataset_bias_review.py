"""Datasets in every format, counterfactual variants and their gaps, review push items."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from lorafleet.evaluate.dataset import load_samples
from lorafleet.evaluate.review_push import push, push_to_queues, review_items
from lorafleet.evaluate.runner import RunOptions, run_suite
from lorafleet.evaluate.store import RunStore
from lorafleet.evaluate.suite import Suite, load_suite

from lorafleet.errors import FormatError
from lorafleet.samples import IngestRequest, ReviewClient
from tests.unit.evaluate.conftest import intent_rows, script_intents, write_jsonl


def suite(**extra) -> Suite:
    return Suite.model_validate({"name": "t", "dataset": "x.jsonl", "targets": ["base"], "metrics": ["rougeL"],
                                 **extra})


def test_alpaca_and_prompt_completion_records_become_chat_samples(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "Classify.", "input": "Clause text", "output": "termination", "label": "termination"},
        {"prompt": "Say hi", "completion": "hi", "id": "pc", "references": ["hi", "hello"]}])
    samples = load_samples(suite(system_prompt="Be brief."), path)
    assert samples[0].id == "line1" and samples[0].label == "termination"
    assert [m.role for m in samples[0].messages] == ["system", "user"]
    assert samples[0].messages[1].content == "Classify.\n\nClause text"
    assert samples[1].id == "pc" and samples[1].references == ["hi", "hello"]


def test_dataset_errors_name_the_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "prompt": "p", "completion": "c"},
                                              {"id": "a", "prompt": "q", "completion": "d"}])
    with pytest.raises(FormatError, match=r"d.jsonl:2: field 'id': duplicate id"):
        load_samples(suite(), path)
    bad = write_jsonl(tmp_path / "e.jsonl", [{"text": "no format"}])
    with pytest.raises(FormatError, match=r"e.jsonl:1"):
        load_samples(suite(), bad)


def test_limit_keeps_the_first_records(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", intent_rows(12))
    assert len(load_samples(suite(dataset={"path": "x", "limit": 5}), path)) == 5


def test_counterfactual_variants_swap_both_ways_keeping_case(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"id": "a", "prompt": "John said he lost his card.", "completion": "John: lost card."},
        {"id": "b", "prompt": "Nothing to swap here.", "completion": "x"}])
    samples = load_samples(suite(counterfactual={"swaps": [["John", "Maria"], ["he", "she"], ["his", "her"]]}),
                           path)
    assert [s.id for s in samples] == ["a", "b", "a~cf"]
    assert samples[2].messages[0].content == "Maria said she lost her card."
    assert samples[2].references == ["Maria: lost card."]
    assert samples[2].metadata["counterfactual_of"] == "a"


def test_counterfactual_prefix_gives_nameless_prompts_an_attribute(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", intent_rows(2))
    samples = load_samples(suite(counterfactual={"swaps": [["John", "Maria"], ["London", "Lagos"]],
                                                 "prefix": "I am John from London. "}), path)
    assert [s.id for s in samples] == ["s0", "s1", "s0~cf", "s1~cf"]
    assert samples[0].messages[0].content.startswith("I am John from London. ticket 0")
    assert samples[2].messages[0].content.startswith("I am Maria from Lagos. ticket 0")


def test_bias_suite_reports_label_flips(fake, tmp_path: Path, data_dir: Path) -> None:
    rows = [{"id": f"r{i}", "label": "refund", "messages": [
        {"role": "user", "content": f"{name} wants a refund for order {i}"},
        {"role": "assistant", "content": "[Intent: refund] ok"}]} for i, name in enumerate(["John", "Maria"] * 3)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    # The "adapter" answers right for John prompts and wrongly for Maria ones: every pair flips.
    fake.state.default = lambda model, text: "[Intent: refund] ok" if "John" in text else "[Intent: other] no"
    (tmp_path / "s.yaml").write_text(
        "name: bias\ndataset: d.jsonl\ntargets: [intents@latest]\nmetrics: [accuracy, token_f1]\n"
        "extraction: {label_pattern: '\\[Intent: (\\w+)\\]'}\ncounterfactual: {swaps: [[John, Maria]]}\n"
        "stats: {resamples: 100}\n")
    outcome = run_suite(load_suite(tmp_path / "s.yaml"), tmp_path / "s.yaml", RunOptions(endpoint=fake.url),
                        runs_dir=data_dir / "runs")
    bias = outcome.results.bias["intents@latest"]
    assert bias.pairs == 6
    assert bias.label_flip_rate == 1.0 and bias.output_changed_rate == 1.0
    assert bias.metric_gaps["accuracy"] == 0.0  # half of originals and half of variants are John
    assert "Counterfactual gaps" in (outcome.path / "report.md").read_text()


def test_review_items_are_tagged_and_pushed(fake, intent_suite: Path, data_dir: Path) -> None:
    script_intents(fake, intent_rows(), adapter_correct=12)
    s = load_suite(intent_suite)
    s.review.sample, s.review.pairwise, s.review.rubric = 3, ["base", "intents@latest"], "default"
    outcome = run_suite(s, intent_suite, RunOptions(endpoint=fake.url), runs_dir=data_dir / "runs")
    store = RunStore(outcome.path)
    items = review_items(outcome.results.run_id, s.name, s.review, store.samples(), store.outputs(), store.scores())
    rubric = [i for i in items if i.response is not None]
    pairs = [i for i in items if i.responses is not None]
    assert len(rubric) == 6 and len(pairs) == 3
    adapter_item = next(i for i in rubric if i.metadata["target"] == "intents@latest")
    assert adapter_item.adapter == "intents@v3" and adapter_item.source == "eval"
    assert adapter_item.scores["accuracy"] == 1.0 and adapter_item.metadata["run_id"] == outcome.results.run_id
    assert set(pairs[0].responses) == {"base", "intents@latest"}
    assert pairs[0].metadata["scores"]["intents@latest"]["label_f1"] == 1.0

    received: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        IngestRequest.model_validate(body)  # the review app's wire contract
        received.append(body)
        return httpx.Response(200, json={"created": len(body["items"]), "existing": 0})

    client = ReviewClient("http://review.test", "tok", data_dir / "spool.jsonl", transport=httpx.MockTransport(handler))
    assert push(client, "eval", items).ok
    assert sum(len(b["items"]) for b in received) == 9

    # A review queue is rubric or pairwise: the A/B items go to a queue of their own.
    received.clear()
    assert push_to_queues(client, s.review, items).ok
    by_queue = {b["queue"]: len(b["items"]) for b in received}
    assert by_queue == {s.review.queue: 6, f"{s.review.queue}-pairwise": 3}

    down = ReviewClient("http://127.0.0.1:9", "tok", data_dir / "spool2.jsonl", timeout=1)
    summary = push(down, "eval", items)
    assert not summary.ok and summary.spooled == 9 and summary.refused == 0
    assert down.pending() == 9


def test_dataset_from_an_adapter_cards_split(tmp_path: Path, registry) -> None:
    from lorafleet.evaluate.dataset import dataset_path

    from lorafleet.card import AdapterCard, BaseModelRef, DatasetFile, LoraInfo
    from lorafleet.errors import ConfigError
    from tests.unit.core.peft_files import write_fake_peft

    data = write_jsonl(tmp_path / "test.jsonl", intent_rows(3))
    card = AdapterCard(name="intents", version="v1", base=BaseModelRef(id="tiny"),
                       lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj", "v_proj"]),
                       dataset=[DatasetFile(path=str(data), sha256="0" * 64, split="test")])
    registry.register("intents", write_fake_peft(tmp_path / "peft"), card)
    s = suite(dataset={"adapter": "intents@latest", "split": "test"})
    assert dataset_path(s, tmp_path / "s.yaml", registry) == data
    assert len(load_samples(s, data)) == 3
    with pytest.raises(ConfigError, match="records no 'val' dataset"):
        dataset_path(suite(dataset={"adapter": "intents", "split": "val"}), tmp_path / "s.yaml", registry)


def test_run_is_recorded_on_the_served_versions_card(fake, intent_suite: Path, data_dir: Path, registry,
                                                     tmp_path: Path) -> None:
    from lorafleet.evaluate.card_link import link_run_to_cards

    from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo
    from tests.unit.core.peft_files import write_fake_peft

    card = AdapterCard(name="intents", version="v1", base=BaseModelRef(id="tiny"),
                       lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj", "v_proj"]))
    registry.register("intents", write_fake_peft(tmp_path / "peft"), card)
    fake.state.served["intents@latest"] = "intents@v1"
    outcome = run_suite(load_suite(intent_suite), intent_suite, RunOptions(endpoint=fake.url),
                        runs_dir=data_dir / "runs")
    assert link_run_to_cards(registry, outcome.results, outcome.path) == ["intents@v1"]
    assert link_run_to_cards(registry, outcome.results, outcome.path) == []  # once per run
    runs = registry.resolve("intents@v1").card.eval_runs
    assert len(runs) == 1 and runs[0]["run_id"] == outcome.results.run_id and runs[0]["target"] == "intents@latest"
    assert "label_f1" in runs[0]["metrics"] and runs[0]["passed"] is False
