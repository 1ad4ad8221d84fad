"""Dataset records in the three formats the field uses, converters, and a line-numbered reader.

- chat:               {"messages": [{"role": "user", "content": "…"}, …]}
- alpaca:             {"instruction": "…", "input": "…", "output": "…"}
- prompt/completion:  {"prompt": "…", "completion": "…"}

Any other top-level keys (label, id, annotators, provenance…) are kept as metadata.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lorafleet.errors import FormatError

FormatName = Literal["chat", "alpaca", "prompt_completion"]
FORMATS: tuple[FormatName, ...] = ("chat", "alpaca", "prompt_completion")
Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str


class ChatRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    messages: list[Message] = Field(min_length=1)


class AlpacaRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    instruction: str
    input: str = ""
    output: str


class PromptCompletionRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str
    completion: str


Record = ChatRecord | AlpacaRecord | PromptCompletionRecord
MODELS: dict[FormatName, type[BaseModel]] = {
    "chat": ChatRecord,
    "alpaca": AlpacaRecord,
    "prompt_completion": PromptCompletionRecord,
}


def detect_format(obj: dict[str, Any]) -> FormatName | None:
    """Which format a JSON object is meant to be, by its keys."""
    if "messages" in obj:
        return "chat"
    if "instruction" in obj or "output" in obj:
        return "alpaca"
    if "prompt" in obj or "completion" in obj:
        return "prompt_completion"
    return None


def parse_record(obj: Any, *, fmt: FormatName | None = None, path: str | None = None,
                 line: int | None = None) -> Record:
    """Validate one decoded JSON value as a record; FormatError names file:line and the field."""
    if not isinstance(obj, dict):
        raise FormatError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=line)
    fmt = fmt or detect_format(obj)
    if fmt is None:
        raise FormatError(
            "no 'messages', 'instruction'/'output' or 'prompt'/'completion' keys",
            path=path, line=line, hint="use one of the chat, alpaca or prompt/completion formats",
        )
    try:
        return MODELS[fmt].model_validate(obj)  # type: ignore[return-value]
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        raise FormatError(f"{err['msg']} ({fmt} format)", path=path, line=line, field=field) from None


def record_format(record: Record) -> FormatName:
    if isinstance(record, ChatRecord):
        return "chat"
    if isinstance(record, AlpacaRecord):
        return "alpaca"
    return "prompt_completion"


def metadata(record: Record) -> dict[str, Any]:
    """The extra top-level keys a record carries beyond its format's own."""
    return dict(record.model_extra or {})


# ---- conversion -----------------------------------------------------------------------------

def to_chat(record: Record, *, system: str | None = None) -> ChatRecord:
    """Convert any record to chat messages; metadata is kept."""
    if isinstance(record, ChatRecord):
        return record
    if isinstance(record, AlpacaRecord):
        user = record.instruction if not record.input else f"{record.instruction}\n\n{record.input}"
        answer = record.output
    else:
        user, answer = record.prompt, record.completion
    messages = ([Message(role="system", content=system)] if system else []) + [
        Message(role="user", content=user), Message(role="assistant", content=answer)]
    return ChatRecord(messages=messages, **metadata(record))


def _split_chat(record: ChatRecord) -> tuple[str, str, str]:
    """(system, last user turn incl. earlier context, final assistant answer) of a chat record."""
    msgs = record.messages
    if msgs[-1].role != "assistant":
        raise FormatError("the last message must be the assistant's answer to convert this record",
                          field="messages")
    system = "\n".join(m.content for m in msgs if m.role == "system")
    context = [m for m in msgs[:-1] if m.role != "system"]
    if len(context) == 1:
        prompt = context[0].content
    else:
        prompt = "\n".join(f"{m.role}: {m.content}" for m in context)
    return system, prompt, msgs[-1].content


