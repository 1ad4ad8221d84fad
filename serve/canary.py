"""The canary watcher: the gateway sees the traffic, so it compares a canary version with the stable
one on a weighted alias and rolls the alias back when a signal breaches (issue 16 §3).

What a canary is lives in the registry (lorafleet.promotion.canary_state): `<name>/canaries.json`
holds, per alias, the stable and canary versions, the window (min samples per signal and version,
min seconds) and the thresholds, all from the promotion policy; aliases.json holds the traffic split.
The watcher reads the running canaries every second (counting starts at once) and every `interval`
seconds judges four signals, each only once both versions have the window's minimum count of it:

- error_rate: 5xx answers (vLLM's, and the gateway's 502/504 for upstream failures) per request;
- probe_warnings: the canary version's after-load probe warnings on its card (any gateway's);
- invalid_rate: label tasks only (a label pattern from an eval run on either card): the share of
  outputs that name no declared label, streamed or not;
- review: mean grades of captured samples (card.review.capture, written by the review app); reported
  `unavailable` while the review app cannot be reached, and never blocks the other signals.

A breach calls `lorafleet.promotion.rollback`, a compare-and-set under the registry lock: of several
gateways that see the same breach one wins (one decision on the card); the others get None and carry on.
Each gateway's next request reads the alias file again (weighted aliases are never cached by the
Router) and so routes to the stable version at once. Counts are per gateway process (its own traffic).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import httpx
from lorafleet.serve.drift import TEXT_CAP, LabelFormat, eval_baseline
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily

from lorafleet.card import AdapterCard
from lorafleet.errors import LorafleetError
from lorafleet.periodic import Periodic
from lorafleet.promotion import canary_state, decisions
from lorafleet.promotion.rollback import record_probe_warning, rollback
from lorafleet.registry import Registry

if TYPE_CHECKING:
    from lorafleet.serve.config import CanarySettings, ReviewSettings

log = logging.getLogger(__name__)

SIGNALS = ("error_rate", "probe_warnings", "invalid_rate", "review")
REVIEW_TIMEOUT = 3.0
REFRESH_S = 1.0  # seconds between reads of the running canaries (cheap: one small file per name)


@dataclass
class Tally:
    """What one gateway saw of one version since it started watching the canary."""

    requests: int = 0
    errors: int = 0
    labelled: int = 0
    invalid: int = 0


@dataclass
class Watched:
    """One running canary as the watcher knows it."""

    state: Any  # lorafleet.promotion.canary_state.CanaryState (with .name)
    label_format: LabelFormat | None
    tallies: dict[str, Tally] = field(default_factory=dict)  # version -> Tally
    labels_read_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Verdict:
    """One signal's judgement: ok | waiting (too few samples) | breach | unavailable | n/a."""

    status: str
    detail: dict[str, Any]

    def snapshot(self) -> dict[str, Any]:
        return {"status": self.status, **self.detail}


class CanaryMetrics:
    """The watcher's metrics, on the gateway's registry (names are a contract, as in serve/metrics.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rollbacks = Counter("lorafleet_canary_rollbacks_total",
                                 "Canary rollbacks this gateway made, by the signal that breached.",
                                 ["adapter", "signal"], registry=registry)
        self.samples = Gauge("lorafleet_canary_samples",
                             "Samples of a signal this gateway counted for a canary's version (stable or canary).",
                             ["adapter", "version", "signal"], registry=registry)
        self.rate = Gauge("lorafleet_canary_rate",
                          "Error or INVALID share of a canary's version as this gateway counted it.",
                          ["adapter", "version", "signal"], registry=registry)


class DecisionCollector:
    """lorafleet_promotion_decisions_total{adapter,kind} from the registry's decision journals (every
    decision, the CLI's too; every replica reports the same count: dashboards take max by adapter, kind)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        family = CounterMetricFamily("lorafleet_promotion_decisions", "Promotion decisions recorded in the "
                                     "registry, by adapter and kind.", labels=["adapter", "kind"])
        try:
            counts = decisions.count_decisions(self.registry)
        except (LorafleetError, OSError) as exc:
            log.warning("promotion decisions not counted: %s", exc)
            counts = {}
        for (name, kind), n in sorted(counts.items()):
            family.add_metric([name, kind], n)
        yield family


