"""The suite's LLM judge against the fake endpoint: pointwise metrics with CIs, pairwise with swapped
positions (flip rate), caching and provenance, unjudged samples, the failure-rate gate, agreement with
human grades (κ/α), trusted_if, a mismatched rubric (exit 2) and bad judge: keys."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lorafleet.evaluate.judge import parse_pairwise, parse_pointwise
from lorafleet.evaluate.runner import RunOptions, rescore, run_suite
from lorafleet.evaluate.store import RunStore
from lorafleet.evaluate.suite import load_suite

from lorafleet.cli.main import main
from lorafleet.errors import ConfigError
from lorafleet.rubrics import load_rubric
from tests.fakes.openai_eval_server import FakeState, RunningServer, free_port, serve
from tests.unit.evaluate.conftest import write_jsonl

ADAPTER = "summ@v1"
RUBRIC = """\
name: mini
criteria:
  - name: relevance
    description: Does it answer what was asked?
    anchors: {1: off-topic, 2: barely, 3: partly, 4: mostly, 5: fully}
  - name: accuracy
    description: Is it correct?
    anchors: {1: wrong, 2: mostly wrong, 3: half right, 4: nearly right, 5: right}
"""
SUITE = """\
name: summ
dataset: data/test.jsonl
targets: [base, {adapter}]
generation: {{max_tokens: 16}}
metrics: [token_f1]
stats: {{resamples: 200, seed: 1}}
judge:
{judge}
gates:
{gates}
"""


@pytest.fixture(scope="module")
def judge_server() -> Iterator[RunningServer]:
    with serve() as server:
        yield server


@pytest.fixture
def fake(judge_server: RunningServer) -> RunningServer:
    st = judge_server.state
    fresh = FakeState()
    st.base, st.adapters, st.answers, st.default = fresh.base, [ADAPTER], {}, fresh.default
    st.served, st.fail_next, st.fail_from, st.api_key, st.pins = {}, [], None, None, {}
    st.judge, st.reject_response_format, st.respond = None, False, None
    st.requests.clear()
    # The adapter writes good summaries, the base bad ones: an honest judge can tell them apart.
    st.default = lambda model, text: f"good summary of {text}" if model == ADAPTER else f"bad {text}"
    return judge_server


def rows(n: int = 12) -> list[dict[str, Any]]:
    return [{"id": f"s{i}", "messages": [{"role": "user", "content": f"ticket {i}: printer broken"},
                                         {"role": "assistant", "content": f"printer {i} broken"}]} for i in range(n)]


def make_suite(tmp_path: Path, judge: str, gates: str = "  - token_f1 >= 0", rubric: str = RUBRIC) -> Path:
    write_jsonl(tmp_path / "suites" / "data" / "test.jsonl", rows())
    (tmp_path / "suites" / "mini.yaml").write_text(rubric, encoding="utf-8")
    path = tmp_path / "suites" / "suite.yaml"
    path.write_text(SUITE.format(adapter=ADAPTER, judge=judge, gates=gates), encoding="utf-8")
    return path


def is_judge(body: dict[str, Any]) -> bool:
    return body["messages"][0]["content"].startswith("You are a strict, impartial grader")


def response_of(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"].rsplit("RESPONSE:\n", 1)[-1]


def honest(body: dict[str, Any]) -> str | None:
    """5/5 for a good summary, 2/1 for a bad one; pairwise: the good one wins, whatever its position."""
    if not is_judge(body):
        return None
    user = body["messages"][-1]["content"]
    if "RESPONSE A:" in user:
        a = user.split("RESPONSE A:\n", 1)[1].split("\n\nRESPONSE B:", 1)[0]
        return json.dumps({"winner": "A" if a.startswith("good") else "B"})
    good = response_of(body).startswith("good")
    return json.dumps({"relevance": 5, "accuracy": 5} if good else {"relevance": 2, "accuracy": 1})


def opts(fake: RunningServer, tmp_path: Path, **kw: Any) -> RunOptions:
    return RunOptions(endpoint=fake.url, concurrency=4, cache_path=tmp_path / "cache.sqlite", backoff_s=0.01,
                      max_retries=1, **kw)


def run(fake: RunningServer, tmp_path: Path, suite_path: Path, name: str = "run", **kw: Any):
    o = opts(fake, tmp_path, out=tmp_path / name, **kw)
    return run_suite(load_suite(suite_path), suite_path, o, runs_dir=tmp_path / "runs")


JUDGE = "  rubric: mini.yaml\n  model: base\n"


def judge_requests(fake: RunningServer) -> list[dict[str, Any]]:
    return [b for b in fake.state.requests if is_judge(b)]


def test_pointwise_judge_scores_each_criterion_with_cis_and_provenance(fake, tmp_path) -> None:
    fake.state.judge = honest
    fake.state.served = {"fake-base": "fake-base-2025-06"}
    outcome = run(fake, tmp_path, make_suite(tmp_path, JUDGE + "  sample: 8\n"))
    res = outcome.results
    adapter, base = res.targets[ADAPTER].metrics, res.targets["base"].metrics
    assert adapter["judge_relevance"].value == 5 and base["judge_relevance"].value == 2
    assert adapter["judge_accuracy"].value == 5 and base["judge_accuracy"].value == 1
    assert adapter["judge"].value == 5 and base["judge"].value == 1.5
    assert adapter["judge"].details == {"judged": 8, "unjudged": 0}
    lo, hi = base["judge"].ci
    assert lo <= 1.5 <= hi
    comp = next(c for c in res.comparisons if c.metric == "judge_relevance" and c.target == ADAPTER)
    assert comp.vs == "base" and comp.delta == 3 and comp.significant
    reqs = judge_requests(fake)
    assert len(reqs) == 16  # 8 sampled samples × 2 targets
    fmt = reqs[0]["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["schema"]["properties"]["relevance"]["enum"] == [1, 2, 3, 4, 5]
    assert "5: fully" in reqs[0]["messages"][0]["content"]  # the rubric's anchors are in the prompt
    j = res.judge
    assert j is not None and j.judged == 16 and j.unjudged == 0 and j.samples == 8
    assert j.provenance.model == "fake-base" and j.provenance.served_models == ["fake-base-2025-06"]
    assert j.provenance.rubric == "mini" and re.fullmatch(r"[0-9a-f]{64}", j.provenance.prompt_hash)
    assert "fake-base" in j.provenance.identity
    assert j.agreement.status == "not measured"
    scores = [r for r in RunStore(outcome.path).scores() if "judge_relevance" in r["scores"]]
    assert len(scores) == 16  # per-sample judge scores ride in scores.jsonl (and so into review items)
    md = (outcome.path / "report.md").read_text()
    assert "**LLM judge** `fake-base`" in md and "not measured" in md
    assert "LLM judge" in (outcome.path / "report.html").read_text()


def test_pairwise_runs_both_orders_and_reports_the_flip_rate(fake, tmp_path) -> None:
    fake.state.judge = lambda body: json.dumps({"winner": "A"}) if is_judge(body) else None  # always the first
    outcome = run(fake, tmp_path, make_suite(tmp_path, JUDGE + "  mode: pairwise\n  sample: 6\n"))
    pw = outcome.results.judge.pairwise
    assert (pw.a, pw.b) == ("base", ADAPTER)
    assert pw.pairs == 6 and pw.flips == 6 and pw.flip_rate == 1.0 and pw.first_position_rate == 1.0
    assert pw.wins_a == pw.wins_b == 0
    assert outcome.results.targets[ADAPTER].metrics["judge_pairwise"].value == 0.5  # a flip counts as a tie
    reqs = judge_requests(fake)
    assert len(reqs) == 12
    firsts = {r["messages"][-1]["content"].split("RESPONSE A:\n", 1)[1][:4] for r in reqs}
    assert firsts == {"good", "bad "}  # each sample shown both ways round
    assert "flips with the order 100.0%" in (outcome.path / "report.md").read_text()


def test_pairwise_consistent_judge_has_no_flips(fake, tmp_path) -> None:
    fake.state.judge = honest
    outcome = run(fake, tmp_path, make_suite(tmp_path, JUDGE + "  mode: both\n  sample: 6\n"))
    pw = outcome.results.judge.pairwise
    assert pw.flips == 0 and pw.flip_rate == 0.0 and pw.wins_b == 6 and pw.first_position_rate == 0.5
    assert outcome.results.targets[ADAPTER].metrics["judge_pairwise"].value == 1.0
    assert outcome.results.targets["base"].metrics["judge_pairwise"].value == 0.0
    assert outcome.results.targets[ADAPTER].metrics["judge_relevance"].value == 5


def test_verdicts_are_cached_and_a_changed_rubric_changes_the_prompt_hash(fake, tmp_path) -> None:
    fake.state.judge = honest
    suite = make_suite(tmp_path, JUDGE + "  sample: 4\n")
    first = run(fake, tmp_path, suite, "one").results.judge
    sent = len(judge_requests(fake))
    second = run(fake, tmp_path, suite, "two").results.judge
    assert len(judge_requests(fake)) == sent == 8  # nothing re-sent: every verdict from the cache
    verdicts = [json.loads(x) for x in (tmp_path / "two" / "judgements.jsonl").read_text().splitlines()]
    assert all(v["cached"] for v in verdicts) and all(v["prompt_hash"] == first.provenance.prompt_hash
                                                       for v in verdicts)
    assert second.provenance.prompt_hash == first.provenance.prompt_hash
    third = run(fake, tmp_path, make_suite(tmp_path, JUDGE + "  sample: 4\n",
                                           rubric=RUBRIC.replace("Is it correct?", "Is it true?")), "three")
    assert third.results.judge.provenance.prompt_hash != first.provenance.prompt_hash
    assert len(judge_requests(fake)) == 16  # a changed rubric is a new prompt: asked again


def test_repro_non_json_verdicts_are_unjudged_counted_and_fail_the_judge_gate(fake, tmp_path) -> None:
    def flaky(body: dict[str, Any]) -> str | None:
        if not is_judge(body):
            return None
        return "I think this one is fine." if response_of(body).startswith("bad") else honest(body)

    fake.state.judge = flaky
    suite = make_suite(tmp_path, JUDGE, gates="  - judge_relevance >= 1\n  - token_f1 >= 0")
    outcome = run(fake, tmp_path, suite)
    j = outcome.results.judge
    assert j.unjudged == 12 and j.judged == 12 and j.failure_rate == 0.5 and j.failures == {"not JSON": 12}
    assert j.unjudged_by_target == {"base": 12}
    assert "judge_relevance" not in outcome.results.targets["base"].metrics  # no score from nothing
    gate = next(g for g in outcome.results.gates if g.gate.startswith("judge_relevance"))
    assert not gate.passed and "judge failed on 50% of requests (12 of 24 unjudged; max_failure_rate 0.2)" in \
        gate.detail and "not JSON" in gate.detail
    assert outcome.exit_code == 1 and (outcome.path / "results.json").is_file()  # the run completed
    assert any("12 of 24 requests unjudged" in w for w in outcome.results.warnings)


def test_repro_a_down_judge_endpoint_leaves_samples_unjudged_and_the_run_completes(fake, tmp_path, monkeypatch
                                                                                  ) -> None:
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    dead = f"http://127.0.0.1:{free_port()}"
    judge = f"  rubric: mini.yaml\n  endpoint: {dead}\n  model: big-judge\n  api_key_env: JUDGE_KEY\n  retries: 0\n"
    outcome = run(fake, tmp_path, make_suite(tmp_path, judge + "  max_failure_rate: 0.5\n",
                                             gates="  - judge >= 3\n  - token_f1 >= 0"))
    j = outcome.results.judge
    assert j.unjudged == j.requests == 24 and j.failure_rate == 1.0
    assert all(r.startswith("judge endpoint failed") for r in j.failures)
    gate = next(g for g in outcome.results.gates if g.gate.startswith("judge "))
    assert not gate.passed and "judge failed on 100%" in gate.detail
    token = next(g for g in outcome.results.gates if g.gate.startswith("token_f1"))
    assert token.passed and outcome.results.targets[ADAPTER].metrics["token_f1"]  # the rest is scored
    assert j.provenance.endpoint == dead and j.provenance.model == "big-judge"


def test_judge_key_comes_from_the_named_env_var(fake, tmp_path, monkeypatch) -> None:
    fake.state.judge = honest
    fake.state.api_key = None
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-judge")
    judge = f"  rubric: mini.yaml\n  endpoint: {fake.url}\n  model: fake-base\n  api_key_env: MY_JUDGE_KEY\n"
    suite = make_suite(tmp_path, judge + "  sample: 2\n")
    outcome = run(fake, tmp_path, suite)
    assert outcome.results.judge.judged == 4
    monkeypatch.delenv("MY_JUDGE_KEY")
    with pytest.raises(ConfigError, match="MY_JUDGE_KEY is not set"):
        run(fake, tmp_path, suite, "again")


def test_structured_output_refused_is_asked_plainly_and_parsed_leniently(fake, tmp_path) -> None:
    fake.state.reject_response_format = True
    fake.state.judge = lambda body: (f"Sure! Here is my grade:\n```json\n{honest(body)}\n```" if is_judge(body)
                                     else None)
    outcome = run(fake, tmp_path, make_suite(tmp_path, JUDGE + "  sample: 3\n"))
    j = outcome.results.judge
    assert j.judged == 6 and j.provenance.response_format == "json_schema (refused)"
    assert outcome.results.targets[ADAPTER].metrics["judge_accuracy"].value == 5


def test_parse_is_lenient_but_refuses_off_scale_levels() -> None:
    rubric = load_rubric_text(RUBRIC)
    assert parse_pointwise('{"relevance": 4, "accuracy": "3"}', rubric) == ({"relevance": 4, "accuracy": 3}, None)
    assert parse_pointwise('{"scores": {"Relevance": 4.0, "accuracy": {"score": 2}}}', rubric)[0] == {
        "relevance": 4, "accuracy": 2}
    assert parse_pointwise('{"relevance": 9, "accuracy": 3}', rubric) == (None, "off the scale (relevance=9)")
    assert parse_pointwise("four out of five", rubric) == (None, "not JSON")
    assert parse_pointwise('{"relevance": 4}', rubric)[1] == "JSON without accuracy"
    assert parse_pairwise('verdict: {"winner": "B"}') == ("B", None)
    assert parse_pairwise('{"winner": "Tie"}') == ("tie", None)
    assert parse_pairwise('{"winner": "C"}')[0] is None


def load_rubric_text(text: str):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.yaml"
        path.write_text(text, encoding="utf-8")
        return load_rubric(path)


# ---- agreement with humans ------------------------------------------------------------------------------


def grades_file(path: Path, run_id: str, grade: Any, targets: tuple[str, ...] = ("base", ADAPTER),
                n: int = 12, criteria: tuple[str, ...] = ("relevance", "accuracy")) -> Path:
    """A grades export as `review export --format grades` writes it; `grade(target, i, criterion)` → level."""
    out = []
    for t in targets:
        for i in range(n):
            out.append({"queue": "eval-summ", "item": f"{run_id}:{t}:s{i}", "reviewer": "ann",
                        "scores": {c: grade(t, i, c) for c in criteria}, "choice": None,
                        "run_id": run_id, "target": t, "sample_id": f"s{i}"})
    return write_jsonl(path, out)


def agreeing(t: str, i: int, c: str) -> int:
    good = t == ADAPTER
    return (5 if good else 2) if c == "relevance" else (5 if good else 1) - (i % 2 if good else 0)


def test_rescore_with_grades_reports_kappa_and_alpha_and_trusts_an_agreeing_judge(fake, tmp_path) -> None:
    fake.state.judge = honest
    suite = make_suite(tmp_path, JUDGE + "  trusted_if: {kappa: 0.6}\n",
                       gates="  - judge_relevance >= 4\n  - token_f1 >= 0")
    outcome = run(fake, tmp_path, suite)
    gate = next(g for g in outcome.results.gates if g.gate.startswith("judge_relevance"))
    assert not gate.passed and "judge untrusted: agreement with humans not measured" in gate.detail
    grades = grades_file(tmp_path / "grades.jsonl", outcome.results.run_id, agreeing)
    sent = len(judge_requests(fake))
    res = rescore(outcome.path, grades=grades)
    assert len(judge_requests(fake)) == sent  # the stored verdicts are reused
    ag = res.judge.agreement
    assert ag.status == "measured" and ag.shared == 24
    rel = next(c for c in ag.criteria if c.criterion == "relevance")
    assert rel.kappa.value == pytest.approx(1.0) and rel.alpha.value == pytest.approx(1.0) and rel.trusted
    acc = next(c for c in ag.criteria if c.criterion == "accuracy")
    assert 0.6 < acc.kappa.value < 1 and acc.kappa.ci is not None and acc.alpha.ci is not None
    gate = next(g for g in res.gates if g.gate.startswith("judge_relevance") and g.target == ADAPTER)
    assert gate.passed, gate.detail
    md = (outcome.path / "report.md").read_text()
    assert "Agreement with human grades" in md and "| relevance | 24 | 1.000" in md


def test_repro_trusted_if_fails_gates_on_an_untrusted_judge(fake, tmp_path) -> None:
    fake.state.judge = honest
    suite = make_suite(tmp_path, JUDGE + "  trusted_if: {kappa: 0.6}\n",
                       gates="  - judge_relevance >= 4\n  - judge >= 1\n  - token_f1 >= 0")
    outcome = run(fake, tmp_path, suite)
    # Reviewers see it the other way round: the base's summaries are the good ones.
    grades = grades_file(tmp_path / "grades.jsonl", outcome.results.run_id,
                         lambda t, i, c: 1 + (i % 5) if t == ADAPTER else 5 - (i % 2))
    res = rescore(outcome.path, grades=grades)
    rel = next(c for c in res.judge.agreement.criteria if c.criterion == "relevance")
    assert rel.trusted is False and rel.kappa.value < 0.6
    gate = next(g for g in res.gates if g.gate.startswith("judge_relevance") and g.target == ADAPTER)
    assert not gate.passed and re.search(r"judge untrusted: κ -?\d\.\d\d < 0\.6 \(relevance\)", gate.detail)
    assert not res.passed and res.judge.untrusted["judge"].startswith("judge untrusted")
    assert "⚠ untrusted" in (outcome.path / "report.md").read_text()


def test_grades_of_too_few_samples_are_not_enough_data(fake, tmp_path) -> None:
    fake.state.judge = honest
    outcome = run(fake, tmp_path, make_suite(tmp_path, JUDGE + "  trusted_if: {kappa: 0.6}\n"))
    grades = grades_file(tmp_path / "g.jsonl", outcome.results.run_id, agreeing, targets=(ADAPTER,), n=2)
    ag = rescore(outcome.path, grades=grades).judge.agreement
    assert ag.status == "not enough data" and ag.shared == 2
    assert all(c.kappa.value is None and "not enough data" in c.kappa.note for c in ag.criteria)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_repro_a_judge_rubric_unlike_the_review_rubric_exits_2_naming_both(fake, tmp_path, capsys) -> None:
    fake.state.judge = honest
    suite = make_suite(tmp_path, JUDGE + "  sample: 4\n")
    outcome = run(fake, tmp_path, suite)
    grades = grades_file(tmp_path / "grades.jsonl", outcome.results.run_id, lambda t, i, c: 2,
                         criteria=("relevance", "fluency"))
    before = (outcome.path / "results.json").read_text()
    code, _, err = cli(capsys, "--data-dir", str(tmp_path / "data"), "eval", "rescore", str(outcome.path),
                       "--grades", str(grades))
    assert code == 2
    text = " ".join(err.split())
    assert "judge rubric 'mini'" in text and "mini.yaml" in text and "queue eval-summ" in text
    assert "grades.jsonl" in text and "criteria only in the grades: fluency" in text
    assert "criteria never graded: accuracy" in text
    assert (outcome.path / "results.json").read_text() == before  # nothing half-written
    # A different scale is a mismatch too.
    grades = grades_file(tmp_path / "grades7.jsonl", outcome.results.run_id, lambda t, i, c: 7)
    code, _, err = cli(capsys, "--data-dir", str(tmp_path / "data"), "eval", "rescore", str(outcome.path),
                       "--grades", str(grades))
    assert code == 2 and "relevance graded 7 outside 1-5" in " ".join(err.split())


def test_eval_run_grades_flag_uses_an_earlier_runs_grades(fake, tmp_path, capsys) -> None:
    fake.state.judge = honest
    suite = make_suite(tmp_path, JUDGE)
    first = run(fake, tmp_path, suite)
    grades = grades_file(tmp_path / "grades.jsonl", first.results.run_id, agreeing)
    code, out, err = cli(capsys, "--data-dir", str(tmp_path / "data"), "eval", "run", str(suite), "--endpoint",
                         fake.url, "--grades", str(grades), "--no-push-review")
    assert code == 0, err
    text = " ".join(out.split())
    assert "judge vs humans relevance: κ 1.000" in text and f"grades of run {first.results.run_id}" in text


@pytest.mark.parametrize(("judge", "message"), [
    ("  rubric: mini.yaml\n  modle: base\n", r"suite\.yaml:\d+: judge\.modle: Extra inputs are not permitted"),
    ("  rubric: mini.yaml\n  trusted_if: {kapa: 0.6}\n", r"suite\.yaml:\d+: judge\.trusted_if\.kapa"),
    ("  rubric: mini.yaml\n  endpoint: http://x\n  api_key: sk-123\n", r"never put a key in the suite"),
    ("  rubric: nothere.yaml\n", r"suite\.yaml:\d+: judge\.rubric: .*nothere\.yaml: rubric file not found"),
    ("  rubric: mini.yaml\n  pairwise: [base, nope]\n  mode: pairwise\n", r"judge\.pairwise: 'nope' is not a target"),
])
def test_repro_bad_judge_keys_are_file_line_errors(tmp_path, judge: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_suite(make_suite(tmp_path, judge))


def test_gates_on_judge_metrics_need_a_judge_and_a_known_criterion(tmp_path) -> None:
    path = make_suite(tmp_path, JUDGE, gates="  - judge_fluency >= 3")
    with pytest.raises(ConfigError, match=r"gates\.0: the judge does not produce 'judge_fluency'"):
        load_suite(path)
    path.write_text(path.read_text().replace("judge:\n  rubric: mini.yaml\n  model: base\n", ""))
    with pytest.raises(ConfigError, match=r"'judge_fluency' needs a judge"):
        load_suite(path)


def test_demo_suite_judges_the_reviewed_samples_and_rescore_measures_kappa(fake, tmp_path) -> None:
    """The demo's path: eval run (judge on the base) → review push → grades → eval rescore --grades."""
    from lorafleet.evaluate.review_push import review_items
    from lorafleet.evaluate.runner import run_plan
    from lorafleet.evaluate.targets import for_review

    repo = Path(__file__).resolve().parents[3]
    suite_path = repo / "examples" / "suites" / "ticket-summaries.yaml"
    suite = load_suite(suite_path)
    fake.state.adapters = ["ticket-summaries@latest"]
    fake.state.default = lambda model, text: f"good summary: {text[:30]}" if model != "fake-base" else "bad"
    fake.state.judge = lambda body: (json.dumps({c: 5 if response_of(body).startswith("good") else 2 for c in
                                                 ("relevance", "accuracy", "coherence", "safety")})
                                     if is_judge(body) else None)
    outcome = run_suite(suite, suite_path, opts(fake, tmp_path, out=tmp_path / "demo", data_dir=tmp_path / "data"),
                        runs_dir=tmp_path / "runs")
    assert outcome.results.judge.requests == 40 and outcome.results.judge.unjudged == 0
    store = RunStore(outcome.path)
    spec, outputs = for_review(suite.review, run_plan(store.manifest()), store.outputs())
    items = [i for i in review_items(outcome.results.run_id, suite.name, spec, store.samples(), outputs,
                                     store.scores()) if i.responses is None]
    verdicts = [json.loads(x) for x in (outcome.path / "judgements.jsonl").read_text().splitlines()]
    assert {(v["target"], v["id"]) for v in verdicts} == {(i.metadata["target"], i.metadata["sample_id"])
                                                         for i in items}  # the judge grades the reviewed samples
    assert all("judge_relevance" in i.scores for i in items)  # and its scores ride along for review
    rows = [{"queue": "eval-ticket-summaries", "item": i.id, "reviewer": "scripted", "choice": None,
             "scores": {c: (4 if i.metadata["target"] != "base" else 2) for c in
                        ("relevance", "accuracy", "coherence", "safety")}, **{k: i.metadata[k] for k in
                                                                             ("run_id", "target", "sample_id")}}
            for i in items]
    res = rescore(outcome.path, grades=write_jsonl(tmp_path / "grades.jsonl", rows))
    ag = res.judge.agreement
    assert ag.status == "measured" and ag.shared == 40
    assert all(c.kappa.value is not None and c.n == 40 for c in ag.criteria)


