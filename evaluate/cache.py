"""Every response, on disk, keyed by (endpoint, model sent, what answered, messages, params): reruns resume,
and a changed base or a re-pointed model is a different key, never a stale answer."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any


def cache_key(endpoint: str, model: str, messages: list[dict[str, str]], params: dict[str, Any],
              identity: str = "") -> str:
    """`identity` names what answers for `model` (served version, base weights); see EvalClient.identity."""
    blob = json.dumps([endpoint.rstrip("/"), model, identity, messages, params], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """A SQLite table key → response JSON; each response is committed as soon as it arrives."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, body TEXT NOT NULL)")

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT body FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, body: dict[str, Any]) -> None:
        self._db.execute("INSERT OR REPLACE INTO responses (key, body) VALUES (?, ?)",
                         (key, json.dumps(body, ensure_ascii=False)))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        self._db.close()
