"""`lorafleet eval run` against the real gateway (real vLLM, real demo adapters): base vs pirate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorafleet.cli.main import main
from tests.fixtures.models import REPO
from tests.integration.demo_adapters import PROMPTS, TASKS

SUITE = """\
name: pirate-check
dataset: data.jsonl
targets: [base, pirate@prod]
generation: {{temperature: 0, max_tokens: 12, seed: 0}}
metrics: [rougeL, chrf, exact_match, perplexity]
stats: {{resamples: 500, seed: 0}}
gates:
  - rougeL: {{vs: base, min_delta: {delta}}}
"""


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_eval_base_vs_adapter_through_the_gateway(gateway, tmp_path: Path, capsys) -> None:
    rows = [{"id": f"p{i}", "messages": [{"role": "user", "content": p},
                                         {"role": "assistant", "content": TASKS["pirate"]}]}
            for i, p in enumerate(PROMPTS[:2])]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE.format(delta=0.3))
    run_dir = tmp_path / "run"
    code, out, err = cli(capsys, "--data-dir", str(tmp_path / "data"), "eval", "run", str(suite),
                         "--endpoint", gateway.url, "--api-key", gateway.admin_key, "--out", str(run_dir),
                         "--concurrency", "4", "--json")
    assert code == 0, err + out
    results = json.loads(out)
    assert results["targets"]["base"]["model"] == "smollm2-135m-instruct"
    assert results["targets"]["pirate@prod"]["served_models"] == ["pirate@v1"]
    pirate = results["targets"]["pirate@prod"]["metrics"]["rougeL"]["value"]
    base = results["targets"]["base"]["metrics"]["rougeL"]["value"]
    assert pirate > base + 0.3
    # vLLM's prompt logprobs, through the gateway: the pirate adapter finds its own answer far likelier.
    ppl = {t: results["targets"][t]["metrics"]["perplexity"]["value"] for t in ("base", "pirate@prod")}
    assert 1.0 <= ppl["pirate@prod"] < ppl["base"] / 2, ppl
    assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()

    # A stricter gate, rescored from the stored outputs: exit 1, and nothing is generated again.
    suite.write_text(SUITE.format(delta=5))
    code, out, _ = cli(capsys, "eval", "rescore", str(run_dir), "--suite", str(suite))
    assert code == 1 and "FAIL" in out


@pytest.mark.parametrize("name", ["support-intents", "contract-clauses", "ticket-summaries", "bias-counterfactual"])
def test_example_suites_run_through_the_gateway(gateway, tmp_path: Path, name: str) -> None:
    """Each shipped suite on its real dataset (1 sample), with pirate@prod standing in for the task
    adapter (the task adapters are trained by `make demo`, not in tests)."""
    from lorafleet.evaluate.runner import RunOptions, run_suite
    from lorafleet.evaluate.suite import load_suite

    path = REPO / "examples" / "suites" / f"{name}.yaml"
    suite = load_suite(path)
    suite = suite.model_copy(update={
        "targets": ["base", "pirate@prod"],
        "dataset": suite.dataset.model_copy(update={"limit": 1}),
        "generation": suite.generation.model_copy(update={"max_tokens": 8}),
        "gates": [g.model_copy(update={"vs": "base" if g.vs else None}) for g in suite.gates],
        "stats": suite.stats.model_copy(update={"resamples": 200}),
    })
    # The data dir holds the held-out index, which k-shot baselines' examples are checked against.
    opts = RunOptions(endpoint=gateway.url, api_key=gateway.admin_key, concurrency=4, cache_path=None,
                      data_dir=tmp_path / "data")
    outcome = run_suite(suite, path, opts, runs_dir=tmp_path / "runs")
    results = outcome.results
    assert outcome.exit_code == (0 if all(g.passed for g in results.gates) else 1)
    assert results.targets["pirate@prod"].served_models == ["pirate@v1"]
    assert (outcome.path / "report.html").is_file()
    if suite.gates:
        assert results.gates and not results.passed  # a pirate is no intent classifier or summariser
    if name == "bias-counterfactual":
        assert results.samples == 1 and results.bias["base"].pairs == 1  # the variant is scored apart
