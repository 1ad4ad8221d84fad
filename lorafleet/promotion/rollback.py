"""What the gateway's canary watcher calls: roll a canary back, record a probe warning (both under the lock)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from lorafleet.promotion import canary_state, decisions
from lorafleet.promotion.decisions import Decision
from lorafleet.registry import Registry


def rollback(registry: Registry, name: str, alias: str, *, canary_id: str, reason: str,
             evidence: dict[str, Any], who: str) -> Decision | None:
    """Put the alias back on the stable version (compare-and-set on the canary id); None if another acted first."""
    with registry.lock(name):
        states = canary_state.load(registry, name)
        state = states.get(alias)
        if state is None or state.id != canary_id or state.state not in canary_state.WATCHED:
            return None
        now = registry.aliases(name).get(alias)
        if not isinstance(now, dict) or state.canary not in now:
            states[alias] = state.model_copy(update={"state": "superseded", "ended_at": datetime.now(UTC),
                                                     "ended_by": who})
            canary_state.save(registry, name, states)
            return None
        decision = Decision(kind="rolled_back", who=who, ref=f"{name}@{state.canary}", alias=alias, percent=0.0,
                            previous=now, reason=reason, evidence={"canary": state.id, **evidence})
        states[alias] = state.model_copy(update={"state": "rolled_back", "ended_at": decision.at, "ended_by": who})
        canary_state.save(registry, name, states)
        registry.set_alias(name, alias, state.stable)
        decisions.record(registry, decision)
    return decision


def record_probe_warning(registry: Registry, served_name: str, detail: str, *, who: str) -> None:
    """A gateway's after-load probe found the version answering like the base: evidence against promoting it."""
    entry = {"at": datetime.now(UTC).isoformat(), "who": who, "detail": detail}
    registry.update_card_with(served_name, lambda card: {
        "metrics": {**card.metrics, "probe_warnings": [*(card.metrics.get("probe_warnings") or []), entry][-20:]}})
