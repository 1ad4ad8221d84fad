"""`lorafleet eval …` end to end against the fake server: exit codes, run folder, resume, rescore,
compare, reports, score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lorafleet.evaluate.runner import RunOptions, run_suite
from lorafleet.evaluate.store import RunStore
from lorafleet.evaluate.suite import load_suite

from lorafleet.cli.main import main
from lorafleet.errors import LorafleetError
from tests.fakes.openai_eval_server import RunningServer
from tests.unit.evaluate.conftest import SUITE, intent_rows, script_intents, write_jsonl


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def eval_run(capsys, data_dir: Path, suite: Path, fake: RunningServer, *extra: str) -> tuple[int, str, str]:
    return cli(capsys, "--data-dir", str(data_dir), "eval", "run", str(suite), "--endpoint", fake.url, *extra)


def only_run(data_dir: Path) -> Path:
    runs = sorted((data_dir / "eval" / "runs").iterdir())
    return runs[-1]


def test_run_passes_gates_and_writes_the_run(capsys, fake, intent_suite, data_dir) -> None:
    script_intents(fake, intent_rows(), adapter_correct=12)
    code, out, err = eval_run(capsys, data_dir, intent_suite, fake, "--json")
    assert code == 0, err
    results = json.loads(out)
    assert results["passed"] is True and results["schema_version"] == 1
    assert results["targets"]["base"]["model"] == "fake-base"
    assert results["targets"]["intents@latest"]["served_models"] == ["intents@v3"]
    f1 = results["targets"]["intents@latest"]["metrics"]["label_f1"]
    assert f1["value"] == 1.0 and f1["config"]["labels"] == ["billing", "refund", "shipping"]
    comp = next(c for c in results["comparisons"] if c["metric"] == "accuracy")
    assert comp["significant"] and comp["mcnemar_p"] < 0.01 and "McNemar" in comp["test"]
    run = only_run(data_dir)
    for name in ("manifest.json", "samples.jsonl", "outputs.jsonl", "scores.jsonl", "results.json",
                 "report.md", "report.html"):
        assert (run / name).is_file(), name
    assert json.loads((run / "manifest.json").read_text())["status"] == "complete"
    html = (run / "report.html").read_text()
    assert "<svg" in html and "<script" not in html and 'src="http' not in html
    assert "| `intents@latest` | intents@v3 |" in (run / "report.md").read_text()


def test_html_report_escapes_model_output(capsys, fake, intent_suite, data_dir) -> None:
    fake.state.default = lambda model, text: "<script>alert(1)</script> & <b>bold</b>"
    eval_run(capsys, data_dir, intent_suite, fake)
    html = (only_run(data_dir) / "report.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;" in html


def test_failing_gate_exits_1(capsys, fake, intent_suite, data_dir) -> None:
    script_intents(fake, intent_rows(), adapter_correct=6)
    code, out, _ = eval_run(capsys, data_dir, intent_suite, fake)
    assert code == 1
    assert "FAIL" in out


def test_bad_suite_exits_2_with_one_line(capsys, fake, tmp_path, data_dir) -> None:
    suite = tmp_path / "bad.yaml"
    suite.write_text("name: x\ndataset: d.jsonl\ntargets: [base]\nmetrics: [rougeL]\ngates: [rougeL >> 1]\n")
    code, _, err = eval_run(capsys, data_dir, suite, fake)
    assert code == 2
    assert "bad.yaml:5: gates.0: cannot read gate" in err and "Traceback" not in err


def test_bad_dataset_line_exits_2(capsys, fake, tmp_path, data_dir) -> None:
    (tmp_path / "s" / "data").mkdir(parents=True)
    (tmp_path / "s" / "data" / "test.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{oops\n')
    suite = tmp_path / "s" / "suite.yaml"
    suite.write_text(SUITE.format(threshold=0.5))
    code, _, err = eval_run(capsys, data_dir, suite, fake)
    assert code == 2 and "test.jsonl:2: invalid JSON" in err


def test_unknown_target_exits_2(capsys, fake, intent_suite, data_dir) -> None:
    intent_suite.write_text(intent_suite.read_text().replace("intents@latest", "ghost@v1"))
    code, _, err = eval_run(capsys, data_dir, intent_suite, fake)
    assert code == 2 and "404 for model 'ghost@v1'" in err


def test_interrupted_run_keeps_its_work_and_resumes(fake, intent_suite, data_dir) -> None:
    script_intents(fake, intent_rows(), adapter_correct=12)
    suite = load_suite(intent_suite)
    opts = RunOptions(endpoint=fake.url, cache_path=data_dir / "cache.sqlite", max_retries=0, concurrency=2,
                      out=data_dir / "partial")
    fake.state.fail_from = 15
    with pytest.raises(LorafleetError, match="resume"):
        run_suite(suite, intent_suite, opts, runs_dir=data_dir / "runs")
    store = RunStore(data_dir / "partial")
    assert store.manifest().status == "partial"
    kept = sum(len(v) for v in store.outputs().values())
    assert 13 <= kept <= 15  # requests 0-14 succeeded; an in-flight one may have failed
    fake.state.fail_from = None
    sent_before = len(fake.state.requests)
    opts.out = data_dir / "resumed"
    outcome = run_suite(suite, intent_suite, opts, runs_dir=data_dir / "runs")
    assert outcome.exit_code == 0
    assert len(fake.state.requests) - sent_before == 24 - kept
    assert sum(t.usage.cached for t in outcome.results.targets.values()) == kept


def test_no_cache_regenerates(capsys, fake, intent_suite, data_dir) -> None:
    eval_run(capsys, data_dir, intent_suite, fake)
    eval_run(capsys, data_dir, intent_suite, fake)
    assert len(fake.state.requests) == 24
    eval_run(capsys, data_dir, intent_suite, fake, "--no-cache")
    assert len(fake.state.requests) == 48


def test_rescore_with_a_changed_suite_needs_no_generation(capsys, fake, intent_suite, data_dir) -> None:
    script_intents(fake, intent_rows(), adapter_correct=9)
    assert eval_run(capsys, data_dir, intent_suite, fake)[0] == 1
    run = only_run(data_dir)
    sent = len(fake.state.requests)
    relaxed = intent_suite.with_name("relaxed.yaml")
    relaxed.write_text(SUITE.format(threshold=0.5))
    code, out, _ = cli(capsys, "eval", "rescore", str(run), "--suite", str(relaxed), "--json")
    assert code == 0 and json.loads(out)["passed"]
    assert len(fake.state.requests) == sent
    assert json.loads((run / "results.json").read_text())["passed"]


def test_compare_runs_paired_and_refuses_other_metric_configs(capsys, fake, intent_suite, data_dir) -> None:
    rows = intent_rows(30)
    write_jsonl(intent_suite.parent / "data" / "test.jsonl", rows)
    script_intents(fake, rows, adapter_correct=30)
    fake.state.answers["intents@v2"].update({r["messages"][0]["content"]: "no idea" for r in rows[:20]})
    v2 = intent_suite.with_name("v2.yaml")
    v2.write_text(intent_suite.read_text().replace("intents@latest", "intents@v2"))
    eval_run(capsys, data_dir, v2, fake, "--out", str(data_dir / "run-v2"))
    eval_run(capsys, data_dir, intent_suite, fake, "--out", str(data_dir / "run-v3"))
    code, out, err = cli(capsys, "eval", "compare", str(data_dir / "run-v2"), str(data_dir / "run-v3"), "--json")
    assert code == 0, err
    result = json.loads(out)
    acc = next(c for c in result["comparisons"] if c["metric"] == "accuracy")
    assert result["samples"] == 30 and acc["delta"] == pytest.approx(20 / 30) and acc["significant"]
    other = intent_suite.with_name("other.yaml")
    other.write_text(intent_suite.read_text().replace("rougeL]", "rougeL, bleu]"))
    eval_run(capsys, data_dir, other, fake, "--out", str(data_dir / "run-other"))
    code, _, err = cli(capsys, "eval", "compare", str(data_dir / "run-v2"), str(data_dir / "run-other"))
    assert code == 2 and "different metric configurations" in err


@pytest.mark.parametrize(("fmt", "marker"), [("md", "### Eval `intents`"), ("html", "<!doctype html>"),
                                             ("json", '"schema_version": 1')])
def test_report_formats(capsys, fake, intent_suite, data_dir, fmt, marker) -> None:
    eval_run(capsys, data_dir, intent_suite, fake)
    code, out, _ = cli(capsys, "eval", "report", str(only_run(data_dir)), "--format", fmt)
    assert code == 0 and marker in out


def test_report_of_a_non_run_is_an_input_error(capsys, tmp_path) -> None:
    code, _, err = cli(capsys, "eval", "report", str(tmp_path))
    assert code == 2 and "not a run folder" in err


def test_score_file(capsys, tmp_path) -> None:
    path = write_jsonl(tmp_path / "preds.jsonl", [
        {"id": "a", "prediction": "[Intent: refund] ok", "reference": "[Intent: refund] fine"},
        {"id": "b", "prediction": "Ça va très bien", "references": ["ça va bien", "très bien"]},
        {"id": "c", "prediction": "", "reference": "[Intent: billing] x"}])
    code, out, _ = cli(capsys, "eval", "score", str(path), "--metrics", "rouge,bleu,chrf,token_f1,exact_match,label_f1",
                       "--label-pattern", r"\[Intent: (\w+)\]", "--resamples", "100", "--json")
    assert code == 0
    got = {r["metric"]: r for r in json.loads(out)}
    assert set(got) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "token_f1", "exact_match",
                        "label_f1"}
    assert got["label_f1"]["value"] == pytest.approx(0.5)  # refund right, billing INVALID; 'b' has no label
    assert got["bleu"]["config"]["signature"].startswith("nrefs:var")
    assert got["bleu"]["ci"][0] <= got["bleu"]["value"] <= got["bleu"]["ci"][1]
    code, out, _ = cli(capsys, "eval", "score", str(path), "--metrics", "token_f1")
    assert code == 0 and "token_f1" in out


def test_score_file_errors_name_the_line(capsys, tmp_path) -> None:
    path = write_jsonl(tmp_path / "preds.jsonl", [{"prediction": "x", "reference": "y"}, {"prediction": "x"}])
    code, _, err = cli(capsys, "eval", "score", str(path))
    assert code == 2 and "preds.jsonl:2" in err and "reference" in err
    code, _, err = cli(capsys, "eval", "score", str(path), "--metrics", "bogus")
    assert code == 2 and "unknown metric 'bogus'" in err
    code, _, err = cli(capsys, "eval", "score", str(path), "--metrics", "perplexity")
    assert code == 2 and "logprobs" in err


def test_repro_eval_push_refused_exits_1_and_never_says_sent(capsys, monkeypatch, fake, intent_suite,
                                                             data_dir) -> None:
    """Issue 14, reproduction 5: the review app refused the items (no such queue) and `eval run` still
    printed "N item(s) sent" and exited 0. Now: exit 1, accepted/spooled/refused counts and the fix."""
    from tests.fakes.review_server import ReviewState, review_server

    script_intents(fake, intent_rows(), adapter_correct=12)
    intent_suite.write_text(intent_suite.read_text() + "review: {sample: 2}\n", encoding="utf-8")
    state = ReviewState(token="tok", queues=set())
    with review_server(state) as review:
        monkeypatch.setenv("LORAFLEET_REVIEW_URL", review.url)
        monkeypatch.setenv("LORAFLEET_REVIEW_TOKEN", "tok")
        code, _, err = eval_run(capsys, data_dir, intent_suite, fake)
        assert code == 1, err
        assert "item(s) sent" not in err
        assert "review: 0 of 4 item(s) accepted, 4 refused" in err and "review-spool.jsonl" in err
        assert "queue 'eval' refused 4 item(s) (HTTP 404, queue_missing)" in err
        assert "lorafleet review queues create eval" in err

        state.queues.add("eval")  # fixed: the next run sends its own items and the four kept ones
        code, _, err = eval_run(capsys, data_dir, intent_suite, fake)
        assert code == 0, err
        assert "review: 4 of 4 item(s) accepted" in err and "refused" not in err
        assert len(state.received["eval"]) == 8


def test_eval_push_spooled_while_the_review_app_is_down_is_no_failure(capsys, monkeypatch, fake, intent_suite,
                                                                      data_dir) -> None:
    script_intents(fake, intent_rows(), adapter_correct=12)
    intent_suite.write_text(intent_suite.read_text() + "review: {sample: 2}\n", encoding="utf-8")
    monkeypatch.setenv("LORAFLEET_REVIEW_URL", "http://127.0.0.1:9")
    code, _, err = eval_run(capsys, data_dir, intent_suite, fake)
    assert code == 0, err
    assert "review: 0 of 4 item(s) accepted, 4 spooled (app unreachable: ConnectError" in err
