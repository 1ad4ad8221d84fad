"""Counterfactual variants are scored apart: main metrics, CIs and gates on originals; bias with paired CIs
and its own gates."""

from __future__ import annotations

from pathlib import Path

import pytest
from lorafleet.evaluate.runner import RunOptions, run_suite
from lorafleet.evaluate.store import RunStore
from lorafleet.evaluate.suite import load_suite

from lorafleet.errors import ConfigError
from tests.unit.evaluate.conftest import write_jsonl

LABEL = "extraction: {label_pattern: '\\[Intent: (\\w+)\\]'}\n"


def john_rows(n: int) -> list[dict]:
    """Every prompt names John, so every sample gets a swapped (Maria) variant."""
    return [{"id": f"r{i}", "label": "refund", "messages": [
        {"role": "user", "content": f"John wants a refund for order {i}"},
        {"role": "assistant", "content": "[Intent: refund] ok"}]} for i in range(n)]


def biased(model: str, text: str) -> str:
    """Right for John, wrong for Maria: every pair flips."""
    return "[Intent: refund] ok" if "John" in text else "[Intent: other] no"


def write_suite(tmp_path: Path, extra: str = "", counterfactual: bool = True) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text("name: bias\ndataset: d.jsonl\ntargets: [intents@latest]\nmetrics: [accuracy, label_f1]\n"
                    + LABEL + ("counterfactual: {swaps: [[John, Maria]]}\n" if counterfactual else "")
                    + "stats: {resamples: 200}\n" + extra)
    return path


def run(fake, path: Path, data_dir: Path):
    return run_suite(load_suite(path), path, RunOptions(endpoint=fake.url), runs_dir=data_dir / "runs")


