"""Evaluation settings: core Settings plus the endpoint and the review app (LORAFLEET_ env vars)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from lorafleet.config import Settings


class EvalSettings(Settings):
    eval_endpoint: str = Field(default="http://127.0.0.1:8000", description="OpenAI-compatible base URL.")
    eval_api_key: SecretStr | None = Field(default=None, description="Bearer key for the endpoint.")
    eval_concurrency: int = Field(default=8, ge=1)
    review_url: str | None = Field(default=None, description="Review app URL for sample push.")
    review_token: SecretStr | None = None

    @property
    def eval_dir(self) -> Path:
        return self.data_dir / "eval"

    @property
    def runs_dir(self) -> Path:
        return self.eval_dir / "runs"

    @property
    def cache_path(self) -> Path:
        return self.eval_dir / "cache.sqlite"
