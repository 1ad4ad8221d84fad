"""Errors a user can act on: each carries what went wrong and how to fix it."""

from __future__ import annotations


class LorafleetError(Exception):
    """A user-facing error. The CLI prints it as one line and exits with `exit_code`."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(LorafleetError):
    """Bad settings, flags or config files."""


class RegistryError(LorafleetError):
    """A missing, invalid or corrupt registry entry."""


class NotFoundError(RegistryError):
    """An adapter, version or alias that does not exist."""


class InvalidNameError(RegistryError):
    """A name, version, alias or ref that breaks the naming rules."""


class BaseModelError(LorafleetError):
    """The base model (wheel, GGUF or HF folder) is missing, corrupt or unusable."""


class FormatError(LorafleetError):
    """A dataset record that does not parse; names file, line and field."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None, hint: str | None = None) -> None:
        where = ":".join(str(p) for p in (path, line) if p is not None)
        prefix = f"{where}: " if where else ""
        field_part = f"field '{field}': " if field else ""
        super().__init__(f"{prefix}{field_part}{message}", hint=hint)
        self.path = path
        self.line = line
        self.field = field


class HeldOutError(LorafleetError):
    """Records that match held-out (val/test/eval/review) examples would reach training.

    The message lists one line per record; `matches` keeps them for callers that report them.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, matches: list | None = None) -> None:
        super().__init__(message, hint=hint)
        self.matches = list(matches or [])
