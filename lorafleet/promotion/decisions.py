"""Decision records: every promotion decision, on the version's card and in the adapter's journal.

    <registry>/<name>/decisions.jsonl   one Decision per line, append-only, written under the registry lock

The journal is what the gateway counts for `lorafleet_promotion_decisions_total`: a short-lived CLI's decision
is counted by whichever gateway reads the registry, and every replica reports the same number.
"""

from __future__ import annotations

import getpass
import json
import os
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lorafleet.registry import Registry

JOURNAL_FILE = "decisions.jsonl"
Kind = Literal["promoted", "refused", "rolled_back", "finished"]
KINDS: tuple[str, ...] = ("promoted", "refused", "rolled_back", "finished")


class Check(BaseModel):
    """One item of evidence the policy asked for, and what the card held."""

    model_config = ConfigDict(extra="forbid")

    item: str = Field(description="e.g. suite support-intents gates, paired gain vs prod, fidelity.")
    ok: bool
    detail: str
    evidence: list[str] = Field(default_factory=list, description="Run ids (or other ids) the check read.")


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    kind: Kind
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    who: str
    ref: str = Field(description="name@vN the decision is about.")
    alias: str
    percent: float | None = Field(default=None, description="Share of the alias on ref after the decision.")
    previous: str | dict[str, float] | None = Field(default=None, description="The alias target before.")
    forced: bool = False
    reason: str | None = None
    checks: list[Check] = Field(default_factory=list)
    evidence: dict[str, Any] = Field(default_factory=dict, description="eval_runs ids, review stats, fidelity, "
                                     "forgetting run id; for a rollback the signal snapshot that breached.")
    policy_sha256: str | None = None


def who_am_i(admin_key_name: str | None = None) -> str:
    """The admin key's name when one is used, else the OS user."""
    if admin_key_name:
        return f"key:{admin_key_name}"
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def record(registry: Registry, decision: Decision) -> Decision:
    """Append the decision to its version's card and to the journal, under the adapter's lock."""
    name = decision.ref.partition("@")[0]
    entry = decision.model_dump(mode="json")
    with registry.lock(name):
        registry.update_card_with(decision.ref, lambda card: {"decisions": [*card.decisions, entry]})
        path = registry.root / name / JOURNAL_FILE
        with open(path, "a", encoding="utf-8") as f:  # one short line per write, under the lock
            f.write(json.dumps(entry, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
    return decision


def journal(registry: Registry, name: str) -> list[Decision]:
    """Every decision about `name`, oldest first (a torn last line is skipped)."""
    path = registry.root / name / JOURNAL_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(Decision.model_validate_json(line))
        except ValueError:
            continue
    return out


def count_decisions(registry: Registry) -> dict[tuple[str, str], int]:
    """(adapter name, kind) → how many decisions the registry holds: the value of the decisions counter."""
    counts: dict[tuple[str, str], int] = {}
    for name in registry.names():
        path = registry.root / name / JOURNAL_FILE
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                kind = json.loads(line)["kind"]
            except (ValueError, KeyError, TypeError):
                continue
            counts[(name, kind)] = counts.get((name, kind), 0) + 1
    return counts
