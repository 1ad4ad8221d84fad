"""`lorafleet data check`: everything wrong with a dataset before it costs a training run.

Errors (exit 1): unparsable lines, missing fields, wrong roles, empty turns, leakage between
records of different splits (a file's role comes from --train/--val/--test, a record's from its own
`split:` field; file names never decide), train/unassigned records that match the held-out index.
Warnings: duplicates, near-duplicates, label variants, class imbalance, over-long examples, PII,
low inter-annotator agreement.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

from lorafleet.train.data.neardup import near_duplicate_pairs
from lorafleet.train.data.pii import find_pii
from lorafleet.train.data.text import content_hash, normalise, normalise_label, prompt_text, record_label, record_text
from lorafleet.train.dataset import check_roles
from pydantic import BaseModel, Field

from lorafleet.errors import FormatError, LorafleetError
from lorafleet.formats import LineRecord, metadata, read_records_lenient, to_chat
from lorafleet.heldout import HeldOutIndex, heldout_text

Severity = Literal["error", "warning"]
SPLITS = ("train", "val", "test")
IMBALANCE_RATIO = 5.0
LOW_KAPPA = 0.6


class Issue(BaseModel):
    severity: Severity
    code: str
    where: str = Field(description="file:line, or the file")
    message: str


class LengthStats(BaseModel):
    max_length: int
    p50: int
    p95: int
    p99: int
    max: int
    over: int
    tokenizer: str


class FileStats(BaseModel):
    path: str
    records: int
    format: str | None
    labels: dict[str, int] = Field(default_factory=dict)


class CheckReport(BaseModel):
    files: list[FileStats]
    issues: list[Issue]
    lengths: LengthStats | None = None
    kappa: dict[str, float] = Field(default_factory=dict, description="annotator pair → Cohen's kappa")
    heldout_version: str | None = Field(default=None, description="Version of the held-out index checked against.")

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


def record_split(record: LineRecord, roles: Mapping[str, str]) -> str | None:
    """A record's split: its own `split:` field, else its file's role (--train/--val/--test), else none."""
    own = metadata(record.record).get("split")
    if isinstance(own, str) and own in SPLITS:
        return own
    return roles.get(record.path)


def check_files(paths: list[Path], *, roles: Mapping[str | Path, str] | None = None,
                index: HeldOutIndex | None = None, max_length: int = 512, tokenizer: Any = None,
                near_threshold: float = 0.8, tokenizer_name: str = "whitespace") -> CheckReport:
    """Run every check over the files together.

    `roles` maps a file to train/val/test; leakage is only between records of different splits, and
    train/unassigned records are checked against `index` (the held-out guard) when one is given.
    """
    by_path = {str(Path(k)): v for k, v in (roles or {}).items()}
    issues: list[Issue] = []
    files: list[FileStats] = []
    rows: list[LineRecord] = []
    for path in paths:
        good, bad = read_records_lenient(Path(path))
        issues += [Issue(severity="error", code="schema", where=_where(e), message=_message(e)) for e in bad]
        rows += good
        labels = Counter(lab for r in good if (lab := record_label(r.record)) is not None)
        fmt = type(good[0].record).__name__.removesuffix("Record").lower() if good else None
        files.append(FileStats(path=str(path), records=len(good), format=fmt, labels=dict(labels)))
    issues += structure_issues(rows)
    issues += duplicate_issues(rows, near_threshold)
    pairs = leak_pairs(rows, by_path)
    issues += leakage_issues(rows, by_path)
    if index is not None:  # a leak already reported between the given files is not reported twice
        leaked = {f"{r.path}:{r.line}" for r, _, _ in pairs} | {where for _, _, where in pairs}
        issues += held_out_issues(rows, by_path, index, near_threshold, skip=leaked)
    issues += label_issues(rows)
    issues += pii_issues(rows)
    lengths, over = length_stats(rows, max_length, tokenizer, tokenizer_name)
    issues += over
    kappa, kappa_issues = agreement(rows)
    return CheckReport(files=files, issues=issues + kappa_issues, lengths=lengths, kappa=kappa,
                       heldout_version=index.version() if index is not None else None)


def _where(exc: LorafleetError) -> str:
    if isinstance(exc, FormatError) and exc.path:
        return f"{exc.path}:{exc.line}" if exc.line else exc.path
    return ""


def _message(exc: LorafleetError) -> str:
    text = exc.message
    where = _where(exc)
    return text.removeprefix(f"{where}: ") if where else text


def structure_issues(rows: list[LineRecord]) -> list[Issue]:
    """Role order and empty turns (the recipe refuses these)."""
    out = []
    for r in rows:
        where = f"{r.path}:{r.line}"
        try:
            check_roles(to_chat(r.record), where)
        except FormatError as exc:
            code = "empty_turn" if "empty" in exc.message else "roles"
            out.append(Issue(severity="error", code=code, where=where, message=_message(exc)))
    return out


def duplicate_issues(rows: list[LineRecord], threshold: float) -> list[Issue]:
    out = []
    first: dict[str, str] = {}
    exact = set()
    for i, r in enumerate(rows):
        h = content_hash(r.record)
        where = f"{r.path}:{r.line}"
        if h in first:
            exact.add(i)
            out.append(Issue(severity="warning", code="duplicate", where=where,
                             message=f"exact duplicate of {first[h]}"))
        else:
            first[h] = where
    texts = [record_text(r.record) for r in rows]
    for i, j, score in near_duplicate_pairs(texts, threshold):
        if j in exact or normalise(texts[i]) == normalise(texts[j]):
            continue
        a, b = rows[i], rows[j]
        out.append(Issue(severity="warning", code="near_duplicate", where=f"{b.path}:{b.line}",
                         message=f"near-duplicate of {a.path}:{a.line} (Jaccard≈{score:.2f})"))
    return out


def leak_pairs(rows: list[LineRecord], roles: Mapping[str, str] | None = None
               ) -> list[tuple[LineRecord, str, str]]:
    """(record, split, where) for each record whose prompt was first seen in another split at `where`.

    Records without a split (plain files, no `split:` field) never leak into each other.
    """
    seen: dict[str, tuple[str, str]] = {}
    out = []
    for r in rows:
        split = record_split(r, roles or {})
        if split is None:
            continue
        key = normalise(prompt_text(r.record))
        if key in seen and seen[key][0] != split:
            out.append((r, seen[key][0], seen[key][1]))
        else:
            seen.setdefault(key, (split, f"{r.path}:{r.line}"))
    return out


def leakage_issues(rows: list[LineRecord], roles: Mapping[str, str] | None = None) -> list[Issue]:
    """The same prompt in two splits (train↔val↔test): an evaluation that measures memory."""
    return [Issue(severity="error", code="leakage", where=f"{r.path}:{r.line}",
                  message=f"prompt also in {split} at {where}") for r, split, where in leak_pairs(rows, roles)]


def held_out_issues(rows: list[LineRecord], roles: Mapping[str, str], index: HeldOutIndex, threshold: float,
                    skip: frozenset[str] | set[str] = frozenset()) -> list[Issue]:
    """Train/unassigned records that match the held-out index, one error per record.

    A file is never compared with its own entries (checking a val file that is in the index is no leak).
    """
    out = []
    if index.note:
        out.append(Issue(severity="warning", code="held_out_index", where=str(index.path), message=index.note))
    by_file: dict[str, list[LineRecord]] = defaultdict(list)
    for r in rows:
        if record_split(r, roles) in (None, "train") and f"{r.path}:{r.line}" not in skip:
            by_file[r.path].append(r)
    for path, records in by_file.items():
        items = [(f"{r.path}:{r.line}", heldout_text(to_chat(r.record).messages)) for r in records]
        for m in index.check(items, threshold=threshold, exclude_sources=[path]):
            out.append(Issue(severity="error", code="held_out", where=m.where,
                             message=f"matches held-out {m.role} {m.source} ({m.kind}, {m.similarity:.2f})"))
    return out


def label_issues(rows: list[LineRecord]) -> list[Issue]:
    """Variants of one label, and classes much rarer than the most common one."""
    spellings: dict[str, Counter[str]] = defaultdict(Counter)
    first_line: dict[str, str] = {}
    for r in rows:
        label = record_label(r.record)
        if label is not None:
            spellings[normalise_label(label)][label] += 1
            first_line.setdefault(label, f"{r.path}:{r.line}")
    out = []
    for norm, variants in spellings.items():
        if len(variants) > 1:
            shown = ", ".join(f"{v!r}×{n} (first {first_line[v]})" for v, n in variants.most_common())
            out.append(Issue(severity="warning", code="label_variants", where=first_line[variants.most_common(1)[0][0]],
                             message=f"label {norm!r} is spelt {len(variants)} ways: {shown}"))
    counts = {norm: sum(v.values()) for norm, v in spellings.items()}
    if len(counts) > 1:
        top = max(counts.values())
        for norm, n in sorted(counts.items()):
            if n * IMBALANCE_RATIO < top:
                out.append(Issue(severity="warning", code="imbalance", where="",
                                 message=f"class {norm!r} has {n} records, {top / n:.1f}× fewer than the largest"))
    return out


def pii_issues(rows: list[LineRecord]) -> list[Issue]:
    out = []
    for r in rows:
        kinds = find_pii(record_text(r.record))
        if kinds:
            out.append(Issue(severity="warning", code="pii", where=f"{r.path}:{r.line}",
                             message=f"possible PII: {', '.join(kinds)}"))
    return out


def length_stats(rows: list[LineRecord], max_length: int, tokenizer: Any,
                 tokenizer_name: str) -> tuple[LengthStats | None, list[Issue]]:
    """Token counts as the chat template renders them (whitespace words without a tokenizer)."""
    if not rows:
        return None, []
    lengths = []
    for r in rows:
        chat = to_chat(r.record)
        if tokenizer is not None:
            ids = tokenizer.apply_chat_template([m.model_dump() for m in chat.messages], tokenize=True)
            lengths.append(len(ids["input_ids"] if hasattr(ids, "keys") else ids))
        else:
            lengths.append(sum(len(m.content.split()) for m in chat.messages))
    ordered = sorted(lengths)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(round(p * (len(ordered) - 1))))]

    over = [(r, n) for r, n in zip(rows, lengths, strict=True) if n > max_length]
    stats = LengthStats(max_length=max_length, p50=pct(0.5), p95=pct(0.95), p99=pct(0.99), max=ordered[-1],
                        over=len(over), tokenizer=tokenizer_name)
    issues = []
    if over:
        r, n = over[0]
        issues.append(Issue(severity="warning", code="overlong", where=f"{r.path}:{r.line}",
                            message=f"{len(over)} records exceed --max-length {max_length} (first: {n} tokens); "
                                    "training drops them unless --on-overlong truncate"))
    return stats, issues


def agreement(rows: list[LineRecord]) -> tuple[dict[str, float], list[Issue]]:
    """Cohen's kappa per annotator pair where records carry `annotations: {annotator: label}`."""
    from sklearn.metrics import cohen_kappa_score

    by_pair: dict[tuple[str, str], tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for r in rows:
        ann = metadata(r.record).get("annotations")
        if not isinstance(ann, dict):
            continue
        labels = {str(k): normalise_label(str(v)) for k, v in ann.items()}
        for a, b in combinations(sorted(labels), 2):
            by_pair[(a, b)][0].append(labels[a])
            by_pair[(a, b)][1].append(labels[b])
    kappa, issues = {}, []
    for (a, b), (xs, ys) in sorted(by_pair.items()):
        if len(xs) < 2:
            continue
        value = 1.0 if xs == ys else float(cohen_kappa_score(xs, ys))
        kappa[f"{a}~{b}"] = round(value, 4)
        if value < LOW_KAPPA:
            issues.append(Issue(severity="warning", code="agreement", where="",
                                message=f"annotators {a} and {b} agree little (Cohen's kappa {value:.2f} "
                                        f"over {len(xs)} records): review the guidelines"))
    return kappa, issues
