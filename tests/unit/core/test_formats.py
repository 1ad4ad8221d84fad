from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorafleet.errors import FormatError
from lorafleet.formats import (
    AlpacaRecord,
    ChatRecord,
    PromptCompletionRecord,
    convert,
    parse_record,
    prompt_and_answer,
    read_records,
    read_records_lenient,
    record_to_json,
)

CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello"}], "label": "greet"}
ALPACA = {"instruction": "Classify", "input": "The party shall pay.", "output": "payment"}
PC = {"prompt": "2+2=", "completion": "4"}


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_detects_each_format() -> None:
    assert isinstance(parse_record(CHAT), ChatRecord)
    assert isinstance(parse_record(ALPACA), AlpacaRecord)
    assert isinstance(parse_record(PC), PromptCompletionRecord)


def test_metadata_survives_conversion_roundtrip() -> None:
    chat = parse_record(CHAT)
    alpaca = convert(chat, "alpaca")
    assert alpaca.instruction == "Be brief." and alpaca.input == "Hi" and alpaca.output == "Hello"
    back = convert(alpaca, "chat")
    assert back.messages[-1].content == "Hello"
    assert record_to_json(back)["label"] == "greet"
    pc = convert(parse_record(ALPACA), "prompt_completion")
    assert pc.prompt == "Classify\n\nThe party shall pay." and pc.completion == "payment"
    prompt, answer = prompt_and_answer(parse_record(PC))
    assert [m.role for m in prompt] == ["user"] and answer == "4"


@pytest.mark.parametrize("line, needle", [
    ('{"messages": [{"role": "robot", "content": "x"}]}', "line 1"),
    ('{"messages": [{"role": "user"}]}', "messages.0.content"),
    ('{"instruction": "x"}', "field 'output'"),
    ('{"prompt": 3, "completion": "x"}', "field 'prompt'"),
    ('{"foo": 1}', "no 'messages'"),
    ('[1, 2]', "expected a JSON object"),
    ('{"messages": [}', "invalid JSON"),
])
def test_errors_name_file_line_and_field(tmp_path: Path, line: str, needle: str) -> None:
    path = write(tmp_path / "d.jsonl", [json.dumps(PC), line])
    with pytest.raises(FormatError) as info:
        list(read_records(path))
    message = str(info.value)
    assert f"{path}:2" in message
    assert needle.replace("line 1", "") in message


def test_lenient_reader_collects_every_error(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [json.dumps(PC), "{bad", "", json.dumps({"x": 1}), json.dumps(ALPACA)])
    good, errors = read_records_lenient(path)
    assert [g.line for g in good] == [1, 5]
    assert [e.line for e in errors] == [2, 4]


def test_missing_file_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="no such file"):
        list(read_records(tmp_path / "nope.jsonl"))
    bad = tmp_path / "latin.jsonl"
    bad.write_bytes(b'{"prompt": "caf\xe9", "completion": "x"}\n')
    with pytest.raises(FormatError, match="UTF-8"):
        list(read_records(bad))


def test_invalid_json_message_says_at_once(tmp_path: Path) -> None:
    from lorafleet.formats import read_records_lenient

    bad = tmp_path / "torn.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "unfinished', encoding="utf-8")
    _, errors = read_records_lenient(bad)
    assert errors[0].message == f"{bad}:2: invalid JSON: unterminated string starting at column 12"
    assert "at at" not in errors[0].message
