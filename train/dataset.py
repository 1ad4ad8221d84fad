"""Training data: records → TRL conversational prompt/completion rows, refusing bad input with
file:line (malformed JSON, missing fields, wrong roles, empty answers, label variants, leakage,
over-long examples)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorafleet.train.data.text import normalise_label, prompt_text, record_label

from lorafleet.errors import ConfigError, FormatError
from lorafleet.formats import ChatRecord, LineRecord, Message, read_records, to_chat

DATA_FIX_HINT = "run `lorafleet data check` to see every problem and `lorafleet data fix` for the mechanical ones"


@dataclass
class Example:
    """One training example, with where it came from."""

    where: str
    prompt: list[dict[str, str]]
    completion: list[dict[str, str]]

    def row(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "completion": self.completion}


@dataclass
class PreparedData:
    train: list[Example]
    val: list[Example]
    dropped: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)


def check_roles(chat: ChatRecord, where: str) -> None:
    """system? then alternating user/assistant, ending with a non-empty assistant answer."""
    roles = [m.role for m in chat.messages]
    body = roles[1:] if roles and roles[0] == "system" else roles
    if "system" in body:
        raise FormatError("a system message may only come first", path=where, field="messages",
                          hint="move it to the start or merge it")
    for i, role in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise FormatError(f"message {i + 1 + (len(roles) - len(body))} has role {role!r}, expected {expected!r}",
                              path=where, field="messages", hint="turns must alternate user/assistant")
    if not body or body[-1] != "assistant":
        raise FormatError("the last message must be the assistant's answer", path=where, field="messages")
    for i, m in enumerate(chat.messages):
        if not m.content.strip():
            raise FormatError(f"message {i + 1} ({m.role}) is empty", path=where, field=f"messages.{i}.content",
                              hint="fill it in or drop the record (`lorafleet data fix`)")


def to_example(line: LineRecord, system_prompt: str | None) -> Example:
    where = f"{line.path}:{line.line}"
    chat = to_chat(line.record)
    check_roles(chat, where)
    messages = list(chat.messages)
    if system_prompt and messages[0].role != "system":
        messages.insert(0, Message(role="system", content=system_prompt))
    dump = [m.model_dump() for m in messages]
    return Example(where=where, prompt=dump[:-1], completion=dump[-1:])


def check_labels(lines: list[LineRecord]) -> None:
    """Refuse label variants (`Refund.` beside `refund`): they split one class in two."""
    spellings: dict[str, dict[str, str]] = defaultdict(dict)
    for line in lines:
        label = record_label(line.record)
        if label is not None:
            spellings[normalise_label(label)].setdefault(label, f"{line.path}:{line.line}")
    for variants in spellings.values():
        if len(variants) > 1:
            shown = ", ".join(f"{label!r} ({where})" for label, where in variants.items())
            raise FormatError(f"label variants of one class: {shown}", hint=DATA_FIX_HINT)


def check_leakage(train: list[LineRecord], val: list[LineRecord]) -> None:
    seen = {prompt_text(t.record).strip(): f"{t.path}:{t.line}" for t in train}
    for v in val:
        hit = seen.get(prompt_text(v.record).strip())
        if hit:
            raise ConfigError(f"{v.path}:{v.line} also appears in the training data at {hit} (leakage)",
                              hint="remove it from one side (`lorafleet data split`), or pass --allow-leakage")


def read(path: Path) -> list[LineRecord]:
    lines = list(read_records(Path(path)))
    if not lines:
        raise FormatError(f"{path}: holds no records", hint="give a JSONL file with one record per line")
    return lines


def prepare(train_path: Path, val_path: Path | None, *, system_prompt: str | None = None,
            allow_leakage: bool = False) -> tuple[list[Example], list[Example]]:
    """Read and validate both files; the first problem raises with file:line."""
    train = read(train_path)
    val = read(val_path) if val_path is not None else []
    check_labels(train + val)
    if val and not allow_leakage:
        check_leakage(train, val)
    return ([to_example(x, system_prompt) for x in train], [to_example(x, system_prompt) for x in val])


def apply_max_length(examples: list[Example], lengths: list[int], max_length: int, policy: str,
                     flag: str = "--max-length") -> tuple[list[Example], list[str]]:
    """Drop, keep (TRL truncates) or refuse examples longer than `max_length` tokens."""
    kept, over = [], []
    for ex, n in zip(examples, lengths, strict=True):
        if n > max_length:
            over.append(f"{ex.where} ({n} tokens)")
            if policy == "drop":
                continue
        kept.append(ex)
    if over and policy == "error":
        raise ConfigError(f"{over[0]} is longer than {flag} {max_length} ({len(over)} such examples)",
                          hint=f"raise {flag}, or pass --on-overlong drop|truncate")
    if not kept:
        raise ConfigError(f"every example is longer than {flag} {max_length}", hint=f"raise {flag}")
    return kept, over


def token_lengths(tokenizer: Any, examples: list[Example]) -> list[int]:
    """Prompt + completion tokens as the chat template renders them."""
    out = []
    for ex in examples:
        ids = tokenizer.apply_chat_template(ex.prompt + ex.completion, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        out.append(len(ids))
    return out
