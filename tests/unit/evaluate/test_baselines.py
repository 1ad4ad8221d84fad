"""Declared baselines against the fake endpoint: the k-shot turns and the structured-outputs body sent,
held-out examples refused, the best baseline picked, and "does NOT beat" said plainly."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lorafleet.evaluate.runner import RunOptions, run_suite
from lorafleet.evaluate.suite import load_suite

from lorafleet.cli.main import main
from lorafleet.errors import ConfigError, HeldOutError
from lorafleet.heldout import HeldOutIndex
from tests.fakes.openai_eval_server import RunningServer
from tests.unit.evaluate.conftest import INTENTS, intent_rows, write_jsonl

SUITE = """\
name: intents
dataset: data/test.jsonl
targets: [base, intents@latest]
generation: {{max_tokens: 16}}
metrics: [accuracy, label_f1]
extraction:
  label_pattern: '\\[Intent:\\s*([^\\]]+?)\\s*\\]'
  labels: [billing, refund, shipping]
stats: {{resamples: 200, seed: 1}}
gates:
  - label_f1 >= 0.5
baselines:
{baselines}
"""
KSHOT = "  - {name: base-2shot, kind: k_shot, k: 2, examples: data/train.jsonl, seed: 0}"
CONSTRAINED = "  - {name: base-constrained, kind: constrained}"
BOTH = "  - {name: base-2shot-c, kind: k_shot, k: 2, examples: data/train.jsonl, constrained: true}"


def train_rows(n: int = 6) -> list[dict]:
    """Train prompts worded unlike the test prompts (a guard near-match would be a real leak)."""
    rows = []
    for i in range(n):
        label = INTENTS[i % 3]
        rows.append({"messages": [{"role": "system", "content": "You route tickets."},
                                  {"role": "user", "content": f"Example customer #{i} wrote in; the topic: {label}."},
                                  {"role": "assistant", "content": f"[Intent: {label}] ok"}]})
    return rows


@pytest.fixture
def respond(fake: RunningServer) -> Iterator[RunningServer]:
    yield fake
    fake.state.respond = None


def make_suite(tmp_path: Path, *baselines: str, train: list[dict] | None = None) -> Path:
    write_jsonl(tmp_path / "suites" / "data" / "test.jsonl", intent_rows())
    write_jsonl(tmp_path / "suites" / "data" / "train.jsonl", train if train is not None else train_rows())
    path = tmp_path / "suites" / "suite.yaml"
    path.write_text(SUITE.format(baselines="\n".join(baselines)), encoding="utf-8")
    return path


def gold(body: dict[str, Any]) -> str:
    """The label the test prompt is about (the last user turn ends with it)."""
    text = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
    return text.rsplit(" ", 1)[-1]


def run(suite: Path, fake: RunningServer, data_dir: Path):
    return run_suite(load_suite(suite), suite, RunOptions(endpoint=fake.url, data_dir=data_dir),
                     runs_dir=data_dir / "runs").results


def test_k_shot_sends_train_examples_as_turns_before_the_prompt(respond, tmp_path, data_dir) -> None:
    suite = make_suite(tmp_path, KSHOT)
    results = run(suite, respond, data_dir)
    assert set(results.targets) == {"base", "intents@latest", "base-2shot"}
    assert results.targets["base-2shot"].model == "fake-base" and results.targets["base-2shot"].role == "baseline"
    assert "2-shot from data/train.jsonl" in (results.targets["base-2shot"].baseline or "")
    shots = [b for b in respond.state.requests if len(b["messages"]) > 1]
    assert len(shots) == 12 and all(b["model"] == "fake-base" for b in shots)
    train = train_rows()
    first = shots[0]["messages"]
    # two (user, assistant) example pairs, the examples' system prompts dropped, then the test prompt
    assert [m["role"] for m in first] == ["user", "assistant", "user", "assistant", "user"]
    examples = {(r["messages"][1]["content"], r["messages"][2]["content"]) for r in train}
    assert {(first[0]["content"], first[1]["content"]), (first[2]["content"], first[3]["content"])} <= examples
    assert first[4]["content"].startswith("ticket ")
    assert all(b["messages"][:4] == first[:4] for b in shots)  # the same examples for every prompt
    assert "structured_outputs" not in shots[0]
    plain = [b for b in respond.state.requests if len(b["messages"]) == 1]
    assert len(plain) == 24  # base and the adapter are sent the prompt alone


def test_k_shot_examples_follow_the_suite_system_prompt(respond, tmp_path, data_dir) -> None:
    suite = make_suite(tmp_path, KSHOT)
    suite.write_text(suite.read_text().replace("generation:", "system_prompt: Name the intent.\ngeneration:"))
    run(suite, respond, data_dir)
    shot = next(b for b in respond.state.requests if len(b["messages"]) > 2)
    assert [m["role"] for m in shot["messages"]] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert shot["messages"][0]["content"] == "Name the intent."


def test_constrained_sends_the_label_set_as_structured_outputs_choice(respond, tmp_path, data_dir) -> None:
    suite = make_suite(tmp_path, CONSTRAINED, BOTH)
    results = run(suite, respond, data_dir)
    choice = {"choice": ["[Intent: billing]", "[Intent: refund]", "[Intent: shipping]"]}
    constrained = [b for b in respond.state.requests if "structured_outputs" in b]
    assert len(constrained) == 24 and all(b["structured_outputs"] == choice for b in constrained)
    # room for the longest choice even at one token per byte (the suite's max_tokens is 16)
    assert {b["max_tokens"] for b in constrained} == {len("[Intent: shipping]") + 4}
    assert sum(len(b["messages"]) == 5 for b in constrained) == 12  # k-shot + constrained
    assert results.targets["base-2shot-c"].baseline.endswith("decoding constrained to the labels")
    unconstrained = [b for b in respond.state.requests if b["model"] == "intents@latest"]
    assert unconstrained and not any("structured_outputs" in b for b in unconstrained)


def test_best_baseline_is_the_highest_and_an_adapter_that_does_not_beat_it_is_told(
        respond, tmp_path, data_dir, capsys) -> None:
    def answer(body: dict[str, Any]) -> str | None:
        label = gold(body)
        if "structured_outputs" in body:  # constrained: right on the first 9 of 12
            n = int(re.search(r"ticket (\d+)", body["messages"][-1]["content"]).group(1))
            return f"[Intent: {label if n < 9 else 'refund' if label != 'refund' else 'billing'}]"
        if body["model"] == "intents@latest":
            return f"[Intent: {label}] routed"  # the adapter: always right
        if len(body["messages"]) > 1:
            return f"[Intent: {label}]"  # the 2-shot base: also always right
        return "I am not sure."  # the zero-shot base: never in format

    respond.state.respond = answer
    suite = make_suite(tmp_path, KSHOT, CONSTRAINED)
    results = run(suite, respond, data_dir)
    best = results.best_baseline["label_f1"]
    assert best.baseline == "base-2shot" and best.value == 1.0
    assert best.candidates["base"] == 0.0 and 0 < best.candidates["base-constrained"] < 1.0
    (vs,) = best.adapters
    assert vs.target == "intents@latest" and vs.delta == 0.0 and not vs.beats
    # the adapter against every baseline is a paired comparison
    pairs = {(c.target, c.vs) for c in results.comparisons if c.metric == "label_f1"}
    assert {("intents@latest", "base"), ("intents@latest", "base-2shot"),
            ("intents@latest", "base-constrained")} <= pairs
    # the gate applies to the adapter only: a baseline is there to be beaten, not gated
    assert {g.target for g in results.gates} == {"intents@latest"}
    report = next((data_dir / "runs").iterdir()) / "report.md"
    assert "intents@latest does **NOT** beat base-2shot on label_f1 (+0.000 [+0.000, +0.000]" in report.read_text()

    code = main_code(capsys, "--data-dir", str(data_dir), "eval", "run", str(suite), "--endpoint", respond.url)
    out = capsys.readouterr().out
    assert code == 0 and "intents@latest does NOT beat base-2shot on label_f1 (+0.000 [+0.000, +0.000]" in out


def test_an_adapter_that_beats_every_baseline_is_said_to(respond, tmp_path, data_dir) -> None:
    def answer(body: dict[str, Any]) -> str | None:
        if body["model"] == "intents@latest":
            return f"[Intent: {gold(body)}]"
        return "[Intent: billing]"  # every baseline: always the same label

    respond.state.respond = answer
    results = run(make_suite(tmp_path, KSHOT, CONSTRAINED), respond, data_dir)
    (vs,) = results.best_baseline["label_f1"].adapters
    assert vs.beats and vs.delta > 0.5
    data = json.loads((next((data_dir / "runs").iterdir()) / "results.json").read_text())
    assert data["best_baseline"]["label_f1"]["adapters"][0]["beats"] is True


def main_code(capsys, *args: str) -> int:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return int(exc.value.code or 0)


def test_a_held_out_k_shot_example_is_refused_naming_file_and_line(respond, tmp_path, data_dir) -> None:
    test_prompt = intent_rows()[4]
    train = train_rows(2) + [test_prompt] + train_rows(2)
    suite = make_suite(tmp_path, "  - {name: base-5shot, kind: k_shot, k: 5, examples: data/train.jsonl}",
                       train=train)
    with pytest.raises(HeldOutError) as exc:
        run(suite, respond, data_dir)
    assert "data/train.jsonl:3: matches held-out eval" in exc.value.message
    assert "test.jsonl:5" in exc.value.message
    assert respond.state.requests == []  # refused before anything was sent
    assert not (data_dir / "runs").exists() or not any((data_dir / "runs").iterdir())


def test_a_val_split_as_examples_is_refused(respond, tmp_path, data_dir) -> None:
    suite = make_suite(tmp_path, KSHOT)
    HeldOutIndex(data_dir).add_file(tmp_path / "suites" / "data" / "train.jsonl", "val")  # it is someone's val
    with pytest.raises(HeldOutError) as exc:
        run(suite, respond, data_dir)
    assert "matches held-out val" in exc.value.message


def test_the_cli_exits_1_on_a_held_out_example(respond, tmp_path, data_dir, capsys) -> None:
    suite = make_suite(tmp_path, KSHOT, train=intent_rows()[1:])  # test prompts, not the same file
    code = main_code(capsys, "--data-dir", str(data_dir), "eval", "run", str(suite), "--endpoint", respond.url)
    err = capsys.readouterr().err
    assert code == 1 and "data/train.jsonl:" in err and "Traceback" not in err


def test_examples_that_are_the_suite_dataset_are_refused(tmp_path) -> None:
    suite = make_suite(tmp_path, "  - {name: b, kind: k_shot, examples: data/test.jsonl}")
    with pytest.raises(ConfigError) as exc:
        load_suite(suite)
    assert f"{suite}:13: baselines.0.examples: the examples are the suite's own dataset" in exc.value.message
    # the same bytes under another name too (checked at run time)
    (tmp_path / "suites" / "data" / "copy.jsonl").write_bytes((tmp_path / "suites" / "data" / "test.jsonl")
                                                              .read_bytes())
    suite.write_text(suite.read_text().replace("data/test.jsonl, ", "data/copy.jsonl, ").replace(
        "examples: data/test.jsonl}", "examples: data/copy.jsonl}"))
    with pytest.raises(ConfigError, match="is the suite's own dataset"):
        run_suite(load_suite(suite), suite, RunOptions(endpoint="http://127.0.0.1:9", data_dir=tmp_path / "d"),
                  runs_dir=tmp_path / "runs")


@pytest.mark.parametrize(("baseline", "message"), [
    ("  - {name: b, kind: k_shot}", "baselines.0: a k_shot baseline needs 'examples'"),
    ("  - {name: b, kind: constrained, examples: data/train.jsonl}", "takes no examples"),
    ("  - {name: base, kind: constrained}", "'base' is already a target or baseline"),
    ("  - {name: b, kind: k_shot, examples: data/nope.jsonl}", "baselines.0.examples: no such file"),
    ("  - {name: b, kind: constrained, choice_format: 'Intent'}", "choice_format must contain {label}"),
])
def test_bad_baselines_name_the_line_and_the_fix(tmp_path, baseline: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_suite(make_suite(tmp_path, baseline))
    assert message in exc.value.message and ":13:" in exc.value.message


def test_constrained_needs_a_label_task(tmp_path) -> None:
    suite = make_suite(tmp_path, CONSTRAINED)
    suite.write_text(suite.read_text().replace("metrics: [accuracy, label_f1]", "metrics: [rougeL]")
                     .replace("  - label_f1 >= 0.5\n", "  - rougeL >= 0.1\n"))
    with pytest.raises(ConfigError, match="constrained decoding needs a label task"):
        load_suite(suite)


def test_review_gets_the_suite_targets_not_the_baselines() -> None:
    from lorafleet.evaluate.suite import ReviewSpec
    from lorafleet.evaluate.targets import PlannedTarget, RunPlan, for_review

    plan = RunPlan(targets=[
        PlannedTarget(name="base", model="m", role="base", ref="base"),
        PlannedTarget(name="x@v1", model="x@v1", role="adapter", ref="x@canary", alias_of="x@canary", weight=0.9),
        PlannedTarget(name="x@v2", model="x@v2", role="adapter", ref="x@canary", alias_of="x@canary", weight=0.1),
        PlannedTarget(name="base-3shot", model="m", role="baseline", ref="base-3shot")])
    outputs = {t.name: {} for t in plan.targets}
    spec, kept = for_review(ReviewSpec(sample=2, pairwise=["base", "x@canary"]), plan, outputs)
    assert set(kept) == {"base", "x@v1", "x@v2"} and spec.pairwise == ["base", "x@v1"]
