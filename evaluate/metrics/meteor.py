"""METEOR through nltk's `meteor_score`: exact, Porter-stem and WordNet-synonym matching, max over
references. The synonym stage reads Princeton WordNet 3.0 as shipped by the NLTK project's `wn` 0.0.23
distribution (a registry package, so no `nltk.download` and no network); without it, only the exact and
stem stages run, and the provenance says so."""

from __future__ import annotations

import functools
import importlib.util
import io
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import nltk
from lorafleet.evaluate.metrics.base import MetricResult
from lorafleet.evaluate.metrics.rouge import split_sentences
from nltk.corpus.reader.wordnet import WordNetCorpusReader
from nltk.stem.porter import PorterStemmer
from nltk.tokenize.destructive import NLTKWordTokenizer
from nltk.translate.meteor_score import meteor_score

WORDNET_DIST = "wn"
WORDNET_SUBDIR = ("data", "wordnet-3.0")
_TOKENIZER = NLTKWordTokenizer()


class NoSynonyms:
    """A WordNet stand-in with no synsets: nltk's METEOR then runs its exact and stem stages only."""

    def synsets(self, *_: Any, **__: Any) -> list[Any]:
        return []


class PackagedWordNet(WordNetCorpusReader):
    """nltk's own WordNet reader over the `wn` distribution's files, read with LF line ends.

    Those files have CRLF line ends, so the byte offsets in their index files point past each record;
    served from memory with the CRs dropped, every offset lands on its record again."""

    def __init__(self, root: Path) -> None:
        self._texts: dict[str, str] = {}
        self._wn_root = root
        # nltk ≥3.9 opens corpus roots only inside nltk.data.path; open() below serves the files after that.
        nltk.data.path.append(str(root))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "multilingual functions are not available": no OMW
                super().__init__(str(root), None)
        finally:
            nltk.data.path.remove(str(root))

    def open(self, file: str) -> io.StringIO:  # type: ignore[override]
        if file not in self._texts:
            raw = (self._wn_root / file).read_bytes()
            self._texts[file] = raw.replace(b"\r\n", b"\n").decode(self._ENCODING)
        return io.StringIO(self._texts[file])

    def map_wn(self, version: str = "wordnet") -> None:  # type: ignore[override]
        # This is WordNet 3.0 itself: no mapping to nltk_data's "wordnet" corpus (which is not installed).
        return None


@functools.cache
def packaged_wordnet() -> tuple[WordNetCorpusReader | None, str]:
    """(reader, description), or (None, why not): loaded once a process (about two seconds)."""
    spec = importlib.util.find_spec(WORDNET_DIST)  # finds the folder without running the package's own code
    if spec is None or not spec.submodule_search_locations:
        return None, f"the {WORDNET_DIST!r} package (WordNet 3.0 data) is not installed"
    root = Path(next(iter(spec.submodule_search_locations))).joinpath(*WORDNET_SUBDIR)
    if not (root / "data.noun").is_file():
        return None, f"no WordNet 3.0 files under {root}"
    try:
        reader = PackagedWordNet(root)
        # A synset read through its offset proves the line ends were repaired.
        if any(s is None for s in reader.synsets("dog")) or not reader.synsets("dog"):
            return None, f"WordNet files under {root} do not line up with their index"
    except (OSError, ValueError, LookupError) as exc:
        return None, f"cannot read WordNet 3.0 under {root}: {exc}"
    return reader, f"WordNet {reader.get_version()} from {WORDNET_DIST} {_version(WORDNET_DIST)}"


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def tokenize(text: str) -> list[str]:
    """nltk's word tokeniser per sentence, as `word_tokenize` does, with a regex sentence split (no punkt data)."""
    return [tok for sentence in split_sentences(text).split("\n") for tok in _TOKENIZER.tokenize(sentence)]


def meteor(predictions: list[str], references: list[list[str]], *, synonyms: bool = True, alpha: float = 0.9,
           beta: float = 3.0, gamma: float = 0.5, **_: Any) -> list[MetricResult]:
    """Per-sample nltk METEOR (best reference) and its mean; `synonyms: false` skips the WordNet stage."""
    wordnet, source = packaged_wordnet() if synonyms else (None, "not asked for (synonyms: false)")
    stand_in = wordnet if wordnet is not None else NoSynonyms()
    stemmer = PorterStemmer()
    per = []
    for pred, refs in zip(predictions, references, strict=True):
        hyp = tokenize(pred)
        per.append(meteor_score([tokenize(r) for r in (refs or [""])], hyp, stemmer=stemmer, wordnet=stand_in,
                                alpha=alpha, beta=beta, gamma=gamma))
    config = {"library": f"nltk {version('nltk')}", "stages": ["exact", "stem", "synonym"] if wordnet else
              ["exact", "stem"], "wordnet": source if wordnet else None, "stemmer": "porter",
              "tokenizer": "nltk NLTKWordTokenizer per sentence", "alpha": alpha, "beta": beta, "gamma": gamma,
              "multi_reference": "max", "statistic": "mean per-sample METEOR"}
    if wordnet is None:
        config["synonym_stage"] = f"skipped: {source}"
    return [MetricResult.from_mean("meteor", per, config)]
