"""Who is calling: bearer keys verified against the key store, per-key rate limits.

A key the cache does not know costs a database query, so that query runs in a worker thread
(never on the event loop), its answer is cached either way (a key that failed stays failed for
`ttl`), and failed look-ups are rate-limited per client address: a spray of random tokens gets
429s, not one query each.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from typing import TYPE_CHECKING

from lorafleet.serve.keys import KEY_PREFIX, KeyInfo, KeyStore
from lorafleet.serve.protocol import ApiError, unauthorized

if TYPE_CHECKING:
    from lorafleet.serve.config import AuthSettings

log = logging.getLogger(__name__)

ANONYMOUS = KeyInfo(name="anonymous", patterns=("*",), admin=True)
MAX_CACHED_KEYS = 10_000
MAX_TRACKED_CLIENTS = 10_000
_REJECTED = KeyInfo(name="", patterns=("",), revoked=True)  # the negative-cache entry


class TokenBuckets:
    """One token bucket per id, refilled at `per_minute / 60` a second, holding at most `per_minute`.
    At most `max_ids` buckets are kept (oldest dropped: a forgotten bucket starts full again)."""

    def __init__(self, max_ids: int = MAX_TRACKED_CLIENTS) -> None:
        self.max_ids = max_ids
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def take(self, id_: str, per_minute: int) -> int:
        """Take one token: 0 when there was one, else the whole seconds until there is."""
        wait = self.wait(id_, per_minute)
        if not wait:
            tokens, now = self._buckets[id_]
            self._buckets[id_] = (tokens - 1.0, now)
        return wait

    def wait(self, id_: str, per_minute: int) -> int:
        """0 when `id_` has a token left, else the whole seconds until it has one (takes nothing)."""
        now = time.monotonic()
        rate = per_minute / 60.0
        tokens, last = self._buckets.pop(id_, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - last) * rate)
        self._buckets[id_] = (tokens, now)
        while len(self._buckets) > self.max_ids:
            self._buckets.popitem(last=False)
        return 0 if tokens >= 1.0 else max(math.ceil((1.0 - tokens) / rate), 1)


class RateLimiter:
    """A token bucket per key: `rpm` requests per minute, bursts up to `rpm`."""

    def __init__(self) -> None:
        self._buckets = TokenBuckets()

    def check(self, key: KeyInfo) -> None:
        """Raise 429 with Retry-After when the key is over its rate."""
        if not key.rpm:
            return
        wait = self._buckets.take(key.name, key.rpm)
        if wait:
            raise ApiError(429, f"rate limit of {key.rpm} requests per minute reached for this key",
                           type_="rate_limit_error", code="rate_limit_exceeded", retry_after=wait)


class TtlCache:
    """token → (expiry, KeyInfo), at most `size` entries (the oldest go first)."""

    def __init__(self, size: int = MAX_CACHED_KEYS) -> None:
        self.size = size
        self._entries: collections.OrderedDict[str, tuple[float, KeyInfo]] = collections.OrderedDict()

    def get(self, token: str) -> KeyInfo | None:
        hit = self._entries.get(token)
        if hit is None:
            return None
        if hit[0] <= time.monotonic():
            del self._entries[token]
            return None
        return hit[1]

    def put(self, token: str, info: KeyInfo, ttl: float) -> None:
        self._entries.pop(token, None)
        self._entries[token] = (time.monotonic() + ttl, info)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class Authenticator:
    """Turns an Authorization header into a KeyInfo. A revoked key stops working within `ttl`.

    `failed_lookups_per_minute`: key-store queries for unknown keys one client address may cause."""

    def __init__(self, store: KeyStore | None, *, ttl: float = 5.0, no_auth: bool = False,
                 failed_lookups_per_minute: int = 60, cache_size: int = MAX_CACHED_KEYS) -> None:
        if store is None and not no_auth:
            raise ValueError("a key store is required unless no_auth")
        self.store = store
        self.ttl = ttl
        self.no_auth = no_auth
        self.failed_lookups_per_minute = failed_lookups_per_minute
        self.limiter = RateLimiter()
        self.cache = TtlCache(cache_size)
        self._failures = TokenBuckets()

    @classmethod
    def from_settings(cls, store: KeyStore | None, auth: AuthSettings) -> Authenticator:
        """The gateway's authenticator, from its auth group."""
        return cls(store, ttl=auth.key_cache_ttl, no_auth=auth.no_auth,
                   failed_lookups_per_minute=auth.failed_key_lookups_per_minute)

    async def authenticate(self, authorization: str | None, client: str | None = None) -> KeyInfo:
        """The caller's key (401 when missing, unknown or revoked; 429 over a rate)."""
        if self.no_auth:
            return ANONYMOUS
        if not authorization or not authorization.lower().startswith("bearer "):
            raise unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        token = authorization[7:].strip()
        if not token.startswith(KEY_PREFIX):  # not one of ours: no query needed to say so
            raise unauthorized("invalid or revoked API key")
        info = self.cache.get(token)
        if info is None:
            info = await self._lookup(token, client or "unknown")
        if info is _REJECTED:
            raise unauthorized("invalid or revoked API key")
        self.limiter.check(info)
        return info

    async def require_admin(self, authorization: str | None, client: str | None = None) -> KeyInfo:
        """The caller's key, which must be an admin key (else 403)."""
        info = await self.authenticate(authorization, client)
        if not info.admin:
            raise ApiError(403, "this endpoint needs an admin key", type_="permission_error", code="admin_only")
        return info

    async def _lookup(self, token: str, client: str) -> KeyInfo:
        # only failed look-ups spend the address's budget: a client with a good key is never slowed
        wait = self._failures.wait(client, self.failed_lookups_per_minute)
        if wait:
            raise ApiError(429, "too many unknown API keys from this address; retry later",
                           type_="rate_limit_error", code="rate_limit_exceeded", retry_after=wait)
        assert self.store is not None
        found = await asyncio.to_thread(self.store.verify, token)
        if found is None:
            self._failures.take(client, self.failed_lookups_per_minute)
        info = _REJECTED if found is None else found
        self.cache.put(token, info, self.ttl)
        return info
