"""Where a canary lives: the weighted alias (traffic) plus <registry>/<name>/canaries.json (its window).

    aliases.json    {"prod": {"v2": 0.9, "v3": 0.1}}           which versions answer, sticky per user
    canaries.json   {"prod": CanaryState}                       stable/canary versions, window, thresholds, state

Both change only under the adapter's registry lock, so gateway replicas and the CLI agree on one truth: a
replica that did not decide sees the new alias on its next registry read.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lorafleet.errors import RegistryError
from lorafleet.fsutil import atomic_write_json
from lorafleet.registry import Registry

CANARIES_FILE = "canaries.json"
State = Literal["running", "passed", "rolled_back", "finished", "superseded"]
WATCHED = ("running", "passed")  # a passed canary still serves its split until --finish, so it is still watched
SIGNALS = ("error_rate", "probe_warnings", "invalid_rate", "review")


class CanaryWindow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_seconds: float = Field(default=600, ge=0, description="The canary runs at least this long before it may pass.")
    min_samples: int = Field(default=50, ge=1, description="Per signal and per version, before that signal decides.")
    required_signals: list[Literal["error_rate", "probe_warnings", "invalid_rate", "review"]] = Field(
        default_factory=lambda: ["error_rate"],
        description="Signals that must reach min_samples before the window can pass; others decide when they can.")


class CanaryThresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error_rate_excess: float = Field(default=0.05, ge=0, description="Breach: canary error rate − stable's > this.")
    invalid_rate_excess: float = Field(default=0.10, ge=0, description="Label tasks: INVALID share canary − stable.")
    probe_warnings: int = Field(default=0, ge=0, description="Breach: more probe warnings on the canary than this.")
    review_mean_drop: float = Field(default=0.5, ge=0, description="Breach: stable's mean grade − canary's > this "
                                    "on any criterion of the captured samples (both with min_samples grades).")


class CanaryState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The id of the `promoted` decision that started it (compare-and-set token).")
    name: str
    alias: str
    stable: str
    canary: str
    percent: float = Field(gt=0, lt=100)
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    state: State = "running"
    window: CanaryWindow = Field(default_factory=CanaryWindow)
    thresholds: CanaryThresholds = Field(default_factory=CanaryThresholds)
    passed_at: datetime | None = None
    signals: dict[str, dict[str, Any]] = Field(default_factory=dict, description="The watcher's last snapshot.")
    updated_at: datetime | None = None
    ended_at: datetime | None = None
    ended_by: str | None = None

    @property
    def split(self) -> dict[str, float]:
        """The weighted alias this canary set."""
        p = self.percent / 100
        return {self.stable: round(1 - p, 6), self.canary: round(p, 6)}

    def elapsed_s(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - self.started_at).total_seconds()


def load(registry: Registry, name: str) -> dict[str, CanaryState]:
    """alias → CanaryState for `name` ({} when it never had a canary)."""
    path = registry.root / name / CANARIES_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {alias: CanaryState.model_validate(v) for alias, v in raw.items()}
    except (ValueError, ValidationError) as exc:
        raise RegistryError(f"{path}: invalid canary state ({str(exc).splitlines()[0]})",
                            hint="fix or delete the file (the alias in aliases.json is what serves)") from None


def save(registry: Registry, name: str, states: dict[str, CanaryState]) -> None:
    """Write canaries.json atomically; callers hold the adapter's lock."""
    atomic_write_json(registry.root / name / CANARIES_FILE,
                      {alias: s.model_dump(mode="json") for alias, s in sorted(states.items())})


def active_canaries(registry: Registry) -> list[CanaryState]:
    """Every canary still being watched (running, or passed and not yet finished); unreadable files skipped."""
    out = []
    for name in registry.names():
        try:
            out.extend(s for s in load(registry, name).values() if s.state in WATCHED)
        except RegistryError:
            continue
    return out


def record_progress(registry: Registry, name: str, alias: str, canary_id: str, signals: dict[str, dict[str, Any]],
                    *, passed: bool = False) -> CanaryState | None:
    """The watcher's snapshot of each signal; `passed` marks the window done with no breach.

    None when that canary is no longer watched (rolled back, finished or replaced by someone else)."""
    with registry.lock(name):
        states = load(registry, name)
        state = states.get(alias)
        if state is None or state.id != canary_id or state.state not in WATCHED:
            return None
        now = datetime.now(UTC)
        update: dict[str, Any] = {"signals": signals, "updated_at": now}
        if passed and state.state == "running":
            update |= {"state": "passed", "passed_at": now}
        states[alias] = state.model_copy(update=update)
        save(registry, name, states)
        return states[alias]
