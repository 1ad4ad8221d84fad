"""A stand-in review app over real HTTP (for CLIs that build their own client): the ingest API, the
grades export (`state.grades`) and the queue check, with the status codes of human_review's API (404
missing queue with the admin token, 401 bad token, 400 invalid)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ReviewState:
    token: str = "tok"
    queues: set[str] = field(default_factory=set)
    received: dict[str, list[str]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    grades: dict[str, list[dict]] = field(default_factory=dict)  # queue → rows of its grades export


@dataclass
class RunningReview:
    url: str
    state: ReviewState


def _error(status: int, message: str) -> tuple[int, dict]:
    return status, {"error": {"message": message, "type": "error", "param": None, "code": status}}


def _answer(state: ReviewState, method: str, path: str, auth: str, body: bytes) -> tuple[int, dict]:
    state.requests.append((method, path))
    if auth != f"Bearer {state.token}":
        return _error(401, "invalid token")
    if method == "GET" and path.startswith("/api/v1/queues/") and "/export" in path:
        name = path.removeprefix("/api/v1/queues/").split("/export")[0]
        if name not in state.queues:
            return _error(404, f"queue {name!r} not found")
        return 200, state.grades.get(name, [])  # a list: served as NDJSON, one row a line
    if method == "GET" and path.startswith("/api/v1/queues/"):
        name = path.removeprefix("/api/v1/queues/")
        return (200, {"name": name}) if name in state.queues else _error(404, f"queue {name!r} not found")
    if method == "POST" and path == "/api/v1/items":
        req = json.loads(body)
        if req["queue"] not in state.queues:
            return _error(404, f"queue {req['queue']!r} not found")
        state.received.setdefault(req["queue"], []).extend(i["id"] for i in req["items"])
        return 200, {"created": len(req["items"]), "existing": 0}
    return _error(404, "no such route")


@contextmanager
def review_server(state: ReviewState | None = None) -> Iterator[RunningReview]:
    """Serve on 127.0.0.1 on a free port in a thread until the block ends."""
    st = state or ReviewState()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, method: str) -> None:
            length = int(self.headers.get("content-length") or 0)
            status, obj = _answer(st, method, self.path, self.headers.get("authorization", ""),
                                  self.rfile.read(length))
            data = ("".join(json.dumps(r) + "\n" for r in obj) if isinstance(obj, list) else json.dumps(obj)).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._reply("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._reply("POST")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield RunningReview(f"http://127.0.0.1:{server.server_address[1]}", st)
    finally:
        server.shutdown()
        server.server_close()
