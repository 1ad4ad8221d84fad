"""Eval runs land on the cards of the versions they measured, under the registry lock: concurrent
`eval run`s (separate processes) against one adapter all end up in its card."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo
from lorafleet.registry import Registry
from tests.unit.core.peft_files import write_fake_peft

WORKERS = 8


def run_results(run_id: str, served: str) -> Any:
    """A minimal scored run that measured `served`."""
    from lorafleet.evaluate.results import RunResults

    usage = {"samples": 1, "latency_mean_s": 0.1, "latency_p50_s": 0.1, "latency_p95_s": 0.1,
             "prompt_tokens": 1, "completion_tokens": 1, "cached": 0}
    return RunResults.model_validate({
        "run_id": run_id, "suite": "suite-x", "created_at": "2025-01-01T00:00:00Z", "endpoint": "http://x",
        "baseline": "base", "samples": 1, "confidence": 0.95, "resamples": 10, "seed": 0,
        "targets": {"intents@latest": {"model": "intents@latest", "served_models": [served],
                                       "metrics": {"exact_match": {"value": 0.5, "ci": [0.4, 0.6], "config": {}}},
                                       "usage": usage}},
    })


def link_one(root: str, run_id: str, barrier: Any) -> None:
    """One `eval run`'s card step, in its own process; the barrier lines all of them up."""
    from lorafleet.evaluate.card_link import link_run_to_cards

    registry = Registry(Path(root))
    results = run_results(run_id, "intents@v1")
    barrier.wait()
    link_run_to_cards(registry, results, Path(root) / "runs" / run_id)


def register_intents(registry: Registry, tmp_path: Path) -> None:
    card = AdapterCard(name="intents", version="v1", base=BaseModelRef(id="tiny"),
                       lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj", "v_proj"]))
    registry.register("intents", write_fake_peft(tmp_path / "peft"), card)


def test_repro_concurrent_eval_runs_all_recorded(registry: Registry, tmp_path: Path) -> None:
    register_intents(registry, tmp_path)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=link_one, args=(str(registry.root), f"run-{i}", barrier)) for i in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * WORKERS
    runs = registry.resolve("intents@v1").card.eval_runs
    assert sorted(r["run_id"] for r in runs) == sorted(f"run-{i}" for i in range(WORKERS))


def test_linking_a_run_twice_records_it_once(registry: Registry, tmp_path: Path) -> None:
    from lorafleet.evaluate.card_link import link_run_to_cards

    register_intents(registry, tmp_path)
    results = run_results("run-a", "intents@v1")
    assert link_run_to_cards(registry, results, tmp_path / "runs" / "a") == ["intents@v1"]
    assert link_run_to_cards(registry, results, tmp_path / "runs" / "a") == []
    assert link_run_to_cards(registry, run_results("run-b", "other@v1"), tmp_path / "b") == []  # not ours: skipped
    [entry] = registry.resolve("intents@v1").card.eval_runs
    assert entry["run_id"] == "run-a" and entry["metrics"] == {"exact_match": 0.5} and entry["passed"] is True