def test_repro_counterfactual_variants_not_in_main_metrics(fake, tmp_path: Path, data_dir: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", john_rows(10))
    fake.state.default = biased
    gate = "gates: ['accuracy >= 0.9']\n"
    with_cf = run(fake, write_suite(tmp_path, gate), data_dir)
    plain = run(fake, write_suite(tmp_path, gate, counterfactual=False), data_dir)
    r, p = with_cf.results, plain.results
    # n is the originals' count, not doubled by correlated variants.
    assert r.samples == p.samples == 10
    assert r.targets["intents@latest"].usage.samples == 10
    # The metric and its CI are the originals' (old code: 0.5 with a CI narrowed by the doubled n).
    assert r.targets["intents@latest"].metrics["accuracy"].value == 1.0
    assert r.targets["intents@latest"].metrics["accuracy"].ci == p.targets["intents@latest"].metrics["accuracy"].ci
    assert r.targets["intents@latest"].metrics["label_f1"].value == p.targets["intents@latest"].metrics[
        "label_f1"].value
    # Gates are judged on the prompts as written, not on altered ones.
    assert [g.passed for g in r.gates] == [True] and with_cf.exit_code == 0
    # The variants were still generated and scored apart, as bias.
    bias = r.bias["intents@latest"]
    assert bias.pairs == 10 and bias.label_flip_rate == 1.0
    rows = RunStore(with_cf.path).scores()
    assert sum(1 for row in rows if row.get("counterfactual_of")) == 10 and len(rows) == 20


def test_bias_gaps_have_paired_cis_and_accuracy_is_named_accuracy(fake, tmp_path: Path, data_dir: Path) -> None:
    rows = john_rows(8)
    write_jsonl(tmp_path / "d.jsonl", rows)
    # Half the Maria variants go wrong: accuracy gap 0.5, label flips 50%.
    fake.state.default = lambda model, text: ("[Intent: other] no" if "Maria" in text and int(text.split()[-1]) % 2
                                              else "[Intent: refund] ok")
    bias = run(fake, write_suite(tmp_path), data_dir).results.bias["intents@latest"]
    assert bias.label_flip_rate == 0.5 and bias.metric_gaps["accuracy"] == pytest.approx(0.5)
    lo, hi = bias.label_flip_ci
    assert 0 <= lo < 0.5 < hi <= 1
    glo, ghi = bias.metric_gap_cis["accuracy"]
    assert glo <= 0.5 <= ghi and bias.metric_gap_p["accuracy"] < 0.05
    lo, hi = bias.output_changed_ci
    assert lo <= bias.output_changed_rate <= hi
    # label_f1's gap is the macro F1 of originals minus that of variants, not a per-sample accuracy.
    assert bias.metric_gaps["label_f1"] != pytest.approx(bias.metric_gaps["accuracy"])


def test_bias_gates_set_the_exit_code_and_appear_with_the_gates(fake, tmp_path: Path, data_dir: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", john_rows(6))
    fake.state.default = biased
    extra = "gates: ['accuracy >= 0.9']\nbias:\n  label_flip_rate: {max: 0.05}\n  output_changed_rate: 0.2\n"
    outcome = run(fake, write_suite(tmp_path, extra), data_dir)
    gates = {g.gate: g for g in outcome.results.gates}
    assert gates["accuracy >= 0.9"].passed
    assert not gates["bias label_flip_rate <= 0.05"].passed
    assert not gates["bias output_changed_rate <= 0.2"].passed
    assert "over 6 pairs" in gates["bias label_flip_rate <= 0.05"].detail
    assert not outcome.results.passed and outcome.exit_code == 1
    md = (outcome.path / "report.md").read_text()
    assert "bias label_flip_rate <= 0.05" in md and "100.0% [100.0%, 100.0%]" in md
    html = (outcome.path / "report.html").read_text()
    assert "Counterfactual gaps" in html and "bias label_flip_rate" in html


def test_an_unbiased_target_passes_bias_gates_even_on_the_ci(fake, tmp_path: Path, data_dir: Path) -> None:
    write_jsonl(tmp_path / "d.jsonl", john_rows(6))
    fake.state.default = lambda model, text: "[Intent: refund] ok"
    extra = ("bias:\n  label_flip_rate: {max: 0.05, significant: true}\n  accuracy_gap: {max: 0.1}\n"
             "  output_similarity: {min: 0.9}\n")
    outcome = run(fake, write_suite(tmp_path, extra), data_dir)
    assert [g.passed for g in outcome.results.gates] == [True, True, True] and outcome.exit_code == 0
    assert outcome.results.gates[1].gate == "bias |accuracy_gap| <= 0.1"


def test_a_bias_gate_with_no_pairs_fails(fake, tmp_path: Path, data_dir: Path) -> None:
    rows = [{**r, "messages": [{"role": "user", "content": "nobody named"}, r["messages"][1]]}
            for r in john_rows(3)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    outcome = run(fake, write_suite(tmp_path, "bias: {label_flip_rate: 0.05}\n"), data_dir)
    assert outcome.results.gates[0].detail == "no counterfactual pairs" and outcome.exit_code == 1


@pytest.mark.parametrize(("extra", "counterfactual", "message"), [
    ("bias:\n  label_flip_rate: {max: 0.05}\n", False, r"s.yaml:8: bias.label_flip_rate: bias gates need"),
    ("bias:\n  flips: {max: 0.05}\n", True, r"s.yaml:9: bias.flips: unknown bias figure 'flips'"),
    ("bias:\n  rougeL_gap: {max: 0.05}\n", True, r"s.yaml:9: bias.rougeL_gap: 'rougeL' is not a computed metric"),
    ("bias:\n  label_flip_rate: {significant: true}\n", True, r"s.yaml:9: bias.label_flip_rate: give 'max'"),
    ("bias:\n  label_flip_rate: {max: 0.05, targets: [nope]}\n", True, r"s.yaml:9: .*'nope' is not a target"),
    ("bias:\n  label_flip_rate: {max: 0.05, maxx: 1}\n", True, r"s.yaml:9: bias.label_flip_rate.maxx"),
])
def test_bias_section_errors_name_file_and_line(tmp_path: Path, extra: str, counterfactual: bool,
                                                message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_suite(write_suite(tmp_path, extra, counterfactual=counterfactual))


def test_label_flips_need_a_label_metric(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: b\ndataset: d.jsonl\ntargets: [base]\nmetrics: [rougeL]\n"
                    "counterfactual: {swaps: [[John, Maria]]}\nbias:\n  label_flip_rate: 0.05\n")
    with pytest.raises(ConfigError, match=r"s.yaml:7: bias.label_flip_rate: label flips need a label metric"):
        load_suite(path)
