"""Each kind of evidence the policy asks for, passing and failing, at the exact version promoted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorafleet.promotion import PromotionRefused, promote
from lorafleet.promotion.decisions import journal
from lorafleet.promotion.rollback import record_probe_warning
from lorafleet.registry import Registry
from tests.unit.promotion.helpers import link_run, register, set_card_field, write_run

GOOD = [1.0] * 30
BAD = [0.0] * 30


def evaluated(registry: Registry, tmp_path: Path, *, passed: bool = True, name: str = "intents") -> str:
    version = register(registry, tmp_path, name)
    run = write_run(tmp_path / "runs", f"intents-{version}", "intents", {"adapter": GOOD, "base": BAD},
                    passed={"adapter": passed})
    link_run(registry, f"{name}@{version}", run, "adapter", passed=passed)
    return version


def refused_items(registry: Registry, ref: str, alias: str = "prod", **kw) -> dict[str, str]:
    with pytest.raises(PromotionRefused) as info:
        promote(registry, ref, alias, who="tester", **kw)
    assert info.value.decision is not None
    return {c.item: c.detail for c in info.value.decision.checks if not c.ok}


def test_full_evidence_promotes_and_records_the_decision(registry: Registry, tmp_path: Path) -> None:
    v = evaluated(registry, tmp_path)
    out = promote(registry, f"intents@{v}", "prod", who="tester")
    assert registry.aliases("intents")["prod"] == v
    card = registry.card("intents", v)
    assert [d["kind"] for d in card.decisions] == ["promoted"]
    d = card.decisions[0]
    assert d["who"] == "tester" and len(d["policy_sha256"]) == 64
    assert d["evidence"]["eval_runs"] == ["forgetting-1", "intents-v1"]
    assert d["evidence"]["forgetting"] == "forgetting-1"
    assert all(c.ok for c in out.checks)
    assert [j.kind for j in journal(registry, "intents")] == ["promoted"]


def test_failed_suite_gates_refuse_naming_the_gate_and_leave_the_alias(registry: Registry, tmp_path: Path) -> None:
    v = evaluated(registry, tmp_path, passed=False)
    failed = refused_items(registry, f"intents@{v}")
    assert "accuracy >= 0.9: value 0.1000 >= 0.9" in failed["suite intents: gates"]
    assert "prod" not in registry.aliases("intents")
    assert [d["kind"] for d in registry.card("intents", v).decisions] == ["refused"]


def test_no_eval_run_refuses(registry: Registry, tmp_path: Path) -> None:
    v = register(registry, tmp_path)
    failed = refused_items(registry, f"intents@{v}")
    assert "suites evaluated" in failed


def test_required_suite_without_a_run_refuses(registry: Registry, tmp_path: Path) -> None:
    v = evaluated(registry, tmp_path)
    (registry.root / "intents" / "policy.yaml").write_text("suites: {required: [intents, other]}\n")
    failed = refused_items(registry, f"intents@{v}")
    assert "no eval run of suite other" in failed["suite other: gates"]
    assert "suite intents: gates" not in failed


def test_paired_gain_over_the_current_version(registry: Registry, tmp_path: Path) -> None:
    v1 = evaluated(registry, tmp_path)
    promote(registry, f"intents@{v1}", "prod", who="t")
    v2 = register(registry, tmp_path)
    # One run that scored both versions (eval run intents@prod and intents@v2): paired per sample.
    run = write_run(tmp_path / "runs", "both", "intents",
                    {"prod": [0.0] * 15 + [1.0] * 15, "new": [1.0] * 28 + [0.0] * 2},
                    passed={"new": True, "prod": True})
    link_run(registry, f"intents@{v1}", run, "prod", created_at="2026-02-01")
    link_run(registry, f"intents@{v2}", run, "new", created_at="2026-02-01")
    out = promote(registry, f"intents@{v2}", "prod", who="t")
    gain = next(c for c in out.checks if c.item == "suite intents: paired gain vs v1")
    assert gain.ok and "+0.4333" in gain.detail and gain.evidence == ["both"]
    assert registry.aliases("intents")["prod"] == v2


def test_no_significant_gain_refuses(registry: Registry, tmp_path: Path) -> None:
    v1 = evaluated(registry, tmp_path)
    promote(registry, f"intents@{v1}", "prod", who="t")
    v2 = register(registry, tmp_path)
    # A separate run of the same suite, same samples: paired across runs; equal scores → no gain.
    run = write_run(tmp_path / "runs", "second", "intents", {"adapter": GOOD}, passed={"adapter": True})
    link_run(registry, f"intents@{v2}", run, "adapter")
    failed = refused_items(registry, f"intents@{v2}")
    assert "+0.0000" in failed["suite intents: paired gain vs v1"]
    assert registry.aliases("intents")["prod"] == v1


def test_repro_runs_in_the_same_second_pair_with_the_later_one(registry: Registry, tmp_path: Path) -> None:
    # v1 failed its first run, was fixed, and passed a second run finishing in the same second (created_at has
    # one-second resolution on older cards). v2 equals the fixed v1: pairing with the earlier, failed run
    # showed a gain of +0.9 and promoted it.
    v1 = register(registry, tmp_path)
    first = write_run(tmp_path / "runs", "first", "intents", {"adapter": [1.0] * 3 + [0.0] * 27},
                      passed={"adapter": False})
    fixed = write_run(tmp_path / "runs", "fixed", "intents", {"adapter": GOOD}, passed={"adapter": True})
    link_run(registry, f"intents@{v1}", first, "adapter", passed=False, created_at="2026-03-01T10:00:00+00:00")
    link_run(registry, f"intents@{v1}", fixed, "adapter", created_at="2026-03-01T10:00:00+00:00")
    promote(registry, f"intents@{v1}", "prod", who="t")  # the latest run of the suite is the passing one
    v2 = register(registry, tmp_path)
    again = write_run(tmp_path / "runs", "v2", "intents", {"adapter": GOOD}, passed={"adapter": True})
    link_run(registry, f"intents@{v2}", again, "adapter", created_at="2026-03-01T10:00:00+00:00")
    failed = refused_items(registry, f"intents@{v2}")
    assert "+0.0000" in failed["suite intents: paired gain vs v1"]
    assert registry.aliases("intents")["prod"] == v1


def test_gain_needs_a_run_of_the_incumbent(registry: Registry, tmp_path: Path) -> None:
    v1 = register(registry, tmp_path)
    registry.set_alias("intents", "prod", v1)  # moved by hand, never evaluated
    v2 = evaluated(registry, tmp_path)
    failed = refused_items(registry, f"intents@{v2}")
    assert "v1 has no run of intents to pair with" in failed["suite intents: paired gain vs v1"]


def test_gain_on_too_few_shared_samples_refuses(registry: Registry, tmp_path: Path) -> None:
    v1 = evaluated(registry, tmp_path)
    promote(registry, f"intents@{v1}", "prod", who="t")
    v2 = register(registry, tmp_path)
    run = write_run(tmp_path / "runs", "short", "intents", {"adapter": [1.0] * 5}, passed={"adapter": True})
    link_run(registry, f"intents@{v2}", run, "adapter")
    assert "5 samples shared" in refused_items(registry, f"intents@{v2}")["suite intents: paired gain vs v1"]


@pytest.mark.parametrize(("fidelity", "needle"), [
    ({"passed": False, "forced": True, "token_agreement": 0.5, "mean_abs_logprob_diff": 0.9},
     "failed (registered with --force)"),
    ({"skipped": "--skip-fidelity"}, "skipped (--skip-fidelity)"),
    ({}, "not checked"),
])
def test_fidelity_not_passed_refuses(registry: Registry, tmp_path: Path, fidelity: dict, needle: str) -> None:
    v = evaluated(registry, tmp_path)
    set_card_field(registry, f"intents@{v}", fidelity=fidelity)
    assert needle in refused_items(registry, f"intents@{v}")["fidelity"]


@pytest.mark.parametrize(("forgetting", "needle"), [
    ({"metric": "rougeL", "passed": False, "max_drop": 0.05, "samples": 60,
      "drop": {"rougeL": {"value": 0.2, "ci": [0.15, 0.25]}}}, "FAILED non-inferiority: drop of rougeL 0.2"),
    ({"skipped": "engine did not start"}, "skipped (engine did not start)"),
    ({"metric": "rougeL", "passed": None, "samples": 60, "drop": {}}, "no verdict (the run had no forgetting"),
    ({}, "not measured"),
])
def test_forgetting_not_passed_refuses(registry: Registry, tmp_path: Path, forgetting: dict, needle: str) -> None:
    v = evaluated(registry, tmp_path)
    registry.update_card(f"intents@{v}", forgetting=forgetting)
    assert needle in refused_items(registry, f"intents@{v}")["forgetting"]


REVIEW = {"graded_items": 40, "grades": 80, "reviewers": 2, "queues": {"eval-intents": {}},
          "criteria": {"accuracy": {"n": 80, "mean": 4.1, "alpha": 0.72}, "tone": {"n": 80, "mean": 2.1, "alpha": 0.3}}}


def test_review_rule_per_criterion(registry: Registry, tmp_path: Path) -> None:
    v = evaluated(registry, tmp_path)
    registry.update_card(f"intents@{v}", review=REVIEW)
    policy = registry.root / "intents" / "policy.yaml"
    policy.write_text("review: {min_graded: 50, min_mean: 3.0, min_alpha: 0.6}\n")
    failed = refused_items(registry, f"intents@{v}")
    assert set(failed) == {"review tone"}
    assert "mean 2.1 < 3.0" in failed["review tone"] and "agreement α 0.3 < 0.6" in failed["review tone"]
    policy.write_text("review: {min_graded: 50, min_mean: 3.0, min_alpha: 0.6, criteria: [accuracy]}\n")
    out = promote(registry, f"intents@{v}", "prod", who="t")
    assert out.decision.evidence["review"]["criteria"]["accuracy"]["n"] == 80
    assert "review:eval-intents" in next(c for c in out.checks if c.item == "review accuracy").evidence


def test_review_missing_or_short_refuses(registry: Registry, tmp_path: Path) -> None:
    v = evaluated(registry, tmp_path)
    (registry.root / "intents" / "policy.yaml").write_text("review: {min_graded: 100, criteria: [accuracy]}\n")
    assert "no graded samples" in refused_items(registry, f"intents@{v}")["review"]
    registry.update_card(f"intents@{v}", review={"criteria": {"accuracy": {"n": 80, "mean": 4.0, "alpha": None,
                                                                           "alpha_note": "one reviewer"}}})
    assert "80 grades < 100" in refused_items(registry, f"intents@{v}")["review accuracy"]


def test_probe_warning_refuses(registry: Registry, tmp_path: Path) -> None:
    v = evaluated(registry, tmp_path)
    record_probe_warning(registry, f"intents@{v}", "answers exactly like the base", who="gateway:a")
    failed = refused_items(registry, f"intents@{v}")
    assert "1 probe warning(s)" in failed["probe"] and "gateway:a" in failed["probe"]


def test_force_overrides_with_a_recorded_reason(registry: Registry, tmp_path: Path) -> None:
    v = register(registry, tmp_path)
    with pytest.raises(Exception, match="--force needs --reason"):
        promote(registry, f"intents@{v}", "prod", who="t", force=True)
    out = promote(registry, f"intents@{v}", "prod", who="t", force=True, reason="hotfix, eval tomorrow")
    assert out.decision.forced and registry.aliases("intents")["prod"] == v
    d = registry.card("intents", v).decisions[-1]
    assert d["forced"] and d["reason"] == "hotfix, eval tomorrow" and any(not c["ok"] for c in d["checks"])


def test_decisions_journal_is_what_the_metric_counts(registry: Registry, tmp_path: Path) -> None:
    from lorafleet.promotion import count_decisions

    v = register(registry, tmp_path)
    with pytest.raises(PromotionRefused):
        promote(registry, f"intents@{v}", "prod", who="t")
    promote(registry, f"intents@{v}", "prod", who="t", force=True, reason="r")
    (registry.root / "intents" / "decisions.jsonl").open("a").write('{"kind": "prom')  # a torn line
    assert count_decisions(registry) == {("intents", "refused"): 1, ("intents", "promoted"): 1}
    assert json.loads((registry.root / "intents" / "decisions.jsonl").read_text().splitlines()[0])["kind"] == "refused"


@pytest.mark.parametrize(("suite", "metric"), [
    ({"metrics": ["accuracy", "label_f1"], "gates": [
        {"metric": "label_f1", "op": ">=", "threshold": 0.9, "vs": None},
        {"metric": "exact_match", "op": ">=", "threshold": None, "vs": "base"}]}, "exact_match"),
    ({"metrics": ["accuracy"], "gates": [{"metric": "label_f1", "op": ">=", "threshold": 0.9, "vs": None}]},
     "label_f1"),
    ({"metrics": [{"rouge": {"stemmer": True}}, "bleu"], "gates": []}, "rougeL"),
])
def test_gain_is_measured_on_the_suites_own_gain_metric(tmp_path: Path, suite: dict, metric: str) -> None:
    from lorafleet.promotion.evidence import first_metric

    (tmp_path / "manifest.json").write_text(json.dumps({"suite": suite}))
    assert first_metric(tmp_path) == metric
