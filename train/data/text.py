"""How records are seen as text: normalised form, content hash, label extraction."""

from __future__ import annotations

import hashlib
import re

from lorafleet.formats import AlpacaRecord, ChatRecord, PromptCompletionRecord, Record, metadata
from lorafleet.textsig import normalise

__all__ = ["INTENT_RE", "content_hash", "normalise", "normalise_label", "prompt_text", "record_label",
           "record_text"]

INTENT_RE = re.compile(r"^\s*\[Intent:\s*([^\]]*?)\s*\]")
_SPACE = re.compile(r"\s+")


def record_text(record: Record) -> str:
    """Every text field of a record joined (role-tagged for chat), metadata left out."""
    if isinstance(record, ChatRecord):
        return "\n".join(f"{m.role}: {m.content}" for m in record.messages)
    if isinstance(record, AlpacaRecord):
        return f"{record.instruction}\n{record.input}\n{record.output}"
    assert isinstance(record, PromptCompletionRecord)
    return f"{record.prompt}\n{record.completion}"


def prompt_text(record: Record) -> str:
    """The input side only (what leakage between splits is about)."""
    if isinstance(record, ChatRecord):
        return "\n".join(m.content for m in record.messages if m.role != "assistant")
    if isinstance(record, AlpacaRecord):
        return f"{record.instruction}\n{record.input}"
    return record.prompt


def content_hash(record: Record) -> str:
    """sha256 of the normalised text: equal for exact duplicates up to case/punctuation/spacing."""
    return hashlib.sha256(normalise(record_text(record)).encode("utf-8")).hexdigest()


def normalise_label(label: str) -> str:
    """`Refund.`, ` REFUND ` and `refund` are one label."""
    return _SPACE.sub("_", normalise(label))


def record_label(record: Record) -> str | None:
    """The record's label: top-level `label`, else `[Intent: x]` in the answer, else alpaca output
    when it is a single short token-like answer."""
    meta = metadata(record)
    if isinstance(meta.get("label"), str):
        return meta["label"]
    answer = _answer(record)
    if answer is None:
        return None
    found = INTENT_RE.match(answer)
    if found:
        return found.group(1)
    return None


def _answer(record: Record) -> str | None:
    if isinstance(record, ChatRecord):
        last = record.messages[-1]
        return last.content if last.role == "assistant" else None
    if isinstance(record, AlpacaRecord):
        return record.output
    return record.completion
