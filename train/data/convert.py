"""Convert a JSONL file between chat, alpaca and prompt/completion (metadata kept)."""

from __future__ import annotations

from pathlib import Path

from lorafleet.errors import FormatError
from lorafleet.formats import FormatName, convert, read_records, record_to_json
from lorafleet.fsutil import atomic_write_jsonl


def convert_file(src: Path, dst: Path, fmt: FormatName) -> int:
    """Write `dst` in `fmt`; a record that cannot convert raises with its file:line."""
    rows = []
    for line in read_records(src):
        try:
            rows.append(record_to_json(convert(line.record, fmt)))
        except FormatError as exc:
            raise FormatError(exc.message, path=line.path, line=line.line, hint=exc.hint) from None
    return atomic_write_jsonl(dst, rows)
