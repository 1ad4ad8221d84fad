from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from lorafleet.samples import IngestRequest, ReviewClient, ReviewItem


class FakeReviewApp:
    """Records ingest calls; can be switched down to simulate an unreachable app."""

    def __init__(self) -> None:
        self.up = False
        self.received: dict[str, list[str]] = {}

    def handler(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("down", request=request)
        assert request.headers["authorization"] == "Bearer tok"
        body = IngestRequest.model_validate_json(request.content)
        ids = self.received.setdefault(body.queue, [])
        ids.extend(i.id for i in body.items)
        return httpx.Response(200, json={"created": len(body.items), "existing": 0})


def item(i: int) -> ReviewItem:
    return ReviewItem(id=f"s{i}", prompt="hi", response=f"r{i}", source="capture", adapter="a@v1")


def test_spools_while_down_and_sends_each_once_later(tmp_path: Path) -> None:
    app = FakeReviewApp()
    client = ReviewClient("http://review", "tok", tmp_path / "spool.jsonl",
                          transport=httpx.MockTransport(app.handler))
    assert client.push("q", [item(1), item(2)]).empty is False
    assert client.push("q", [item(3)]).held == 1
    assert client.pending() == 3
    app.up = True
    assert client.flush().sent_ids == ["s1", "s2", "s3"]
    assert client.flush().empty is True
    assert app.received == {"q": ["s1", "s2", "s3"]}
    assert client.pending() == 0


def test_item_needs_exactly_one_kind_of_response() -> None:
    with pytest.raises(ValidationError):
        ReviewItem(id="x", prompt="p")
    with pytest.raises(ValidationError):
        ReviewItem(id="x", prompt="p", response="a", responses={"a": "1", "b": "2"})
    pair = ReviewItem(id="x", prompt="p", responses={"base": "1", "adapter@v1": "2"})
    assert pair.prompt_messages()[0].role == "user"


class StrictReviewApp:
    """Answers like human_review's API: 404 for a queue that does not exist, 401 for a wrong token."""

    def __init__(self, queues: set[str], token: str = "tok") -> None:
        self.queues = queues
        self.token = token
        self.received: dict[str, list[str]] = {}
        self.posts: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] != f"Bearer {self.token}":
            return httpx.Response(401, json={"error": {"message": "invalid token"}})
        if request.method == "GET":
            name = request.url.path.rsplit("/", 1)[-1]
            return httpx.Response(200 if name in self.queues else 404,
                                  json={"name": name} if name in self.queues else {"error": {"message": "no queue"}})
        body = IngestRequest.model_validate_json(request.content)
        self.posts.append(body.queue)
        if body.queue not in self.queues:
            return httpx.Response(404, json={"error": {"message": f"queue {body.queue!r} not found"}})
        self.received.setdefault(body.queue, []).extend(i.id for i in body.items)
        return httpx.Response(200, json={"created": len(body.items), "existing": 0})


def strict_client(tmp_path: Path, app: StrictReviewApp, token: str = "tok") -> ReviewClient:
    return ReviewClient("http://review", token, tmp_path / "spool.jsonl", transport=httpx.MockTransport(app.handler))


def test_refused_batch_is_kept_and_other_queues_still_flow(tmp_path: Path, caplog) -> None:
    app = StrictReviewApp({"ok"})
    client = strict_client(tmp_path, app)
    client.push("missing", [item(i) for i in range(600)])  # two spool batches of one refused queue
    result = client.push("ok", [item(1000)])
    assert result.sent_ids == ["s1000"]  # not blocked behind the refused queue
    refusals = [(r.queue, r.reason, r.status, len(r.ids)) for r in result.refusals]
    assert refusals == [("missing", "queue_missing", 404, 600)]
    assert result.refusals[0].first == 0  # already counted by the first push
    assert app.posts == ["missing", "missing", "ok"]  # one request per refused queue and flush, not per batch
    assert client.pending() == 600 and result.pending == 600 and result.refused == 600
    assert "lorafleet review queues create missing" in caplog.text and str(client.spool) in caplog.text

    again = client.flush()
    assert again.sent == 0 and again.refusals[0].first == 0 and client.pending() == 600
    app.queues.add("missing")  # the operator creates the queue: everything kept goes out, in order
    done = client.flush()
    assert done.empty and done.sent == 600 and app.received["missing"] == [f"s{i}" for i in range(600)]


