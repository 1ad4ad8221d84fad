"""Small JSONL builders and a CLI runner for the training tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lorafleet.cli.main import main

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples" / "data"


def chat(user: str, answer: str, **meta: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], **meta}


def intent(user: str, label: str) -> dict[str, Any]:
    return chat(user, f"[Intent: {label}] ok.", label=label)


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Rows are dicts (JSON-encoded) or raw strings (written as they are, for broken lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `lorafleet ARGV` in-process; (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capsys.readouterr()
    code = exc.value.code if isinstance(exc.value.code, int) else 0
    return code, out, err
