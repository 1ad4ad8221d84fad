"""Passwords (argon2), API tokens, CSRF tokens and the login rate limiter."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()  # stateless parameters object, safe to share
# Verified against when the user does not exist, so a wrong name costs as long as a wrong password
# (no user enumeration through response timing).
_DUMMY_HASH = _hasher.hash("not a real password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when `password` matches; runs a full argon2 verify even for unknown users."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def new_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    """Tokens are stored as sha256: a leaked database does not leak working tokens."""
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class _FailureLog:
    """Failure times per key in a sliding window; at most `max_entries` keys, the least recently failed go first."""

    def __init__(self, window_s: float, keep: int, max_entries: int) -> None:
        self.window_s = window_s
        self.keep = keep  # a key's older failures never change a decision: keep only the last few
        self.max_entries = max_entries
        self._log: OrderedDict[Hashable, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._log)

    def recent(self, key: Hashable, now: float) -> deque[float]:
        """The key's failures inside the window (an empty deque when none); drops the expired ones."""
        q = self._log.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._log[key]
        return q

    def add(self, key: Hashable, now: float) -> None:
        q = self._log.get(key)
        if q is None:
            q = self._log[key] = deque(maxlen=self.keep)
        q.append(now)
        self._log.move_to_end(key)  # ordered by last failure: the front is always the stalest
        self._expire(now)

    def pop(self, key: Hashable) -> None:
        self._log.pop(key, None)

    def _expire(self, now: float) -> None:
        while self._log:
            q = next(iter(self._log.values()))
            if q[-1] > now - self.window_s and len(self._log) <= self.max_entries:
                break
            self._log.popitem(last=False)  # expired, or the oldest when full (memory stays bounded)


class LoginLimiter:
    """Failed logins, counted three ways in a sliding window (the policy, also in the README):

    - per (address, account): `max_failures`, then that address waits until the oldest failure leaves
      the window — the classic limit, which one client cannot dodge by rotating names;
    - per account, from any address: after `account_max_failures`, each further try waits 1 s,
      doubling per failure up to `account_max_delay_s`. Rotating addresses does not help a guesser,
      and a stranger can only slow an account's logins to one try per that delay — never lock it
      (the owner still gets in on a try between the stranger's);
    - per address, any account names: `address_max_failures` (one client spraying many accounts).

    Other accounts are never affected by one account's failures. A success clears the failures of
    that (address, account) and of the account. Memory is bounded: at most `max_entries` keys per
    table, expired keys dropped first, then the least recently failed.
    """

    def __init__(self, max_failures: int, window_s: float, *, account_max_failures: int = 10,
                 account_max_delay_s: float = 300, address_max_failures: int = 50, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.account_max_failures = account_max_failures
        self.account_max_delay_s = account_max_delay_s
        self.address_max_failures = address_max_failures
        self.clock = clock  # injectable: tests freeze time
        doublings = max(1, math.ceil(math.log2(max(account_max_delay_s, 1)))) + 1
        self._pair = _FailureLog(window_s, max_failures, max_entries)
        self._account = _FailureLog(window_s, account_max_failures + doublings, max_entries)
        self._address = _FailureLog(window_s, address_max_failures, max_entries)
        self._lock = threading.Lock()

    def entries(self) -> int:
        """How many keys the limiter remembers now (all tables)."""
        with self._lock:
            return len(self._pair) + len(self._account) + len(self._address)

    def retry_after(self, address: str, name: str) -> int:
        """Seconds until another try is allowed; 0 when allowed now."""
        now = self.clock()
        name = _account_key(name)
        with self._lock:
            waits = [0.0]
            pair = self._pair.recent((address, name), now)
            if len(pair) >= self.max_failures:
                waits.append(pair[0] + self.window_s - now)
            spray = self._address.recent(address, now)
            if len(spray) >= self.address_max_failures:
                waits.append(spray[0] + self.window_s - now)
            account = self._account.recent(name, now)
            if len(account) >= self.account_max_failures:
                delay = min(self.account_max_delay_s, 2.0 ** (len(account) - self.account_max_failures))
                waits.append(account[-1] + delay - now)
        wait = max(waits)
        return 0 if wait <= 0 else max(1, math.ceil(wait))

    def failed(self, address: str, name: str) -> None:
        now = self.clock()
        name = _account_key(name)
        with self._lock:
            self._pair.add((address, name), now)
            self._account.add(name, now)
            self._address.add(address, now)

    def succeeded(self, address: str, name: str) -> None:
        name = _account_key(name)
        with self._lock:
            self._pair.pop((address, name))
            self._account.pop(name)


def _account_key(name: str) -> str:
    return name.strip().lower()[:64]
