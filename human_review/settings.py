"""ReviewSettings: the review app's own settings on top of the core ones."""

from __future__ import annotations

import ipaddress
import secrets
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

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
    login_account_max_failures: int = Field(
        default=10, ge=1, description="Failed logins of one account (from any address) per window before each "
                                      "further try waits (1 s, doubling, up to login_account_max_delay_seconds).")
    login_account_max_delay_seconds: int = Field(
        default=300, ge=1, description="Longest wait between tries on an account under attack: a stranger can "
                                       "slow an account's logins to this, never lock it.")
    login_address_max_failures: int = Field(
        default=50, ge=1, description="Failed logins from one address (any user names) per window.")
    login_limiter_max_entries: int = Field(
        default=10_000, ge=100, description="Addresses/names the login limiter remembers (oldest dropped first).")
    review_trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Addresses or CIDR networks of reverse proxies whose X-Forwarded-For "
                                          "is believed (env: comma-separated); none by default: the peer "
                                          "address is the client.")
    session_max_seconds: int = Field(default=12 * 3600, ge=60, description="A login session ends this long after "
                                                                          "login, whatever happens.")
    session_idle_seconds: int = Field(default=4 * 3600, ge=60, description="A login session unused this long ends.")
    review_max_body_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Largest API request body (bytes); larger ones get 413.")
    review_max_form_bytes: int = Field(
        default=2 * 1024 * 1024, ge=1024, description="Largest browser form body (login, grade) in bytes.")
    secure_cookies: bool = Field(default=False, description="Mark the session cookie Secure (behind HTTPS).")
    review_registry: Path | None = Field(
        default=None, description="Adapter registry whose cards get card.review (grades summary and agreement "
                                  "per version) as grades arrive; unset: no card is written.")
    review_card_interval: float = Field(
        default=2.0, gt=0, le=3600, description="Seconds between card.review flushes (grades are batched).")

    @field_validator("review_trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: object) -> object:
        """A comma-separated env value or a list; each entry must be an IP address or network."""
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            for v in value:
                try:
                    ipaddress.ip_network(str(v), strict=False)
                except ValueError:
                    raise ValueError(f"{v!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/8)") from None
        return value

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
