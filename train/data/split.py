"""Deterministic train/val/test split by content hash, with near-duplicates kept on one side.

Augmented records (`provenance.augmented`) follow their source record: a paraphrase whose source lands
in val/test is dropped, never trained on; the rest go to train. The val/test files written are added to
the held-out index, and records bound for train that match it (held out elsewhere) are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lorafleet.train.data.neardup import groups, near_duplicate_pairs
from lorafleet.train.data.text import content_hash, record_text
from pydantic import BaseModel, Field

from lorafleet.errors import ConfigError, FormatError
from lorafleet.formats import LineRecord, iter_jsonl, parse_record, read_records_lenient, to_chat
from lorafleet.fsutil import atomic_write_jsonl
from lorafleet.heldout import HeldOutIndex, heldout_text, refusal

SPLIT_NAMES = ("train", "val", "test")


class SplitResult(BaseModel):
    counts: dict[str, int]
    files: dict[str, str]
    near_duplicate_groups: int
    skipped: list[str] = []
    dropped_augmented: list[str] = Field(default_factory=list,
                                         description="file:line of paraphrases whose source is in val/test.")
    held_out_allowed: list[str] = Field(default_factory=list,
                                        description="Held-out matches kept in train under --allow-held-out.")
    heldout_version: str | None = None
    heldout_note: str | None = None


def parse_ratios(text: str) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' → (0.8, 0.1, 0.1); must be three non-negative numbers summing to 1."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1) > 1e-6:
        raise ConfigError(f"--ratios {text!r}: need three non-negative numbers summing to 1",
                          hint="e.g. --ratios 0.8,0.1,0.1")
    return parts  # type: ignore[return-value]


def _split_of_key(key: str, ratios: tuple[float, float, float]) -> str:
    u = int(key[:15], 16) / 16**15
    return "train" if u < ratios[0] else "val" if u < ratios[0] + ratios[1] else "test"


def assign(texts: Sequence[str], hashes: Sequence[str], ratios: tuple[float, float, float],
           threshold: float = 0.8, *, keyed: Sequence[bool] | None = None,
           extra_pairs: Sequence[tuple[int, int, float]] = ()) -> list[str]:
    """A split name per record: a near-dup group lands where its smallest content hash points.

    Only members with `keyed` True choose the group's key (originals, not synthetic records), so adding
    paraphrases never moves an original; a group of un-keyed members only is keyed by all of them.
    `extra_pairs` are further (i, j, score) pairs that must share a side (e.g. near in another text).
    """
    group_of = groups(len(texts), [*near_duplicate_pairs(texts, threshold), *extra_pairs])
    keyed = keyed if keyed is not None else [True] * len(texts)
    key: dict[int, str] = {}
    for i, g in enumerate(group_of):
        if keyed[i]:
            key[g] = min(key.get(g, hashes[i]), hashes[i])
    with_key = set(key)
    for i, g in enumerate(group_of):
        if g not in with_key:
            key[g] = min(key.get(g, hashes[i]), hashes[i])
    return [_split_of_key(key[g], ratios) for g in group_of]


def _augmented(raw: dict[str, Any]) -> bool:
    prov = raw.get("provenance")
    return isinstance(prov, dict) and bool(prov.get("augmented"))


def _source_index(raw: dict[str, Any], path: Path, by_line: dict[int, int], by_hash: dict[str, int],
                  cache: dict[str, dict[int, str]]) -> int | None:
    """The row index of an augmented record's source ("file:line") in this file, or None when unknown.

    The source is the file that was augmented: the same file (by line) or another one whose record is
    copied here (found by content hash, as `data augment` copies the originals).
    """
    prov = raw.get("provenance") or {}
    source = prov.get("source") if isinstance(prov, dict) else None
    if not isinstance(source, str) or ":" not in source:
        return None
    file, _, line_text = source.rpartition(":")
    if not line_text.isdigit():
        return None
    line = int(line_text)
    src = Path(file)
    if src.is_file() and src.resolve() == path.resolve():
        return by_line.get(line)
    if file not in cache:
        cache[file] = {}
        if src.is_file():
            try:
                for n, obj in iter_jsonl(src):
                    try:
                        cache[file][n] = content_hash(parse_record(obj))
                    except FormatError:
                        continue
            except FormatError:
                pass
    digest = cache[file].get(line)
    return by_hash.get(digest) if digest is not None else None


def plan(rows: list[LineRecord], path: Path, ratios: tuple[float, float, float],
         threshold: float) -> tuple[list[str | None], int]:
    """(split per row, None for a dropped paraphrase; near-duplicate records merged into groups)."""
    aug = [_augmented(r.raw) for r in rows]
    hashes = [content_hash(r.record) for r in rows]
    by_line = {r.line: i for i, r in enumerate(rows) if not aug[i]}
    by_hash: dict[str, int] = {}
    for i, h in enumerate(hashes):
        if not aug[i]:
            by_hash.setdefault(h, i)
    cache: dict[str, dict[int, str]] = {}
    source = [_source_index(r.raw, path, by_line, by_hash, cache) if aug[i] else None for i, r in enumerate(rows)]
    # Paraphrases with a known source follow it; the rest are grouped as near-dups (unknown ones
    # join their nearest original's group).
    grouped = [i for i in range(len(rows)) if not (aug[i] and source[i] is not None)]
    texts = [record_text(rows[i].record) for i in grouped]
    names = assign(texts, [hashes[i] for i in grouped], ratios, threshold, keyed=[not aug[i] for i in grouped])
    group_of = groups(len(texts), near_duplicate_pairs(texts, threshold))
    has_original = {group_of[k] for k, i in enumerate(grouped) if not aug[i]}
    out: list[str | None] = [None] * len(rows)
    for k, i in enumerate(grouped):
        if not aug[i]:
            out[i] = names[k]
        elif group_of[k] in has_original:
            out[i] = "train" if names[k] == "train" else None
        else:
            out[i] = "train"  # a paraphrase of nothing here: train, and the held-out index checks it
    for i in range(len(rows)):
        if aug[i] and source[i] is not None:
            out[i] = "train" if out[source[i]] == "train" else None  # type: ignore[index]
    return out, len(texts) - len(set(group_of))


def split_file(path: Path, out_dir: Path, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
               threshold: float = 0.8, *, index: HeldOutIndex | None = None,
               allow_held_out: bool = False) -> SplitResult:
    """Write out_dir/{train,val,test}.jsonl from one file; the same input always gives the same split.

    With `index`, records bound for train that match held-out examples raise HeldOutError (unless
    `allow_held_out`), and the val/test files written are added to it.
    """
    path = Path(path)
    rows, bad = read_records_lenient(path)  # unparsable lines are reported, not split
    if not rows:
        raise FormatError(f"{path}: no valid records to split", hint="run `lorafleet data check` on it")
    names, merged = plan(rows, path, ratios, threshold)
    targets = {split: Path(out_dir) / f"{split}.jsonl" for split in SPLIT_NAMES}
    allowed: list[str] = []
    if index is not None:
        train_items = [(f"{r.path}:{r.line}", heldout_text(to_chat(r.record).messages))
                       for r, s in zip(rows, names, strict=True) if s == "train"]
        # This folder's old val/test are about to be replaced by this split: not held out against it.
        matches = index.check(train_items, threshold=threshold,
                              exclude_sources=[targets["val"], targets["test"]])
        if matches and not allow_held_out:
            raise refusal(matches, what="train.jsonl")
        allowed = [m.line() for m in matches]
    files, counts = {}, {}
    for split in SPLIT_NAMES:
        counts[split] = atomic_write_jsonl(targets[split],
                                           [r.raw for r, s in zip(rows, names, strict=True) if s == split])
        files[split] = str(targets[split])
    result = SplitResult(counts=counts, files=files, near_duplicate_groups=merged, skipped=[str(e) for e in bad],
                         dropped_augmented=[f"{r.path}:{r.line}" for r, s in zip(rows, names, strict=True)
                                            if s is None],
                         held_out_allowed=allowed)
    if index is not None:
        for split in ("val", "test"):
            index.add_file(targets[split], split)
        result.heldout_version = index.version()
        result.heldout_note = index.note
    return result
