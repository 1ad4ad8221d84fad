"""`eval run` on a weighted alias through the real gateway (fake vLLM behind it): every version scored."""

from __future__ import annotations

import json
from pathlib import Path

from lorafleet.evaluate.runner import RunOptions, rescore, run_suite
from lorafleet.evaluate.suite import load_suite
from lorafleet.serve.config import ServeSettings
from lorafleet.serve.keys import KeyStore

from lorafleet.registry import Registry
from tests.fakes.openai_upstream import FakeUpstream
from tests.unit.evaluate.conftest import write_jsonl
from tests.unit.serve.conftest import BASE, gateway_on_loopback, register_dummy

SUITE = """\
name: canary-check
dataset: data.jsonl
targets: [base, support-intents@canary]
generation: {max_tokens: 8}
metrics: [exact_match, token_f1]
stats: {resamples: 200, seed: 0}
gates:
  - {metric: exact_match, threshold: 0.5, targets: [support-intents@canary]}
"""


def test_repro_weighted_alias_evaluates_every_version(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    settings = ServeSettings(data_dir=data, base_name=BASE, probe=False, health_interval=3600, key_cache_ttl=0,
                             registry_ttl=0, hot_set=4)
    registry = Registry(settings.registry_dir)
    register_dummy(registry, "support-intents", tmp_path, times=2)
    registry.set_alias("support-intents", "canary", {"v1": 0.9, "v2": 0.1})
    # The fake vLLM answers "<served name> says hi": only v2 gives the reference.
    write_jsonl(tmp_path / "data.jsonl", [{"id": f"s{i}", "messages": [
        {"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "support-intents@v2 says hi"}]}
        for i in range(8)])
    suite_path = tmp_path / "suite.yaml"
    suite_path.write_text(SUITE)
    fake = FakeUpstream(BASE, api_key="upstream-key")
    with fake.serve() as upstream, gateway_on_loopback(settings, upstream, fake.api_key,
                                                       KeyStore(settings.db_url)) as (url, admin, _):
        outcome = run_suite(load_suite(suite_path), suite_path, RunOptions(endpoint=url, api_key=admin, concurrency=4),
                            runs_dir=tmp_path / "runs")
    results = outcome.results
    # b51dae6: one target `support-intents@canary`, pinned to the first listed version (v1) only.
    assert set(results.targets) == {"base", "support-intents@v1", "support-intents@v2"}
    v1, v2 = results.targets["support-intents@v1"], results.targets["support-intents@v2"]
    assert v1.served_models == ["support-intents@v1"] and v2.served_models == ["support-intents@v2"]
    assert (v1.alias_of, v1.weight, v2.alias_of, v2.weight) == ("support-intents@canary", 0.9,
                                                                "support-intents@canary", 0.1)
    assert v1.metrics["exact_match"].value == 0.0 and v2.metrics["exact_match"].value == 1.0
    # paired with each other and each against the baseline
    pairs = {(c.target, c.vs) for c in results.comparisons if c.metric == "exact_match"}
    assert pairs == {("support-intents@v1", "base"), ("support-intents@v2", "base"),
                     ("support-intents@v2", "support-intents@v1")}
    v2_vs_v1 = next(c for c in results.comparisons if c.metric == "exact_match" and c.vs == "support-intents@v1")
    assert v2_vs_v1.delta == 1.0 and v2_vs_v1.significant
    # a gate on the alias is judged on every version behind it
    assert {(g.target, g.passed) for g in results.gates} == {("support-intents@v1", False),
                                                             ("support-intents@v2", True)}
    sent = {c.body["model"] for c in fake.calls("/v1/chat/completions")}
    assert sent == {BASE, "support-intents@v1", "support-intents@v2"}
    report = (outcome.path / "report.md").read_text()
    assert "`support-intents@v1`: a version behind the weighted alias `support-intents@canary`, 90% of its traffic" \
        in report
    manifest = json.loads((outcome.path / "manifest.json").read_text())
    assert [t["name"] for t in manifest["plan"]["targets"]] == ["base", "support-intents@v1", "support-intents@v2"]
    # rescoring the stored run finds the same targets
    assert set(rescore(outcome.path).targets) == set(results.targets)
