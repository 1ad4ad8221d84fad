"""Who is calling: bearer keys verified against the key store (cached briefly), per-key rate limits."""

from __future__ import annotations

import logging
import math
import time

from lorafleet.serve.keys import KeyInfo, KeyStore
from lorafleet.serve.protocol import ApiError, unauthorized

log = logging.getLogger(__name__)

ANONYMOUS = KeyInfo(name="anonymous", patterns=("*",), admin=True)
MAX_CACHED_KEYS = 10_000


class RateLimiter:
    """A token bucket per key: `rpm` requests per minute, bursts up to `rpm`."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, key: KeyInfo) -> None:
        """Raise 429 with Retry-After when the key is over its rate."""
        if not key.rpm:
            return
        now = time.monotonic()
        rate = key.rpm / 60.0
        tokens, last = self._buckets.get(key.name, (float(key.rpm), now))
        tokens = min(float(key.rpm), tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[key.name] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / rate)
            raise ApiError(429, f"rate limit of {key.rpm} requests per minute reached for this key",
                           type_="rate_limit_error", code="rate_limit_exceeded", retry_after=max(wait, 1))
        self._buckets[key.name] = (tokens - 1.0, now)


class Authenticator:
    """Turns an Authorization header into a KeyInfo. A revoked key stops working within `ttl`."""

    def __init__(self, store: KeyStore | None, *, ttl: float = 5.0, no_auth: bool = False) -> None:
        if store is None and not no_auth:
            raise ValueError("a key store is required unless no_auth")
        self.store = store
        self.ttl = ttl
        self.no_auth = no_auth
        self.limiter = RateLimiter()
        self._cache: dict[str, tuple[float, KeyInfo]] = {}

    def authenticate(self, authorization: str | None) -> KeyInfo:
        if self.no_auth:
            return ANONYMOUS
        if not authorization or not authorization.lower().startswith("bearer "):
            raise unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        token = authorization[7:].strip()
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit is not None and hit[0] > now:
            info = hit[1]
        else:
            assert self.store is not None
            found = self.store.verify(token)
            if found is None:
                raise unauthorized("invalid or revoked API key")
            info = found
            if len(self._cache) >= MAX_CACHED_KEYS:
                self._cache.clear()
            self._cache[token] = (now + self.ttl, info)
        self.limiter.check(info)
        return info

    def require_admin(self, authorization: str | None) -> KeyInfo:
        info = self.authenticate(authorization)
        if not info.admin:
            raise ApiError(403, "this endpoint needs an admin key", type_="permission_error", code="admin_only")
        return info
