"""Forgetting: the base's own greedy answers as references, generated once per base and suite, then reused.

    <refs_dir>/<key>.json   {"key", "base", "suite", "generation", "answers": {prompt sha256: {answer, at}}}

The key is the sha256 of the base's identity (the weights sha256 the lorafleet gateway lists in
/v1/models, else the model's id and root), the suite's name, system prompt and decoding parameters.
Answers are kept per prompt, so a subset (train's time-boxed run) and the whole suite share them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lorafleet.evaluate.client import EvalClient
from lorafleet.evaluate.dataset import Sample
from lorafleet.evaluate.suite import Suite
from pydantic import BaseModel, Field

from lorafleet.errors import ConfigError
from lorafleet.fsutil import atomic_write_json

REFERENCES_FILE = "forgetting-references.json"  # in the run folder: where this run's references came from


class ReferenceInfo(BaseModel):
    """Where a run's reference answers came from."""

    key: str
    base: str = Field(description="The base's identity the answers belong to.")
    path: str
    generated: int = Field(description="Prompts answered by the base in this run (the rest were reused).")
    reused: int
    generated_at: list[str] = Field(default_factory=list, description="When the reused/new answers were made.")

    @property
    def cached(self) -> bool:
        return self.generated == 0


def prompt_hash(sample: Sample) -> str:
    blob = json.dumps([m.model_dump() for m in sample.messages], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def reference_key(suite: Suite, base_identity: str) -> str:
    """One key per base weights and suite decoding: what the reference answers depend on."""
    blob = json.dumps([base_identity, suite.name, suite.system_prompt, suite.generation.params()], sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def read_references(path: Path) -> dict[str, dict[str, str]]:
    """prompt sha256 → {answer, at}; an unreadable file is an error naming it (never silently regenerated)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): {"answer": str(v["answer"]), "at": str(v.get("at", ""))} for k, v in data["answers"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: unreadable forgetting references ({exc.__class__.__name__})",
                          hint="delete the file: the base's answers are generated again on the next run") from None


async def attach_references(suite: Suite, samples: list[Sample], client: EvalClient, base_model: str,
                            refs_dir: Path, progress: Callable[[str, int, int], None] | None = None,
                            base_identity: str | None = None) -> tuple[list[Sample], ReferenceInfo]:
    """The samples with the base's greedy answer as their only reference: stored ones reused, missing ones
    generated now (the base alone, before the run's targets, so the run's own base answers measure noise).
    `base_identity` overrides what the endpoint lists (a raw vLLM reports a path, not the weights sha256)."""
    identity = base_identity or client.identity.get(base_model) or f"base {base_model}"
    key = reference_key(suite, identity)
    path = Path(refs_dir) / f"{key}.json"
    answers = read_references(path)
    missing = [s for s in samples if prompt_hash(s) not in answers]
    if missing:
        if progress:
            progress("base (reference answers)", 0, len(missing))
        done = 0

        def on_done(sid: str, _c: Any) -> None:
            nonlocal done
            done += 1
            if progress:
                progress("base (reference answers)", done, len(missing))

        made = await client.generate(base_model, missing, suite.generation.params(), on_done=on_done)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        fresh = {prompt_hash(s): {"answer": made[s.id].output, "at": now} for s in missing}
        # Re-read right before writing: a concurrent run's answers are kept (same base, same decoding).
        answers = {**read_references(path), **fresh}
        atomic_write_json(path, {"key": key, "base": identity, "suite": suite.name,
                                 "generation": suite.generation.params(), "answers": answers})
    attached = [s.model_copy(update={"references": [answers[prompt_hash(s)]["answer"]]}) for s in samples]
    stamps = sorted({answers[prompt_hash(s)]["at"] for s in samples})
    info = ReferenceInfo(key=key, base=identity, path=str(path), generated=len(missing),
                         reused=len(samples) - len(missing), generated_at=stamps)
    return attached, info
