"""Deterministic train/val/test split by content hash, with near-duplicates kept on one side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lorafleet.train.data.neardup import groups, near_duplicate_pairs
from lorafleet.train.data.text import content_hash, record_text
from pydantic import BaseModel

from lorafleet.errors import ConfigError, FormatError
from lorafleet.formats import read_records_lenient
from lorafleet.fsutil import atomic_write_jsonl

SPLIT_NAMES = ("train", "val", "test")


class SplitResult(BaseModel):
    counts: dict[str, int]
    files: dict[str, str]
    near_duplicate_groups: int
    skipped: list[str] = []


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


def assign(texts: Sequence[str], hashes: Sequence[str], ratios: tuple[float, float, float],
           threshold: float = 0.8) -> list[str]:
    """A split name per record: a near-dup group lands where its smallest content hash points."""
    group_of = groups(len(texts), near_duplicate_pairs(texts, threshold))
    key: dict[int, str] = {}
    for i, g in enumerate(group_of):
        key[g] = min(key.get(g, hashes[i]), hashes[i])
    cut_val, cut_test = ratios[0], ratios[0] + ratios[1]
    out = []
    for g in group_of:
        u = int(key[g][:15], 16) / 16**15
        out.append("train" if u < cut_val else "val" if u < cut_test else "test")
    return out


def split_file(path: Path, out_dir: Path, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
               threshold: float = 0.8) -> SplitResult:
    """Write out_dir/{train,val,test}.jsonl from one file; the same input always gives the same split."""
    rows, bad = read_records_lenient(Path(path))  # unparsable lines are reported, not split
    if not rows:
        raise FormatError(f"{path}: no valid records to split", hint="run `lorafleet data check` on it")
    texts = [record_text(r.record) for r in rows]
    names = assign(texts, [content_hash(r.record) for r in rows], ratios, threshold)
    # Synthetic records only ever train: evaluating on them would measure the generator.
    names = ["train" if _augmented(r.raw) else s for r, s in zip(rows, names, strict=True)]
    files, counts = {}, {}
    for split in SPLIT_NAMES:
        target = Path(out_dir) / f"{split}.jsonl"
        counts[split] = atomic_write_jsonl(target, [r.raw for r, s in zip(rows, names, strict=True) if s == split])
        files[split] = str(target)
    n_groups = len({g for g in groups(len(texts), near_duplicate_pairs(texts, threshold))})
    return SplitResult(counts=counts, files=files, near_duplicate_groups=len(texts) - n_groups,
                       skipped=[str(e) for e in bad])


def _augmented(raw: dict) -> bool:
    prov = raw.get("provenance")
    return isinstance(prov, dict) and bool(prov.get("augmented"))
