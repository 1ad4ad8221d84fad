"""Text signatures shared by the data checks and the held-out guard: normalised text and MinHash.

Core owns these so `train` (near-dup groups, splits) and the held-out index compare text the same way.
"""

from __future__ import annotations

import re
import unicodedata

from datasketch import MinHash

NUM_PERM = 128
SEED = 1
_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Casefolded, NFKC, punctuation dropped, whitespace collapsed: what 'the same text' means."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def shingles(text: str, n: int = 3) -> set[bytes]:
    """Word n-shingles of the normalised text (the whole text when it has fewer than n words)."""
    words = normalise(text).split()
    if len(words) < n:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i:i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


def minhash(text: str) -> MinHash:
    """The MinHash signature of a text's shingles (NUM_PERM permutations, fixed SEED)."""
    m = MinHash(num_perm=NUM_PERM, seed=SEED)
    m.update_batch(list(shingles(text)))
    return m
