"""`lorafleet data fix`: the mechanical fixes, into a new file plus a report of what changed.

Drops unparsable lines, records with empty turns and exact duplicates (normalised hash);
rewrites label variants to the most common spelling (top-level `label` and `[Intent: x]`).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from lorafleet.train.data.text import INTENT_RE, content_hash, normalise_label, record_label
from lorafleet.train.dataset import check_roles
from pydantic import BaseModel

from lorafleet.errors import ConfigError, FormatError
from lorafleet.formats import read_records_lenient, to_chat
from lorafleet.fsutil import atomic_write_json, atomic_write_jsonl


class Change(BaseModel):
    where: str
    action: str
    detail: str


class FixReport(BaseModel):
    source: str
    output: str
    kept: int
    changes: list[Change]


def canonical_labels(labels: list[str]) -> dict[str, str]:
    """Each spelling → the most common spelling of its normalised label (ties: the normalised form)."""
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    for label in labels:
        groups[normalise_label(label)][label] += 1
    out = {}
    for norm, spellings in groups.items():
        best = max(spellings.items(), key=lambda kv: (kv[1], kv[0] == norm))[0]
        for s in spellings:
            out[s] = best
    return out


def relabel(raw: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    fixed = json.loads(json.dumps(raw))
    if fixed.get("label") == old:
        fixed["label"] = new
    for m in fixed.get("messages", [])[-1:]:
        if m.get("role") == "assistant" and INTENT_RE.match(m.get("content", "")):
            m["content"] = INTENT_RE.sub(f"[Intent: {new}]", m["content"], count=1)
    return fixed


def fix_file(src: Path, dst: Path, *, dedup: bool = True, labels: bool = True) -> FixReport:
    if Path(src).resolve() == Path(dst).resolve():
        raise ConfigError("--out must differ from the input", hint="fix writes a new file; the original is kept")
    good, bad = read_records_lenient(Path(src))
    changes = [Change(where=f"{e.path}:{e.line}", action="dropped", detail=e.message.split(": ", 1)[-1])
               for e in bad if isinstance(e, FormatError)]
    spelled = [lab for r in good if (lab := record_label(r.record)) is not None]
    canon = canonical_labels(spelled) if labels else {}
    seen: dict[str, str] = {}
    kept = []
    for r in good:
        where = f"{r.path}:{r.line}"
        try:
            check_roles(to_chat(r.record), where)
        except FormatError as exc:
            changes.append(Change(where=where, action="dropped", detail=exc.message.split(": ", 1)[-1]))
            continue
        h = content_hash(r.record)
        if dedup and h in seen:
            changes.append(Change(where=where, action="dropped", detail=f"exact duplicate of {seen[h]}"))
            continue
        seen.setdefault(h, where)
        raw = r.raw
        label = record_label(r.record)
        if label is not None and canon.get(label, label) != label:
            raw = relabel(raw, label, canon[label])
            changes.append(Change(where=where, action="relabelled", detail=f"{label!r} → {canon[label]!r}"))
        kept.append(raw)
    atomic_write_jsonl(dst, kept)
    report = FixReport(source=str(src), output=str(dst), kept=len(kept), changes=changes)
    atomic_write_json(Path(str(dst) + ".report.json"), report)
    return report
