"""ReviewSettings: the review app's own settings on top of the core ones."""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import Field, SecretStr

from lorafleet.config import Settings
from lorafleet.fsutil import atomic_write_text


class ReviewSettings(Settings):
    """Settings of `lorafleet review serve` (env prefix LORAFLEET_)."""

    review_host: str = Field(default="127.0.0.1", description="Address the review app binds to.")
    review_port: int = Field(default=8001, ge=1, le=65535, description="Port of the review app.")
    review_database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite <data_dir>/review.db (WAL).")
    review_secret_key: SecretStr | None = Field(
        default=None, description="Signs session cookies; default: generated once into the data dir.")
    review_admin_token: SecretStr | None = Field(
        default=None, description="Bearer token for the admin API (ingest into any queue, export, stats).")
    lease_seconds: int = Field(default=600, ge=5, description="How long a reviewer holds an item slot.")
    login_max_failures: int = Field(default=5, ge=1, description="Failed logins per user+address per window.")
    login_window_seconds: int = Field(default=300, ge=1, description="Login rate-limit window.")
    secure_cookies: bool = Field(default=False, description="Mark the session cookie Secure (behind HTTPS).")

    @property
    def review_db_url(self) -> str:
        # Own SQLite file: the gateway's key store lives in lorafleet.db; we never share its tables.
        return self.review_database_url or f"sqlite:///{(self.data_dir / 'review.db').resolve()}"

    def secret_key(self) -> str:
        """The session-signing key: configured, else read from (or created in) the data dir."""
        if self.review_secret_key is not None:
            return self.review_secret_key.get_secret_value()
        path = Path(self.data_dir) / "review-secret.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text(encoding="utf-8").strip()