def to_alpaca(record: Record) -> AlpacaRecord:
    if isinstance(record, AlpacaRecord):
        return record
    if isinstance(record, PromptCompletionRecord):
        return AlpacaRecord(instruction=record.prompt, output=record.completion, **metadata(record))
    system, prompt, answer = _split_chat(record)
    return AlpacaRecord(instruction=system or prompt, input=prompt if system else "", output=answer,
                        **metadata(record))


def to_prompt_completion(record: Record) -> PromptCompletionRecord:
    if isinstance(record, PromptCompletionRecord):
        return record
    if isinstance(record, AlpacaRecord):
        prompt = record.instruction if not record.input else f"{record.instruction}\n\n{record.input}"
        return PromptCompletionRecord(prompt=prompt, completion=record.output, **metadata(record))
    system, prompt, answer = _split_chat(record)
    return PromptCompletionRecord(prompt=f"{system}\n\n{prompt}" if system else prompt, completion=answer,
                                  **metadata(record))


CONVERTERS = {"chat": to_chat, "alpaca": to_alpaca, "prompt_completion": to_prompt_completion}


def convert(record: Record, fmt: FormatName) -> Record:
    """Convert a record to the named format."""
    return CONVERTERS[fmt](record)


def prompt_and_answer(record: Record) -> tuple[list[Message], str]:
    """The prompt as chat messages (everything before the final answer) and the answer text."""
    chat = to_chat(record)
    if chat.messages[-1].role != "assistant":
        return list(chat.messages), ""
    return list(chat.messages[:-1]), chat.messages[-1].content


# ---- reading --------------------------------------------------------------------------------

@dataclass
class LineRecord:
    """A record with where it came from."""

    path: str
    line: int
    record: Record
    raw: dict[str, Any]


def json_error_message(exc: json.JSONDecodeError) -> str:
    """'invalid JSON: <what> at column N' (json's own 'starting at' messages end in "at" already)."""
    what = exc.msg[0].lower() + exc.msg[1:] if exc.msg else "bad value"
    joiner = " " if what.endswith(" at") else " at "
    return f"invalid JSON: {what}{joiner}column {exc.colno}"


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, decoded JSON) for each non-blank line; bad JSON raises FormatError."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file", hint="check the path")
    with open(path, encoding="utf-8", errors="strict") as f:
        lineno = 0
        try:
            for lineno, text in enumerate(f, start=1):  # noqa: B007 - used in the except
                if not text.strip():
                    continue
                try:
                    yield lineno, json.loads(text)
                except json.JSONDecodeError as exc:
                    raise FormatError(json_error_message(exc), path=str(path), line=lineno) from None
        except UnicodeDecodeError:
            raise FormatError("not UTF-8 text", path=str(path), line=lineno + 1,
                              hint="re-encode the file as UTF-8") from None


def read_records(path: Path, *, fmt: FormatName | None = None) -> Iterator[LineRecord]:
    """Stream validated records; the first bad line raises FormatError with file:line:field."""
    for lineno, obj in iter_jsonl(path):
        record = parse_record(obj, fmt=fmt, path=str(path), line=lineno)
        yield LineRecord(str(path), lineno, record, obj)


def read_records_lenient(path: Path, *, fmt: FormatName | None = None
                         ) -> tuple[list[LineRecord], list[FormatError]]:
    """Read every line, collecting errors instead of stopping at the first (for `data check`)."""
    good: list[LineRecord] = []
    errors: list[FormatError] = []
    path = Path(path)
    if not path.is_file():
        return [], [FormatError(f"{path}: no such file", hint="check the path")]
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                errors.append(FormatError(json_error_message(exc), path=str(path), line=lineno))
                continue
            try:
                good.append(LineRecord(str(path), lineno, parse_record(obj, fmt=fmt, path=str(path),
                                                                       line=lineno), obj))
            except FormatError as exc:
                errors.append(exc)
    return good, errors


def record_to_json(record: Record) -> dict[str, Any]:
    """A record as the JSON object written to JSONL (metadata included)."""
    return record.model_dump(mode="json", exclude_none=True)
