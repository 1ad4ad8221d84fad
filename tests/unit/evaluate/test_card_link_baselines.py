"""The eval run's entry on a card carries what the gateway's live drift compares against."""

from __future__ import annotations

from pathlib import Path

from lorafleet.evaluate.runner import RunOptions, run_suite
from lorafleet.evaluate.suite import load_suite

from tests.unit.evaluate.conftest import intent_rows, script_intents


def test_entry_records_output_lengths_label_format_and_invalid_rate(fake, intent_suite: Path, data_dir: Path,
                                                                    registry, tmp_path: Path) -> None:
    from lorafleet.evaluate.card_link import link_run_to_cards
    from lorafleet.evaluate.store import RunStore

    from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo
    from tests.unit.core.peft_files import write_fake_peft

    card = AdapterCard(name="intents", version="v1", base=BaseModelRef(id="tiny"),
                       lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj", "v_proj"]))
    registry.register("intents", write_fake_peft(tmp_path / "peft"), card)
    fake.state.served["intents@latest"] = "intents@v1"
    script_intents(fake, intent_rows(), adapter_correct=9)  # 3 of 12 answers name no label: INVALID
    outcome = run_suite(load_suite(intent_suite), intent_suite, RunOptions(endpoint=fake.url),
                        runs_dir=data_dir / "runs")
    assert link_run_to_cards(registry, outcome.results, outcome.path) == ["intents@v1"]
    (run,) = registry.resolve("intents@v1").card.eval_runs
    assert run["label_pattern"] == r"^\[Intent:\s*([^\]]+)\]"
    assert run["labels"] == ["billing", "refund", "shipping"] and run["label_case_sensitive"] is False
    assert run["invalid_rate"] == 0.25
    outputs = RunStore(outcome.path).outputs()["intents@latest"].values()
    tokens = [c.completion_tokens for c in outputs]
    assert run["output_tokens_mean"] == round(sum(tokens) / len(tokens), 2) > 0
    assert run["output_chars_mean"] == round(sum(len(c.output) for c in outputs) / len(tokens), 2)
