"""Promote, finish, roll back: each reads evidence or canary state, then changes the alias under the lock.

Every step that moves traffic is a compare-and-set: the alias (and canary state) read before the checks must
still be there when the lock is held, so two promotes or two gateway replicas racing on one name cannot both act.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from lorafleet.errors import InvalidNameError, LorafleetError, NotFoundError, RegistryError
from lorafleet.promotion import canary_state, decisions
from lorafleet.promotion.canary_state import CanaryState
from lorafleet.promotion.decisions import Check, Decision
from lorafleet.promotion.evidence import gather
from lorafleet.promotion.policy import LoadedPolicy, load_policy
from lorafleet.refs import parse_ref, validate_alias
from lorafleet.registry import AliasTarget, Registry, ResolvedAdapter


class PromotionRefused(LorafleetError):
    """The policy's evidence is missing or failed, or someone else moved the alias first: exit 1."""

    exit_code = 1

    def __init__(self, message: str, *, decision: Decision | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.decision = decision


@dataclass
class Outcome:
    decision: Decision
    policy: LoadedPolicy | None = None
    checks: list[Check] = field(default_factory=list)
    canary: CanaryState | None = None


def resolve_exact(registry: Registry, ref: str) -> ResolvedAdapter:
    """The exact version a promote is about; a weighted alias is refused (which of its versions?)."""
    parsed = parse_ref(ref)
    if parsed.selector is None:
        raise InvalidNameError(f"{ref!r} names no version", hint=f"give {parsed.name}@vN or {parsed.name}@latest")
    if not parsed.is_version and isinstance(registry.aliases(parsed.name).get(parsed.alias), dict):
        raise InvalidNameError(f"{ref} is a weighted alias", hint=f"give the version: {parsed.name}@vN")
    return registry.resolve(parsed)


def current_target(registry: Registry, name: str, alias: str) -> AliasTarget | None:
    """What the alias names now; an alias naming a missing version is bad input (exit 2)."""
    target = registry.aliases(name).get(alias)
    if target is None:
        return None
    versions = set(registry.versions(name))
    for v in [target] if isinstance(target, str) else list(target):
        if v not in versions:
            raise NotFoundError(f"{name}@{alias} names {v}, which does not exist",
                                hint=f"repair it: lorafleet adapters alias {name} {alias} VERSION")
    return target


def promote(registry: Registry, ref: str, alias: str, *, who: str, canary: float | None = None,
            force: bool = False, reason: str | None = None,
            after_checks: Callable[[], None] | None = None) -> Outcome:
    """Check the policy against the version's evidence and move `alias` to it (or to a canary split).

    Refused (missing/failed evidence, or the alias changed meanwhile): a `refused` decision is recorded, the
    alias is untouched and PromotionRefused is raised. `after_checks` is a test hook run between the checks
    and the locked write (to make races deterministic)."""
    validate_alias(alias)
    if alias == "latest":
        raise InvalidNameError("'latest' is managed by the registry", hint="promote to prod, staging, …")
    if force and not (reason and reason.strip()):
        raise RegistryError("--force needs --reason TEXT", hint="say why the evidence is overridden; it is recorded")
    if canary is not None and not 0 < canary < 100:
        raise RegistryError(f"--canary {canary:g} is not a share", hint="give a percent in (0, 100), e.g. 10")
    candidate = resolve_exact(registry, ref)
    name = candidate.name
    previous = current_target(registry, name, alias)
    stable = _stable_for_canary(previous, candidate.version, name, alias) if canary is not None else None
    loaded = load_policy(registry, name)
    checks, evidence = gather(registry, candidate, previous, loaded.policy)
    failed = [c for c in checks if not c.ok]
    base = {"who": who, "ref": candidate.served_name, "alias": alias, "previous": previous, "checks": checks,
            "evidence": evidence, "policy_sha256": loaded.sha256}
    if failed and not force:
        decision = decisions.record(registry, Decision(kind="refused", reason=f"{len(failed)} check(s) failed",
                                                       **base))
        raise PromotionRefused(f"{candidate.served_name} → {alias} refused: {len(failed)} of {len(checks)} "
                               f"check(s) failed", decision=decision,
                               hint="give the missing evidence, or --force --reason TEXT")
    if after_checks is not None:
        after_checks()
    with registry.lock(name):
        now = registry.aliases(name).get(alias)
        if now != previous:
            decision = decisions.record(registry, Decision(
                kind="refused", reason=f"{name}@{alias} changed while the evidence was read ({previous} → {now})",
                **base))
            raise PromotionRefused(f"{candidate.served_name} → {alias} refused: another change to "
                                   f"{name}@{alias} won ({previous} → {now})", decision=decision,
                                   hint="check `lorafleet adapters show` and promote again if still wanted")
        decision = Decision(kind="promoted", forced=bool(failed and force), reason=reason,
                            percent=canary if canary is not None else 100.0, **base)
        state = None
        states = canary_state.load(registry, name)
        old = states.get(alias)
        if old is not None and old.state in canary_state.WATCHED:  # a new promote replaces a canary in flight
            states[alias] = old.model_copy(update={"state": "superseded", "ended_at": datetime.now(UTC),
                                                   "ended_by": who})
        if canary is not None:
            assert stable is not None
            rule = loaded.policy.canary
            state = CanaryState(id=decision.id, name=name, alias=alias, stable=stable, canary=candidate.version,
                                percent=canary, window=rule.window(), thresholds=rule.thresholds,
                                started_at=decision.at)
            states[alias] = state
        if states:
            canary_state.save(registry, name, states)
        registry.set_alias(name, alias, state.split if state else candidate.version)
        decisions.record(registry, decision)
    return Outcome(decision, loaded, checks, state)


def _stable_for_canary(previous: AliasTarget | None, version: str, name: str, alias: str) -> str:
    """The version a canary is measured against: what the alias serves now."""
    if previous is None:
        raise RegistryError(f"{name}@{alias} does not exist yet: a canary needs a stable version to compare with",
                            hint=f"promote without --canary first (lorafleet adapters promote {name}@{version} "
                                 f"--to {alias})")
    if isinstance(previous, dict):
        raise RegistryError(f"{name}@{alias} is already split {previous}",
                            hint=f"finish or roll back that canary first (adapters promote ... --to {alias} --finish)")
    if previous == version:
        raise RegistryError(f"{name}@{alias} already serves {version}", hint="nothing to canary")
    return previous


def finish(registry: Registry, ref: str, alias: str, *, who: str) -> Outcome:
    """Move a canary that passed its window to 100%; before that refuse, saying what is left."""
    candidate = resolve_exact(registry, ref)
    name = candidate.name
    with registry.lock(name):
        state = canary_state.load(registry, name).get(alias)
        if state is None or state.canary != candidate.version:
            raise RegistryError(f"no canary of {candidate.served_name} on {name}@{alias}",
                                hint=f"start one: lorafleet adapters promote {candidate.served_name} --to {alias} "
                                     "--canary 10")
        base = {"who": who, "ref": candidate.served_name, "alias": alias,
                "previous": registry.aliases(name).get(alias), "evidence": {"canary": state.id,
                                                                            "signals": state.signals}}
        if state.state != "passed":
            left = what_is_left(state)
            decision = decisions.record(registry, Decision(kind="refused", reason=f"--finish: {left}", **base))
            raise PromotionRefused(f"{candidate.served_name} on {alias} cannot finish: {left}", decision=decision,
                                   hint="wait for the gateway's canary window" if state.state == "running" else None)
        now = registry.aliases(name).get(alias)
        if now != state.split:
            raise PromotionRefused(f"{name}@{alias} is {now}, not the canary split {state.split}",
                                   hint="someone changed the alias by hand; promote again")
        decision = Decision(kind="finished", percent=100.0, **base)
        states = canary_state.load(registry, name)
        states[alias] = state.model_copy(update={"state": "finished", "ended_at": decision.at, "ended_by": who})
        canary_state.save(registry, name, states)
        registry.set_alias(name, alias, candidate.version)
        decisions.record(registry, decision)
    return Outcome(decision, canary=states[alias])


def what_is_left(state: CanaryState, now: datetime | None = None) -> str:
    """Why a canary has not passed: its state, time left, samples short per required signal."""
    if state.state != "running":
        return f"the canary was {state.state.replace('_', ' ')}" + (f" by {state.ended_by}" if state.ended_by else "")
    parts = []
    left = state.window.min_seconds - state.elapsed_s(now)
    if left > 0:
        parts.append(f"{left:.0f} s of its {state.window.min_seconds:.0f} s window left")
    for signal in state.window.required_signals:
        snap = state.signals.get(signal) or {}
        n = min(int((snap.get("canary") or {}).get("n", 0)), int((snap.get("stable") or {}).get("n", 0)))
        if n < state.window.min_samples:
            parts.append(f"{signal}: {n} of {state.window.min_samples} samples")
    return "; ".join(parts) or "waiting for the gateway to mark the window passed"
