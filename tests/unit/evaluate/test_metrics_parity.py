"""Our numbers equal the reference libraries' own on fixed cases (non-ASCII, empty, multi-reference)."""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np
import pytest
import sacrebleu
from lorafleet.evaluate.metrics import compute_metrics
from lorafleet.evaluate.metrics.rouge import MemoStemmer, UnicodeTokenizer, split_sentences
from lorafleet.evaluate.metrics.squad import exact_match_one, token_f1_one
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, f1_score

PREDS = ["The cat sat on the mat.", "Ça coûte 12 € — très cher !", "", "Der Bär läuft schnell. Er ist müde.",
         "refund issued for order 42"]
REFS = [["A cat sat on the mat."], ["Ça coûte douze euros.", "Ça coûte 12 € !"], ["nothing here"],
        ["Der Bär rennt schnell.\nEr ist sehr müde."], ["refund issued for order 42", "order 42 refunded"]]


def ours(family: str, **options) -> dict:
    return compute_metrics({family: options}, PREDS, REFS)


@pytest.mark.parametrize("tokenizer", ["default", "unicode"])
def test_rouge_matches_rouge_score(tokenizer: str) -> None:
    got = ours("rouge", tokenizer=tokenizer)
    # The default case is rouge-score's own tokenizer and stemmer, untouched.
    tok = UnicodeTokenizer(MemoStemmer()) if tokenizer == "unicode" else None
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True, tokenizer=tok)
    for i, (p, refs) in enumerate(zip(PREDS, REFS, strict=True)):
        main = scorer.score_multi(refs, p)
        lsum = scorer.score_multi([split_sentences(r) for r in refs], split_sentences(p))
        for t in ("rouge1", "rouge2", "rougeL"):
            assert got[t].per_sample[i] == pytest.approx(main[t].fmeasure)
        assert got["rougeLsum"].per_sample[i] == pytest.approx(lsum["rougeLsum"].fmeasure)
    assert got["rouge1"].value == pytest.approx(np.mean(got["rouge1"].per_sample))
    assert got["rouge1"].config["stemmer"] == "porter"


def test_rouge_stems_match_rouge_score_on_inflected_words() -> None:
    preds, refs = ["The runners were running quickly"], [["a runner runs quick"]]
    ref = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True).score(refs[0][0], preds[0])["rouge1"].fmeasure
    assert compute_metrics({"rouge": {}}, preds, refs)["rouge1"].value == pytest.approx(ref)
    no_stem = compute_metrics({"rouge": {"stemmer": False}}, preds, refs)["rouge1"].value
    assert no_stem < ref


def test_rouge_unicode_tokenizer_keeps_non_ascii_words() -> None:
    default = compute_metrics({"rouge": {}}, ["ß ü é"], [["ß ü é"]])["rouge1"].value
    unicode = compute_metrics({"rouge": {"tokenizer": "unicode"}}, ["ß ü é"], [["ß ü é"]])["rouge1"].value
    assert default == 0.0  # rouge-score's default tokenizer drops every non-ASCII character
    assert unicode == 1.0


def test_rouge_lsum_splits_sentences_not_only_newlines() -> None:
    assert split_sentences("One. Two! Three?\nFour") == "One.\nTwo!\nThree?\nFour"
    pred, ref = "a b. c d.", "c d. a b."
    lsum = compute_metrics({"rouge": {}}, [pred], [[ref]])
    assert lsum["rougeLsum"].value == pytest.approx(1.0)  # union LCS per sentence: order of sentences is free
    assert lsum["rougeL"].value < 1.0


def test_bleu_and_chrf_corpus_match_sacrebleu() -> None:
    # sacrebleu takes reference streams; the one-reference items are padded with None
    streams = [[r[0] for r in REFS], [r[1] if len(r) > 1 else None for r in REFS]]
    got = ours("bleu")["bleu"]
    assert got.value == pytest.approx(sacrebleu.corpus_bleu(PREDS, streams).score)
    assert "tok:13a" in got.config["signature"]
    assert got.corpus_of(got.stats.sum(axis=0), len(PREDS)) == pytest.approx(got.value)
    chrf = ours("chrf")["chrf"]
    assert chrf.value == pytest.approx(sacrebleu.corpus_chrf(PREDS, streams).score)
    assert chrf.corpus_of(chrf.stats.sum(axis=0), len(PREDS)) == pytest.approx(chrf.value)


