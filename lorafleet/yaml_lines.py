"""YAML with the line of every key, so a validation error (suite, policy) can name file:line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lorafleet.errors import ConfigError

KeyPath = tuple[str | int, ...]


def _walk(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*path, key.value)
            lines[child] = key.start_mark.line + 1
            _walk(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines)


def parse_with_lines(text: str, where: str) -> tuple[Any, dict[KeyPath, int]]:
    """The parsed document and key path → 1-based line; bad YAML is a ConfigError naming where:line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}{at}: invalid YAML: {problem}", hint="fix the YAML syntax") from None
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _walk(node, (), lines)
    return data, lines


def load_yaml_with_lines(path: Path) -> tuple[Any, dict[KeyPath, int]]:
    """`parse_with_lines` of a file; a missing file is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file", hint="check the path")
    return parse_with_lines(path.read_text(encoding="utf-8"), str(path))


def line_of(lines: dict[KeyPath, int], loc: tuple[Any, ...]) -> int | None:
    """The line of the deepest known prefix of a pydantic error location."""
    for end in range(len(loc), -1, -1):
        if tuple(loc[:end]) in lines:
            return lines[tuple(loc[:end])]
    return None
