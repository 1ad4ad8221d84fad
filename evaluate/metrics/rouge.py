"""ROUGE-1/2/L/Lsum through Google's `rouge-score`; multiple references by max F-measure."""

from __future__ import annotations

import re
from importlib.metadata import version
from typing import Any

from lorafleet.evaluate.metrics.base import MetricResult
from nltk.stem import porter
from rouge_score import rouge_scorer, tokenize, tokenizers

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# Sentence ends: . ! ? … and CJK full stops followed by space or end; newlines always split.
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])\s+|\n+")
_UNICODE_WORD = re.compile(r"\w+", re.UNICODE)


class MemoStemmer:
    """rouge-score's Porter stemmer with a per-word memo: same stems, a fraction of the time."""

    def __init__(self) -> None:
        self._stemmer = porter.PorterStemmer()
        self._memo: dict[str, str] = {}

    def stem(self, word: str) -> str:
        stem = self._memo.get(word)
        if stem is None:
            stem = self._memo[word] = self._stemmer.stem(word)
        return stem


class DefaultTokenizer(tokenizers.Tokenizer):
    """rouge-score's own tokenisation (ASCII a-z0-9, stems of words over 3 letters), memoised stems."""

    def __init__(self, stemmer: MemoStemmer | None) -> None:
        self._stemmer = stemmer

    def tokenize(self, text: str) -> list[str]:
        return tokenize.tokenize(text, self._stemmer)


class UnicodeTokenizer(tokenizers.Tokenizer):
    """Lower-cased \\w+ tokens: keeps non-ASCII words that rouge-score's default drops."""

    def __init__(self, stemmer: MemoStemmer | None = None) -> None:
        self._stemmer = stemmer

    def tokenize(self, text: str) -> list[str]:
        words = _UNICODE_WORD.findall(text.lower())
        if self._stemmer is None:
            return words
        return [self._stemmer.stem(w) if len(w) > 3 else w for w in words]


def split_sentences(text: str) -> str:
    """One sentence per line, as rougeLsum expects (rouge-score itself splits on newlines only)."""
    return "\n".join(s.strip() for s in _SENTENCE_END.split(text) if s.strip())


def rouge(predictions: list[str], references: list[list[str]], *, stemmer: bool = True,
          tokenizer: str = "default", types: list[str] | None = None, **_: Any) -> list[MetricResult]:
    """Per-sample ROUGE F-measures (max over references) and their means; `types` limits the work."""
    wanted = [t for t in ROUGE_TYPES if types is None or t in types]
    stems = MemoStemmer() if stemmer else None
    tok = UnicodeTokenizer(stems) if tokenizer == "unicode" else DefaultTokenizer(stems)
    plain = [t for t in wanted if t != "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(plain, tokenizer=tok) if plain else None
    lsum = rouge_scorer.RougeScorer(["rougeLsum"], tokenizer=tok) if "rougeLsum" in wanted else None
    per: dict[str, list[float]] = {t: [] for t in wanted}
    for pred, refs in zip(predictions, references, strict=True):
        refs = refs or [""]
        if scorer is not None:
            main = scorer.score_multi(refs, pred)
            for t in plain:
                per[t].append(main[t].fmeasure)
        if lsum is not None:
            summ = lsum.score_multi([split_sentences(r) for r in refs], split_sentences(pred))
            per["rougeLsum"].append(summ["rougeLsum"].fmeasure)
    config = {"library": f"rouge-score {version('rouge-score')}", "stemmer": "porter" if stemmer else None,
              "tokenizer": tokenizer, "multi_reference": "max fmeasure", "lsum_split": "sentences+newlines",
              "statistic": "mean per-sample F-measure"}
    return [MetricResult.from_mean(t, per[t], config) for t in wanted]