def test_bleu_corpus_of_a_subset_matches_sacrebleu_on_that_subset() -> None:
    got = ours("bleu")["bleu"]
    subset = [0, 1, 4]
    expected = sacrebleu.corpus_bleu([PREDS[i] for i in subset],
                                     [[REFS[i][0] for i in subset], [REFS[i][1] if len(REFS[i]) > 1 else None
                                                                     for i in subset]]).score
    assert got.corpus_of(got.stats[subset].sum(axis=0), 3) == pytest.approx(expected)


def test_sentence_bleu_and_chrf_match_sacrebleu() -> None:
    bleu, chrf = ours("bleu")["bleu"], ours("chrf")["chrf"]
    for i, (p, refs) in enumerate(zip(PREDS, REFS, strict=True)):
        assert bleu.per_sample[i] == pytest.approx(sacrebleu.sentence_bleu(p, refs, smooth_method="exp").score)
        assert chrf.per_sample[i] == pytest.approx(sacrebleu.sentence_chrf(p, refs).score)


# ---- SQuAD: the official evaluation script's functions, verbatim, as the reference ------------

def _squad_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text, flags=re.UNICODE)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def _squad_f1(prediction, ground_truth):
    pred_toks, gold_toks = _squad_normalize(prediction).split(), _squad_normalize(ground_truth).split()
    common = Counter(gold_toks) & Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision, recall = num_same / len(pred_toks), num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


@pytest.mark.parametrize(("pred", "ref"), [
    ("The Eiffel Tower!", "eiffel tower"), ("", ""), ("", "an answer"), ("the", ""), ("a the an", "the"),
    ("Zürich, Schweiz", "zürich"), ("Paris is nice", "paris nice is"), ("42", "forty two")])
def test_token_f1_and_exact_match_match_squad_script(pred: str, ref: str) -> None:
    assert token_f1_one(pred, ref) == pytest.approx(_squad_f1(pred, ref))
    assert exact_match_one(pred, ref) == float(_squad_normalize(pred) == _squad_normalize(ref))


def test_squad_metrics_take_the_max_over_references() -> None:
    got = ours("token_f1")["token_f1"]
    for i, (p, refs) in enumerate(zip(PREDS, REFS, strict=True)):
        assert got.per_sample[i] == pytest.approx(max(_squad_f1(p, r) for r in refs))
    assert ours("exact_match")["exact_match"].per_sample[4] == 1.0


def test_label_metrics_match_scikit_learn() -> None:
    labels = ["billing", "refund", "shipping"]
    gold = ["billing", "refund", "shipping", "refund", "billing", "shipping", "refund"]
    pred = ["billing", "INVALID", "shipping", "billing", "billing", "refund", "refund"]
    got = compute_metrics({"classification": {}}, pred, [[g] for g in gold], gold_labels=gold, pred_labels=pred,
                          labels=labels)
    assert got["accuracy"].value == pytest.approx(accuracy_score(gold, pred))
    assert got["label_f1"].value == pytest.approx(f1_score(gold, pred, labels=labels, average="macro",
                                                           zero_division=0))
    assert got["label_micro_f1"].value == pytest.approx(f1_score(gold, pred, labels=labels, average="micro",
                                                                 zero_division=0))
    per = got["label_f1"].details["per_class"]
    assert per["billing"]["precision"] == pytest.approx(2 / 3)
    assert per["billing"]["fpr"] == pytest.approx(1 / 5)
    assert got["label_f1"].details["confusion"]["classes"][-1] == "INVALID"
    assert got["accuracy"].details["invalid_rate"] == pytest.approx(1 / 7)
