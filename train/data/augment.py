"""Paraphrase user turns through any OpenAI-compatible endpoint (our own gateway included).

Every new record carries `provenance: {"augmented": true, "source": "file:line", "model", "endpoint"}`;
augmented records never go to val/test (`data split` makes them follow their source and drops those whose
source is val/test). This command refuses data it is told is val/test (`--role`, or records' `split:`)
and records that match the held-out index.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from lorafleet.errors import ConfigError, LorafleetError
from lorafleet.formats import LineRecord, metadata, read_records, record_to_json, to_chat
from lorafleet.fsutil import atomic_write_jsonl
from lorafleet.heldout import HeldOutIndex, heldout_text, refusal

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


def refuse_held_out(src: Path, lines: list[LineRecord], *, role: str | None, index: HeldOutIndex | None,
                    allow_held_out: bool, warn: Callable[[str], None] | None = None) -> None:
    """Refuse val/test data (told by --role or by records' `split:`) and records the held-out index holds."""
    if role in ("val", "test"):
        raise ConfigError(f"{src}: --role {role}: augmenting a {role} split",
                          hint="augment training data only; paraphrases of held-out prompts leak them")
    marked = [f"{line.path}:{line.line}" for line in lines if metadata(line.record).get("split") in ("val", "test")]
    if marked:
        shown = ", ".join(marked[:10]) + (f" and {len(marked) - 10} more" if len(marked) > 10 else "")
        raise ConfigError(f"{src}: {len(marked)} record(s) marked split val/test: {shown}",
                          hint="augment training records only (remove those or their split field)")
    if index is None:
        return
    matches = index.check((f"{line.path}:{line.line}", heldout_text(to_chat(line.record).messages))
                          for line in lines)
    if matches and not allow_held_out:
        raise refusal(matches, what="augmented training data")
    for m in matches:
        if warn is not None:
            warn(f"--allow-held-out: {m.line()}")


def augment_file(src: Path, dst: Path, *, endpoint: str, model: str, n: int = 1, api_key: str | None = None,
                 limit: int | None = None, transport: httpx.BaseTransport | None = None,
                 role: str | None = None, index: HeldOutIndex | None = None, allow_held_out: bool = False,
                 warn: Callable[[str], None] | None = None) -> int:
    """Write originals + n paraphrases per record (user turn replaced); returns how many were added.

    Refuses val/test input and, with `index`, records that match held-out examples (HeldOutError).
    """
    lines = list(read_records(Path(src)))
    refuse_held_out(Path(src), lines, role=role, index=index, allow_held_out=allow_held_out, warn=warn)
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
