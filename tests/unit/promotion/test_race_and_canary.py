"""Two promotes racing on one name; a canary's split, window, --finish and compare-and-set rollback."""

from __future__ import annotations

import json
import multiprocessing as mp
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lorafleet.errors import RegistryError
from lorafleet.promotion import PromotionRefused, finish, promote, record_progress
from lorafleet.promotion import canary_state as cs
from lorafleet.promotion.decisions import journal
from lorafleet.promotion.rollback import rollback
from lorafleet.registry import Registry
from tests.unit.promotion.helpers import register


def _racer(root: str, version: str, barrier, results) -> None:  # noqa: ANN001 - mp primitives
    registry = Registry(Path(root))
    try:
        promote(registry, f"intents@{version}", "prod", who=f"p-{version}", force=True, reason="race",
                after_checks=barrier.wait)  # both have read the alias and checked before either writes
        results.put((version, "promoted"))
    except PromotionRefused as exc:
        results.put((version, f"refused: {exc.message}"))


def test_repro_two_promote_processes_race_one_wins(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path)
    register(registry, tmp_path)
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(str(registry.root), v, barrier, results)) for v in ("v1", "v2")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    outcome = dict(results.get(timeout=5) for _ in procs)
    winners = [v for v, o in outcome.items() if o == "promoted"]
    assert len(winners) == 1, outcome
    loser = ({"v1", "v2"} - set(winners)).pop()
    assert "another change to intents@prod won" in outcome[loser]
    assert registry.aliases("intents")["prod"] == winners[0]
    kinds = sorted(d.kind for d in journal(registry, "intents"))
    assert kinds == ["promoted", "refused"]  # both decisions recorded whole, one each
    assert [d["kind"] for d in registry.card("intents", winners[0]).decisions] == ["promoted"]
    assert [d["kind"] for d in registry.card("intents", loser).decisions] == ["refused"]
    json.loads((registry.root / "intents" / "aliases.json").read_text())  # never half-written


def canary_on(registry: Registry, tmp_path: Path, percent: float = 10.0) -> cs.CanaryState:
    register(registry, tmp_path)
    register(registry, tmp_path)
    promote(registry, "intents@v1", "prod", who="t", force=True, reason="setup")
    out = promote(registry, "intents@v2", "prod", who="t", canary=percent, force=True, reason="setup")
    assert out.canary is not None
    return out.canary


def test_canary_sets_the_weighted_alias_and_its_state(registry: Registry, tmp_path: Path) -> None:
    state = canary_on(registry, tmp_path, 25)
    assert registry.aliases("intents")["prod"] == {"v1": 0.75, "v2": 0.25}
    saved = cs.load(registry, "intents")["prod"]
    assert (saved.stable, saved.canary, saved.percent, saved.state) == ("v1", "v2", 25, "running")
    assert saved.id == registry.card("intents", "v2").decisions[-1]["id"] == state.id
    assert saved.window.min_samples == 50 and saved.thresholds.error_rate_excess == 0.05  # the default policy's
    assert [c.canary for c in cs.active_canaries(registry)] == ["v2"]


def test_canary_needs_a_stable_version(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path)
    with pytest.raises(RegistryError, match="a canary needs a stable version"):
        promote(registry, "intents@v1", "prod", who="t", canary=10, force=True, reason="x")


def test_finish_before_the_window_refuses_saying_what_is_left(registry: Registry, tmp_path: Path) -> None:
    state = canary_on(registry, tmp_path)
    record_progress(registry, "intents", "prod", state.id,
                    {"error_rate": {"canary": {"n": 12}, "stable": {"n": 300}}})
    with pytest.raises(PromotionRefused) as info:
        finish(registry, "intents@v2", "prod", who="t")
    assert "s of its 600 s window left" in info.value.message and "error_rate: 12 of 50 samples" in info.value.message
    assert registry.aliases("intents")["prod"] == {"v1": 0.9, "v2": 0.1}
    assert registry.card("intents", "v2").decisions[-1]["kind"] == "refused"


def test_finish_after_the_window_passed_moves_to_100(registry: Registry, tmp_path: Path) -> None:
    state = canary_on(registry, tmp_path)
    assert record_progress(registry, "intents", "prod", state.id, {"error_rate": {"canary": {"n": 60}}},
                           passed=True).state == "passed"
    out = finish(registry, "intents@v2", "prod", who="t")
    assert out.decision.kind == "finished" and registry.aliases("intents")["prod"] == "v2"
    assert cs.load(registry, "intents")["prod"].state == "finished"
    assert cs.active_canaries(registry) == []
    # the watcher's late rollback of a finished canary does nothing
    assert rollback(registry, "intents", "prod", canary_id=state.id, reason="late", evidence={}, who="g") is None
    assert registry.aliases("intents")["prod"] == "v2"


def test_rollback_is_compare_and_set(registry: Registry, tmp_path: Path) -> None:
    state = canary_on(registry, tmp_path)
    first = rollback(registry, "intents", "prod", canary_id=state.id, reason="error_rate breach",
                     evidence={"signal": "error_rate", "review": "unavailable"}, who="gateway:a")
    second = rollback(registry, "intents", "prod", canary_id=state.id, reason="error_rate breach",
                      evidence={}, who="gateway:b")
    assert first is not None and second is None
    assert registry.aliases("intents")["prod"] == "v1"
    d = registry.card("intents", "v2").decisions[-1]
    assert d["kind"] == "rolled_back" and d["who"] == "gateway:a" and d["evidence"]["review"] == "unavailable"
    assert cs.load(registry, "intents")["prod"].state == "rolled_back"
    with pytest.raises(PromotionRefused, match="the canary was rolled back by gateway:a"):
        finish(registry, "intents@v2", "prod", who="t")
    assert record_progress(registry, "intents", "prod", state.id, {}) is None


def test_rollback_of_a_hand_moved_alias_does_nothing(registry: Registry, tmp_path: Path) -> None:
    state = canary_on(registry, tmp_path)
    registry.set_alias("intents", "prod", "v2")  # someone moved it by hand
    assert rollback(registry, "intents", "prod", canary_id=state.id, reason="r", evidence={}, who="g") is None
    assert registry.aliases("intents")["prod"] == "v2"
    assert cs.load(registry, "intents")["prod"].state == "superseded"


def test_what_is_left_counts_time(registry: Registry, tmp_path: Path) -> None:
    from lorafleet.promotion import what_is_left

    state = canary_on(registry, tmp_path)
    later = datetime.now(UTC) + timedelta(seconds=700)
    assert "window left" not in what_is_left(state, later)


def test_refused_canary_writes_no_split_and_no_canary_record(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path)
    register(registry, tmp_path)
    promote(registry, "intents@v1", "prod", who="t", force=True, reason="setup")
    with pytest.raises(PromotionRefused):
        promote(registry, "intents@v2", "prod", who="t", canary=10)  # no eval run: refused
    assert registry.aliases("intents")["prod"] == "v1"
    assert cs.load(registry, "intents") == {}


def test_a_passed_canary_is_still_watched_until_finished(registry: Registry, tmp_path: Path) -> None:
    state = canary_on(registry, tmp_path)
    record_progress(registry, "intents", "prod", state.id, {}, passed=True)
    assert [c.state for c in cs.active_canaries(registry)] == ["passed"]
    assert rollback(registry, "intents", "prod", canary_id=state.id, reason="late breach", evidence={},
                    who="g") is not None
    assert registry.aliases("intents")["prod"] == "v1"