class CanaryWatcher:
    """Counts outcomes of canary versions (from the proxy) and rolls a breaching canary back."""

    def __init__(self, registry: Registry, metrics_registry: CollectorRegistry, *, interval: float = 10.0,
                 who: str | None = None, review_url: str | None = None, review_token: str | None = None,
                 review_queue: str = "capture", review_transport: httpx.BaseTransport | None = None,
                 probe_warnings: Counter | None = None) -> None:
        self.registry = registry
        self.probe_warnings = probe_warnings  # the gateway's lorafleet_probe_warnings_total (HotSet's probe)
        self.metrics_registry = metrics_registry
        self.metrics = CanaryMetrics(metrics_registry)
        metrics_registry.register(DecisionCollector(registry))
        self.interval = interval
        self.who = who or f"gateway:{socket.gethostname()}"
        self.review_url = review_url.rstrip("/") if review_url else None
        self.review_token = review_token
        self.review_queue = review_queue
        self.review_transport = review_transport
        self._watched: dict[tuple[str, str], Watched] = {}  # (name, alias) -> canary
        self._versions: dict[tuple[str, str], list[Watched]] = {}  # (name, version) -> canaries counting it
        self._probes_seen: dict[tuple[str, str], float] = {}
        self._rounds: Periodic | None = None
        self._judge_at = 0.0  # monotonic time of the next judging round

    @classmethod
    def from_settings(cls, registry: Registry, metrics_registry: CollectorRegistry, canary: CanarySettings,
                      review: ReviewSettings, *, who: str, review_transport: httpx.BaseTransport | None = None,
                      probe_warnings: Counter | None = None) -> CanaryWatcher | None:
        """The gateway's watcher from its canary and review groups; None when the watch is off."""
        if not canary.watch:
            return None
        return cls(registry, metrics_registry, interval=canary.interval, who=who, review_url=review.url,
                   review_token=review.secret(), review_queue=review.queue, review_transport=review_transport,
                   probe_warnings=probe_warnings)

    # ---- the request path: O(1) ------------------------------------------------------------
    def wants_text(self, adapter: str, version: str) -> bool:
        """Should the proxy collect this version's output text (a watched version of a label task)?"""
        return any(w.label_format is not None for w in self._versions.get((adapter, version), ()))

    def record(self, adapter: str, version: str, status: int, output: str | None) -> None:
        """One finished request of an adapter version; only versions of running canaries are counted."""
        for watched in self._versions.get((adapter, version), ()):
            tally = watched.tallies.setdefault(version, Tally())
            if status == 499:  # the client went away: says nothing about the version
                continue
            tally.requests += 1
            if status >= 500:
                tally.errors += 1
            elif status == 200 and output is not None and watched.label_format is not None:
                tally.labelled += 1
                tally.invalid += watched.label_format.invalid(output[:TEXT_CAP])

    # ---- the rounds ------------------------------------------------------------------------
    def start(self) -> None:
        self._rounds = Periodic(self._round, min(self.interval, REFRESH_S), what="canary watcher: a round", logger=log)
        self._rounds.start()

    async def stop(self) -> None:
        if self._rounds is not None:
            await self._rounds.stop()

    async def _round(self) -> None:
        if time.monotonic() >= self._judge_at:
            self._judge_at = time.monotonic() + self.interval
            await self.check()
        else:  # a new canary is counted from its first second, not from the next judging round
            await asyncio.to_thread(self._refresh)

    async def check(self) -> list[Any]:
        """One round: refresh the running canaries, judge each, roll back breaches; returns the decisions made."""
        await asyncio.to_thread(self._record_probe_warnings)
        await asyncio.to_thread(self._refresh)
        review_up = await asyncio.to_thread(self._review_available) if self._watched else None
        made = []
        for watched in list(self._watched.values()):
            verdicts = await asyncio.to_thread(self.judge, watched, review_up)
            decision = await asyncio.to_thread(self._act, watched, verdicts)
            if decision is not None:
                made.append(decision)
        return made

    def _refresh(self) -> None:
        running = {(s.name, s.alias): s for s in canary_state.active_canaries(self.registry)}
        for key in list(self._watched):
            if key not in running or running[key].id != self._watched[key].state.id:
                del self._watched[key]
        for key, state in running.items():
            watched = self._watched.get(key)
            if watched is None:
                self._watched[key] = Watched(state, self._label_format(state))
                log.info("canary watch: %s@%s %s (stable) vs %s (canary, %g%%)", state.name, state.alias,
                         state.stable, state.canary, state.percent)
            else:
                watched.state = state
                if time.monotonic() - watched.labels_read_at > 60:  # an eval run may have landed since
                    watched.label_format = self._label_format(state)
                    watched.labels_read_at = time.monotonic()
        versions: dict[tuple[str, str], list[Watched]] = {}
        for watched in self._watched.values():
            for version in (watched.state.stable, watched.state.canary):
                versions.setdefault((watched.state.name, version), []).append(watched)
        self._versions = versions  # swapped whole: the request path reads it without a lock

    def _label_format(self, state: Any) -> LabelFormat | None:
        """The label extraction of the canary's eval run, else the stable version's (same task), with the labels
        of both: a quick run of a new version may have seen only some of the labels its stable one answers."""
        found = []
        for version in (state.canary, state.stable):
            card = self._card(state.name, version)
            baseline = eval_baseline(card) if card is not None else None
            if baseline is not None and baseline.label_format is not None:
                found.append(baseline.label_format)
        if not found:
            return None
        first = found[0]
        labels = dict.fromkeys(label for f in found if f.pattern == first.pattern for label in f.labels)
        return replace(first, labels=tuple(labels))

    def _card(self, name: str, version: str) -> AdapterCard | None:
        try:
            return self.registry.card(name, version)
        except (LorafleetError, OSError):
            return None

    # ---- signals ---------------------------------------------------------------------------
    def judge(self, watched: Watched, review_up: bool | None) -> dict[str, Verdict]:
        """Every signal's verdict for one canary (also exported as gauges)."""
        state = watched.state
        stable = watched.tallies.get(state.stable, Tally())
        canary = watched.tallies.get(state.canary, Tally())
        need = int(state.window.min_samples)
        th = state.thresholds
        verdicts = {
            "error_rate": _rate_verdict(canary.errors, canary.requests, stable.errors, stable.requests, need,
                                        float(th.error_rate_excess)),
            "probe_warnings": self._probe_verdict(state, int(th.probe_warnings)),
            "invalid_rate": (_rate_verdict(canary.invalid, canary.labelled, stable.invalid, stable.labelled, need,
                                           float(th.invalid_rate_excess))
                             if watched.label_format is not None else
                             Verdict("n/a", {"why": "no label pattern on either version's eval runs"})),
            "review": self._review_verdict(state, need, float(th.review_mean_drop), review_up),
        }
        for version, tally in ((state.stable, stable), (state.canary, canary)):
            labels = (state.name, version)
            self.metrics.samples.labels(*labels, "error_rate").set(tally.requests)
            if tally.requests:
                self.metrics.rate.labels(*labels, "error_rate").set(tally.errors / tally.requests)
            if watched.label_format is not None:
                self.metrics.samples.labels(*labels, "invalid_rate").set(tally.labelled)
                if tally.labelled:
                    self.metrics.rate.labels(*labels, "invalid_rate").set(tally.invalid / tally.labelled)
        return verdicts

    def _probe_verdict(self, state: Any, allowed: int) -> Verdict:
        card = self._card(state.name, state.canary)
        warnings = (card.metrics.get("probe_warnings") or []) if card is not None else []
        detail = {"canary": {"warnings": len(warnings)}, "threshold": allowed}
        return Verdict("breach" if len(warnings) > allowed else "ok", detail)

    def _review_verdict(self, state: Any, need: int, drop: float, review_up: bool | None) -> Verdict:
        if not review_up:
            why = "no review app configured" if self.review_url is None else f"review app {self.review_url} unreachable"
            return Verdict("unavailable", {"why": why})
        per = {v: _capture_criteria(self._card(state.name, v)) for v in (state.stable, state.canary)}
        shared = [c for c in per[state.canary] if c in per[state.stable]]
        judged = [c for c in shared if min(per[state.canary][c]["n"], per[state.stable][c]["n"]) >= need]
        if not judged:  # the snapshot names the best-graded criterion: how far the window has come
            best = max(shared, key=lambda c: min(per[state.canary][c]["n"], per[state.stable][c]["n"]), default=None)
            return Verdict("waiting", {"criterion": best, "need": need, "threshold": drop,
                                       "canary": per[state.canary].get(best, {"n": 0}),
                                       "stable": per[state.stable].get(best, {"n": 0})})
        criterion = max(judged, key=lambda c: per[state.stable][c]["mean"] - per[state.canary][c]["mean"])
        gap = per[state.stable][criterion]["mean"] - per[state.canary][criterion]["mean"]
        detail = {"criterion": criterion, "canary": per[state.canary][criterion],
                  "stable": per[state.stable][criterion], "drop": round(gap, 4), "need": need, "threshold": drop}
        return Verdict("breach" if gap > drop else "ok", detail)

    def _review_available(self) -> bool:
        """Can the review app be reached now? (any answer below 500 counts: it is up)"""
        if self.review_url is None:
            return False
        headers = {"Authorization": f"Bearer {self.review_token}"} if self.review_token else {}
        try:
            with httpx.Client(base_url=self.review_url, timeout=REVIEW_TIMEOUT, transport=self.review_transport,
                              headers=headers) as client:
                return client.get(f"/api/v1/queues/{self.review_queue}/stats").status_code < 500
        except httpx.HTTPError:
            return False

    def _record_probe_warnings(self) -> None:
        """New after-load probe warnings of this gateway (its metric) go onto the version's card, once each."""
        if self.probe_warnings is None:
            return
        for family in self.probe_warnings.collect():
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                key = (sample.labels["adapter"], sample.labels["version"])
                if sample.value > self._probes_seen.get(key, 0):
                    self._probes_seen[key] = sample.value
                    with contextlib.suppress(LorafleetError, OSError):
                        record_probe_warning(self.registry, f"{key[0]}@{key[1]}",
                                                    "the adapter's greedy output equals the base's on the "
                                                    "after-load probe", who=self.who)

    # ---- acting ----------------------------------------------------------------------------
    def _act(self, watched: Watched, verdicts: dict[str, Verdict]) -> Any:
        state = watched.state
        snapshot = {name: v.snapshot() for name, v in verdicts.items()}
        breach = next((name for name in SIGNALS if verdicts[name].status == "breach"), None)
        if breach is None:
            passed = self._window_passed(state, verdicts)
            if canary_state.record_progress(self.registry, state.name, state.alias, state.id, snapshot,
                                            passed=passed) is None:
                self._watched.pop((state.name, state.alias), None)
            return None
        evidence = {"signal": breach, "gateway": self.who, "signals": snapshot}
        reason = f"{breach} breached: {_describe(breach, verdicts[breach])}"
        decision = rollback(self.registry, state.name, state.alias, canary_id=state.id, reason=reason,
                            evidence=evidence, who=self.who)
        self._watched.pop((state.name, state.alias), None)
        if decision is None:
            log.info("canary %s@%s: %s, but another gateway or the CLI already acted", state.name, state.alias,
                     reason)
            return None
        self.metrics.rollbacks.labels(state.name, breach).inc()
        log.warning("CANARY ROLLED BACK %s@%s: %s -> %s (%s; review: %s)", state.name, state.alias, state.canary,
                    state.stable, reason, verdicts["review"].status)
        return decision

    def _window_passed(self, state: Any, verdicts: dict[str, Verdict]) -> bool:
        if state.elapsed_s() < float(state.window.min_seconds):
            return False
        return all(verdicts[name].status == "ok" for name in state.window.required_signals if name in verdicts)

    def status(self) -> list[dict[str, Any]]:
        """The canaries this gateway watches and its counts (for /admin and tests)."""
        return [{"adapter": w.state.name, "alias": w.state.alias, "id": w.state.id, "stable": w.state.stable,
                 "canary": w.state.canary, "tallies": {v: vars(t) for v, t in w.tallies.items()}}
                for w in self._watched.values()]


