"""Every `lorafleet …` command that docs/operations.md and docs/architecture.md show exists, with
the options they pass."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from lorafleet.cli.main import build_app
from tests.unit.deploy.paths import REPO

DOCS = [REPO / "docs" / "operations.md", REPO / "docs" / "architecture.md"]
COMMAND = re.compile(r"(?<![\w/-])(?<!-n )(?<!namespace )lorafleet((?: +[^\s`|;&<>)\"]+)+)")
CODE = re.compile(r"```[a-z]*\n(.*?)```|`([^`\n]+)`", re.DOTALL)


def shown_commands(path: Path) -> list[list[str]]:
    """The words after each `lorafleet` in the file's code blocks and inline code."""
    found = []
    for block in CODE.finditer(path.read_text()):
        for match in COMMAND.finditer(block.group(1) or block.group(2)):
            words = match.group(1).split()
            if words and re.fullmatch(r"[a-z][a-z-]*", words[0]):
                found.append(words)
    return found


def is_group(command: object) -> bool:
    return hasattr(command, "commands")  # typer vendors click: duck-type instead of isinstance


def check(root: object, words: list[str]) -> str | None:
    """None when the command path exists and knows every --option given, else the problem.

    A group may take options itself (`lorafleet serve --upstream …` is a group with a callback)."""
    command, path = root, []
    for word in words:
        if not is_group(command) or word not in command.commands:
            break
        command, path = command.commands[word], [*path, word]
    if not path:
        return f"no command `lorafleet {words[0]}`"
    known = {opt for param in command.params for opt in param.opts}
    unknown = [w.split("=")[0] for w in words if w.startswith("--") and w.split("=")[0] not in known]
    return f"`lorafleet {' '.join(path)}` has no {unknown}" if unknown else None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_commands_exist(doc: Path) -> None:
    root = typer.main.get_command(build_app())
    commands = shown_commands(doc)
    assert len(commands) >= 3, f"{doc.name} shows almost no lorafleet commands"
    assert [p for words in commands if (p := check(root, words))] == []


def test_the_check_catches_drift() -> None:
    root = typer.main.get_command(build_app())
    assert check(root, ["keys", "create", "--name", "x", "--scopes", "y"]) is not None
    assert check(root, ["nosuch", "thing"]) is not None
    assert check(root, ["keys", "create", "--name", "x", "--adapters", "y"]) is None
