"""ROUGE-1/2/L/Lsum through Google's `rouge-score`; multiple references by max F-measure."""

from __future__ import annotations

import re
from importlib.metadata import version
from typing import Any

from lorafleet.evaluate.metrics.base import MetricResult
from rouge_score import rouge_scorer, tokenizers

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# Sentence ends: . ! ? … and CJK full stops followed by space or end; newlines always split.
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])\s+|\n+")
_UNICODE_WORD = re.compile(r"\w+", re.UNICODE)


class UnicodeTokenizer(tokenizers.Tokenizer):
    """Lower-cased \\w+ tokens: keeps non-ASCII words that rouge-score's default drops."""

    def tokenize(self, text: str) -> list[str]:
        return _UNICODE_WORD.findall(text.lower())


def split_sentences(text: str) -> str:
    """One sentence per line, as rougeLsum expects (rouge-score itself splits on newlines only)."""
    return "\n".join(s.strip() for s in _SENTENCE_END.split(text) if s.strip())


def rouge(predictions: list[str], references: list[list[str]], *, stemmer: bool = True,
          tokenizer: str = "default", **_: Any) -> list[MetricResult]:
    """Per-sample ROUGE F-measures (max over references) and their means."""
    tok = UnicodeTokenizer() if tokenizer == "unicode" else None
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES[:3]), use_stemmer=stemmer, tokenizer=tok)
    lsum = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=stemmer, tokenizer=tok)
    per: dict[str, list[float]] = {t: [] for t in ROUGE_TYPES}
    for pred, refs in zip(predictions, references, strict=True):
        refs = refs or [""]
        main = scorer.score_multi(refs, pred)
        summ = lsum.score_multi([split_sentences(r) for r in refs], split_sentences(pred))
        for t in ROUGE_TYPES[:3]:
            per[t].append(main[t].fmeasure)
        per["rougeLsum"].append(summ["rougeLsum"].fmeasure)
    config = {"library": f"rouge-score {version('rouge-score')}", "stemmer": "porter" if stemmer else None,
              "tokenizer": tokenizer, "multi_reference": "max fmeasure", "lsum_split": "sentences+newlines",
              "statistic": "mean per-sample F-measure"}
    return [MetricResult.from_mean(t, per[t], config) for t in ROUGE_TYPES]