def test_first_refusal_counts_each_item_once(tmp_path: Path) -> None:
    client = strict_client(tmp_path, StrictReviewApp(set()))
    first = client.push("q", [item(1), item(2)])
    assert first.refusals[0].first == 2 and first.held == 2
    assert client.push("q", [item(3)]).refusals[0].first == 1  # s1, s2 refused again: not counted again


def test_rotated_token_is_unauthorized_and_names_the_fix(tmp_path: Path) -> None:
    client = strict_client(tmp_path, StrictReviewApp({"q"}), token="old")
    result = client.push("q", [item(1)])
    assert result.sent == 0 and result.refusals[0].reason == "unauthorized" and client.pending() == 1
    assert "rotate the token" in result.refusals[0].fix and "lorafleet review queues token q" in result.refusals[0].fix
    assert client.check_queue("q").refusal.reason == "unauthorized"


def test_invalid_batch_is_kept_and_the_next_batch_of_that_queue_is_tried(tmp_path: Path) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(422, json={"error": {"message": "items.0: bad"}})
        return httpx.Response(200, json={"created": 1, "existing": 0})

    client = ReviewClient("http://review", "tok", tmp_path / "spool.jsonl", transport=httpx.MockTransport(handler))
    client._append_spool("q", [item(i) for i in range(500)])
    result = client.push("q", [item(500)])  # a second batch of the same queue
    assert result.refusals[0].reason == "invalid" and result.refusals[0].message == "items.0: bad"
    assert result.sent_ids == ["s500"] and client.pending() == 500


def test_check_queue_says_which_is_wrong(tmp_path: Path) -> None:
    app = StrictReviewApp({"capture"})
    assert strict_client(tmp_path, app).check_queue("capture").ok
    missing = strict_client(tmp_path, app).check_queue("nope")
    assert not missing.ok and missing.refusal.reason == "queue_missing"
    down = ReviewClient("http://127.0.0.1:9", "tok", tmp_path / "s.jsonl", timeout=1).check_queue("capture")
    assert not down.ok and down.refusal is None and down.unreachable


def _spool_line(i: int, queue: str = "q") -> bytes:
    return (json.dumps({"queue": queue, "item": item(i).model_dump(mode="json")}) + "\n").encode()


def test_corrupt_middle_line_is_quarantined_and_the_rest_flows(tmp_path: Path, caplog) -> None:
    app = FakeReviewApp()
    app.up = True
    client = ReviewClient("http://review", "tok", tmp_path / "spool.jsonl", transport=httpx.MockTransport(app.handler))
    bad = [b'{"queue": "q", "item": {"id": "x"', b'{"queue": "q", "item": {"id": "y", "prompt": "p"}}',
           b"\xff\xfe not utf-8"]
    client.spool.write_bytes(_spool_line(1) + bad[0] + b"\n" + _spool_line(2) + bad[1] + b"\n" + bad[2] + b"\n"
                             + _spool_line(3))
    assert client.pending() == 3 and client.spool.read_bytes().count(b"\n") == 6  # counting changes nothing
    result = client.flush()
    assert result.quarantined == 3 and result.sent_ids == ["s1", "s2", "s3"] and result.empty
    assert client.quarantine.read_bytes() == b"\n".join(bad) + b"\n"
    assert client.spool.read_text() == ""
    assert "3 corrupt line(s)" in caplog.text and "line 2" in caplog.text
    assert client.flush().quarantined == 0  # moved once, not again


def test_torn_last_line_is_quarantined_and_a_later_append_is_not_swallowed(tmp_path: Path) -> None:
    app = FakeReviewApp()
    client = ReviewClient("http://review", "tok", tmp_path / "spool.jsonl", transport=httpx.MockTransport(app.handler))
    torn = _spool_line(2)[:25]  # the process was killed mid-write: no newline, half a record
    client.spool.write_bytes(_spool_line(1) + torn)
    down = client.push("q", [item(3)])  # app down: appended after the torn line, on a line of its own
    assert down.quarantined == 1 and down.pending == 2 and client.pending() == 2
    app.up = True
    result = client.flush()
    assert result.sent_ids == ["s1", "s3"] and result.empty
    assert client.quarantine.read_bytes() == torn + b"\n"