def _rate_verdict(bad: int, n: int, stable_bad: int, stable_n: int, need: int, excess: float) -> Verdict:
    """Breach when both versions have `need` samples and the canary's share exceeds the stable's by `excess`."""
    detail: dict[str, Any] = {"canary": _share(bad, n), "stable": _share(stable_bad, stable_n), "need": need,
                              "threshold": excess}
    if n < need or stable_n < need:
        return Verdict("waiting", detail)
    return Verdict("breach" if bad / n - stable_bad / stable_n > excess else "ok", detail)


def _share(bad: int, n: int) -> dict[str, Any]:
    return {"n": n, "bad": bad, "rate": round(bad / n, 4) if n else None}


def _capture_criteria(card: AdapterCard | None) -> dict[str, dict[str, float]]:
    """{criterion: {n, mean}} of the card's captured-sample grades (card.review.capture, by the review app)."""
    if card is None:
        return {}
    capture = (card.review or {}).get("capture") or {}
    out = {}
    for criterion, c in (capture.get("criteria") or {}).items():
        if isinstance(c, dict) and isinstance(c.get("n"), int) and isinstance(c.get("mean"), int | float):
            out[str(criterion)] = {"n": c["n"], "mean": float(c["mean"])}
    return out


def _describe(signal: str, verdict: Verdict) -> str:
    d = verdict.detail
    if signal in ("error_rate", "invalid_rate"):
        return (f"canary {d['canary']['bad']}/{d['canary']['n']} vs stable {d['stable']['bad']}/{d['stable']['n']} "
                f"(excess over {d['threshold']})")
    if signal == "probe_warnings":
        return f"{d['canary']['warnings']} probe warning(s) on the canary version"
    return (f"{d['criterion']} mean {d['canary']['mean']:.2f} vs stable {d['stable']['mean']:.2f} "
            f"(drop over {d['threshold']})")

