"""Size caps on review items (issue 17): every text capped, live traffic clipped instead of refused, and the
client's POSTs kept under the review app's body limit."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from lorafleet import samples
from lorafleet.samples import MAX_PROMPT_MESSAGES, MAX_TEXT_CHARS, IngestRequest, ReviewClient, ReviewItem


@pytest.mark.parametrize("fields", [
    {"prompt": "p" * (MAX_TEXT_CHARS + 1), "response": "r"},
    {"prompt": "p", "response": "r" * (MAX_TEXT_CHARS + 1)},
    {"prompt": "p", "response": "r", "reference": "x" * (MAX_TEXT_CHARS + 1)},
    {"prompt": "p", "responses": {"a": "x" * (MAX_TEXT_CHARS + 1), "b": "y"}},
    {"prompt": [{"role": "user", "content": "c" * (MAX_TEXT_CHARS // 2 + 1)}] * 2, "response": "r"},
    {"prompt": [{"role": "user", "content": "c"}] * (MAX_PROMPT_MESSAGES + 1), "response": "r"},
    {"prompt": "p", "response": "r", "metadata": {"blob": "m" * (MAX_TEXT_CHARS + 1)}},
])
def test_every_text_of_an_item_is_capped(fields: dict) -> None:
    with pytest.raises(ValidationError):
        ReviewItem(id="x", **fields)


def test_live_traffic_is_clipped_to_the_caps_and_says_so() -> None:
    long_chat = [{"role": "user", "content": "u" * 70_000}, {"role": "assistant", "content": "a" * 70_000}]
    item = ReviewItem.clipped(id="c", prompt=long_chat, response="r" * (MAX_TEXT_CHARS + 5), metadata={"k": 1})
    assert sum(len(m.content) for m in item.prompt) == MAX_TEXT_CHARS and len(item.response) == MAX_TEXT_CHARS
    assert item.metadata == {"k": 1, "clipped": True}
    small = ReviewItem.clipped(id="s", prompt="hi", response="yo")
    assert small.metadata == {} and small.prompt == "hi"


def test_the_client_splits_batches_by_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(samples, "MAX_BATCH_BYTES", 20_000)
    posts: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posts.append(len(request.content))
        n = len(IngestRequest.model_validate_json(request.content).items)
        return httpx.Response(200, json={"created": n, "existing": 0})

    client = ReviewClient("http://review", "tok", tmp_path / "spool.jsonl", transport=httpx.MockTransport(handler))
    batch = [ReviewItem(id=f"i{i}", prompt="p", response="r" * 5_000) for i in range(10)]
    result = client.push("q", batch)
    assert result.sent == 10 and len(posts) >= 3 and max(posts) <= 20_000