def test_pairwise_agreement_with_reviewer_choices_decides_trust(fake, tmp_path) -> None:
    def writer(model: str, text: str) -> str:  # every 4th ticket the base writes the good summary
        base_better = int(text.split()[1].rstrip(":")) % 4 == 0
        return f"good {text}" if (model == ADAPTER) != base_better else f"bad {text}"

    fake.state.default, fake.state.judge = writer, honest
    suite = make_suite(tmp_path, JUDGE + "  mode: pairwise\n  trusted_if: {kappa: 0.6}\n",
                       gates="  - judge_pairwise >= 0.5")
    outcome = run(fake, tmp_path, suite)
    gate = next(g for g in outcome.results.gates if g.target == ADAPTER)
    assert not gate.passed and "no reviewer A/B choices" in gate.detail
    run_id = outcome.results.run_id

    def choices(pick: Any) -> Path:
        return write_jsonl(tmp_path / "pairs.jsonl", [
            {"queue": "eval-summ-pairwise", "item": f"{run_id}:pair:s{i}", "reviewer": "ann", "scores": {},
             "choice": pick(i), "run_id": run_id, "sample_id": f"s{i}"} for i in range(12)])

    agree = rescore(outcome.path, grades=choices(lambda i: ADAPTER if i % 4 else "base"))
    row = agree.judge.agreement.pairwise
    assert row.n == 12 and row.kappa.value > 0.6 and row.trusted
    assert next(g for g in agree.gates if g.target == ADAPTER).passed
    disagree = rescore(outcome.path, grades=choices(lambda i: "base" if i % 4 else "both_bad"))
    row = disagree.judge.agreement.pairwise
    assert row.trusted is False
    gate = next(g for g in disagree.gates if g.target == ADAPTER)
    assert not gate.passed and "judge untrusted: κ" in gate.detail and "(pairwise)" in gate.detail
