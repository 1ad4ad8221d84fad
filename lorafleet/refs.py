"""Names and refs: `name`, `name@v3`, `name@prod`. Strict, because names become paths."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lorafleet.errors import InvalidNameError

# `\Z`, not `$`: `$` also matches before a trailing newline, so `alpha\n` would pass `.match`.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
VERSION_RE = re.compile(r"^v([1-9][0-9]{0,8})\Z")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
NAME_RULE = "lowercase letters, digits, '.', '_' or '-', starting with a letter or digit, at most 64"


def validate_name(name: str) -> str:
    """Return `name` if it is a valid adapter name, else raise InvalidNameError."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise InvalidNameError(f"invalid adapter name {name!r}", hint=f"use {NAME_RULE} characters, no '..'")
    return name


def validate_version(version: str) -> str:
    if not VERSION_RE.match(version):
        raise InvalidNameError(f"invalid version {version!r}", hint="versions look like v1, v2, …")
    return version


def validate_alias(alias: str) -> str:
    if re.match(r"^v[0-9]+\Z", alias) or not ALIAS_RE.match(alias):
        raise InvalidNameError(
            f"invalid alias {alias!r}",
            hint="aliases are lowercase words like prod or canary (letters, digits, '_', '-'), not v<N>",
        )
    return alias


def version_number(version: str) -> int:
    match = VERSION_RE.match(version)
    if not match:
        raise InvalidNameError(f"invalid version {version!r}", hint="versions look like v1, v2, …")
    return int(match.group(1))


@dataclass(frozen=True)
class AdapterRef:
    """A parsed ref. `selector` is a version (`v3`), an alias (`prod`) or None (= `latest`)."""

    name: str
    selector: str | None = None

    @property
    def is_version(self) -> bool:
        return self.selector is not None and VERSION_RE.match(self.selector) is not None

    @property
    def alias(self) -> str:
        """The alias this ref goes through (`latest` when none is given)."""
        if self.is_version:
            raise ValueError("a versioned ref has no alias")
        return self.selector or "latest"

    def __str__(self) -> str:
        return f"{self.name}@{self.selector}" if self.selector else self.name


def parse_ref(ref: str) -> AdapterRef:
    """Parse `name`, `name@vN` or `name@alias`; raise InvalidNameError naming the bad part."""
    if not isinstance(ref, str) or ref.count("@") > 1:
        raise InvalidNameError(f"invalid adapter ref {ref!r}", hint="use name, name@v3 or name@prod")
    name, _, selector = ref.partition("@")
    validate_name(name)
    if not _:
        return AdapterRef(name)
    if re.match(r"^v[0-9]+\Z", selector):
        return AdapterRef(name, validate_version(selector))
    return AdapterRef(name, validate_alias(selector))
