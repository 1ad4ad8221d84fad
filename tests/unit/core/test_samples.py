from __future__ import annotations

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
    assert client.push("q", [item(1), item(2)]) is False
    assert client.push("q", [item(3)]) is False
    assert client.pending() == 3
    app.up = True
    assert client.flush() is True
    assert client.flush() is True
    assert app.received == {"q": ["s1", "s2", "s3"]}
    assert client.pending() == 0


def test_item_needs_exactly_one_kind_of_response() -> None:
    with pytest.raises(ValidationError):
        ReviewItem(id="x", prompt="p")
    with pytest.raises(ValidationError):
        ReviewItem(id="x", prompt="p", response="a", responses={"a": "1", "b": "2"})
    pair = ReviewItem(id="x", prompt="p", responses={"base": "1", "adapter@v1": "2"})
    assert pair.prompt_messages()[0].role == "user"
