"""Paraphrase user turns through any OpenAI-compatible endpoint (our own gateway included).

Every new record carries `provenance: {"augmented": true, "source": "file:line", "model", "endpoint"}`;
augmented records never go to val/test (`data split` keeps them in train; this command refuses
val/test files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from lorafleet.train.data.checks import split_of

from lorafleet.errors import ConfigError, LorafleetError
from lorafleet.formats import read_records, record_to_json, to_chat
from lorafleet.fsutil import atomic_write_jsonl

PROMPT = ("Rewrite the following customer message with different wording but the same meaning and facts. "
          "Reply with the rewritten message only.\n\n{text}")


class AugmentError(LorafleetError):
    """The endpoint failed or answered nonsense."""


def is_augmented(raw: dict[str, Any]) -> bool:
    prov = raw.get("provenance")
    return isinstance(prov, dict) and bool(prov.get("augmented"))


def paraphrase(client: httpx.Client, endpoint: str, model: str, text: str, seed: int) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT.format(text=text)}],
            "temperature": 0.8, "max_tokens": 128, "seed": seed}
    url = endpoint.rstrip("/") + "/chat/completions"
    try:
        resp = client.post(url, json=body)
    except httpx.HTTPError as exc:
        raise AugmentError(f"--endpoint {endpoint}: {exc.__class__.__name__}", hint="is the server running?") from None
    if resp.status_code != 200:
        raise AugmentError(f"--endpoint {endpoint}: HTTP {resp.status_code} for model {model!r}",
                           hint="check --model and --api-key")
    try:
        content = resp.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise AugmentError(f"--endpoint {endpoint}: not an OpenAI chat completion", hint="check the URL") from None
    return str(content or "").strip()


def augment_file(src: Path, dst: Path, *, endpoint: str, model: str, n: int = 1, api_key: str | None = None,
                 limit: int | None = None, transport: httpx.BaseTransport | None = None) -> int:
    """Write originals + n paraphrases per record (user turn replaced); returns how many were added."""
    if split_of(str(src)) in ("val", "test"):
        raise ConfigError(f"{src}: augmenting a {split_of(str(src))} split", hint="augment training data only")
    lines = list(read_records(Path(src)))
    rows: list[dict[str, Any]] = [line.raw for line in lines]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    added = 0
    with httpx.Client(headers=headers, timeout=60, transport=transport) as client:
        for line in lines[:limit]:
            chat = to_chat(line.record)
            user_idx = max(i for i, m in enumerate(chat.messages) if m.role == "user")
            for k in range(n):
                text = paraphrase(client, endpoint, model, chat.messages[user_idx].content, seed=k)
                if not text or text == chat.messages[user_idx].content:
                    continue
                new = json.loads(json.dumps(record_to_json(chat)))
                new["messages"][user_idx]["content"] = text
                new["provenance"] = {"augmented": True, "source": f"{line.path}:{line.line}", "model": model,
                                     "endpoint": endpoint, "n": k}
                rows.append(new)
                added += 1
    atomic_write_jsonl(dst, rows)
    return added
