"""Registries whose versions carry evidence: fake run folders (the files eval run writes) and card fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo
from lorafleet.registry import Registry
from tests.unit.core.peft_files import write_fake_peft

FIDELITY_OK = {"token_agreement": 1.0, "mean_abs_logprob_diff": 0.001, "max_abs_logprob_diff": 0.01,
               "passed": True, "forced": False, "prompts": 3, "tokens": 18, "engine_dtype": "float32",
               "engine": "started", "tolerance": {"min_agreement": 0.9, "max_mean_abs_diff": 0.05},
               "seconds": {"check": 2.0, "engine_start": 30.0}}
FORGETTING_OK = {"suite": "forgetting", "run_id": "forgetting-1", "metric": "rougeL", "max_drop": 0.05,
                 "passed": True, "samples": 60, "confidence": 0.95,
                 "agreement": {"rougeL": {"value": 0.9, "ci": [0.85, 0.95]},
                               "exact_match": {"value": 0.7, "ci": [0.6, 0.8]}},
                 "drop": {"rougeL": {"value": 0.01, "ci": [-0.01, 0.03]},
                          "exact_match": {"value": 0.0, "ci": [-0.1, 0.1]}},
                 "noise_floor": {"rougeL": {"value": 0.98, "ci": [0.97, 0.99]}}, "perplexity": None}


def register(registry: Registry, tmp: Path, name: str = "intents") -> str:
    """A new version with passing fidelity and forgetting and nothing else; returns its version."""
    card = AdapterCard(name=name, version="v1", base=BaseModelRef(id="base"),
                       lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj"]))
    resolved = registry.register(name, write_fake_peft(tmp / f"peft-{name}"), card)
    registry.update_card(resolved.served_name, forgetting=dict(FORGETTING_OK))
    # fidelity is set at registration (immutable afterwards): write it like the check does
    path = resolved.path / "card.json"
    data = json.loads(path.read_text())
    data["fidelity"] = dict(FIDELITY_OK)
    path.write_text(json.dumps(data))
    return resolved.version


def set_card_field(registry: Registry, ref: str, **fields: Any) -> None:
    """Overwrite any card field (immutable ones too), as a test fixture."""
    resolved = registry.resolve(ref)
    path = resolved.path / "card.json"
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


def write_run(root: Path, run_id: str, suite: str, scores: dict[str, list[float]], *,
              passed: dict[str, bool] | None = None, metric: str = "accuracy", samples: int | None = None) -> Path:
    """A run folder: target → per-sample scores of `metric` (sample i is the same prompt in every run)."""
    path = root / run_id
    path.mkdir(parents=True)
    n = samples or max(len(v) for v in scores.values())
    (path / "manifest.json").write_text(json.dumps({"run_id": run_id, "suite": {"name": suite, "metrics": [metric]},
                                                    "endpoint": "x", "created_at": "2026-01-01", "models": {}}))
    (path / "samples.jsonl").write_text("".join(
        json.dumps({"id": f"line{i}", "messages": [{"role": "user", "content": f"q{i}"}], "references": [f"a{i}"]})
        + "\n" for i in range(n)))
    (path / "scores.jsonl").write_text("".join(
        json.dumps({"target": t, "id": f"line{i}", "scores": {metric: s}}) + "\n"
        for t, values in scores.items() for i, s in enumerate(values)))
    gates = [{"gate": f"{metric} >= 0.9", "target": t, "passed": ok, "detail": "value 0.1000 >= 0.9" if not ok else ""}
             for t, ok in (passed or {}).items()]
    (path / "results.json").write_text(json.dumps({"gates": gates}))
    return path


def link_run(registry: Registry, ref: str, run: Path, target: str, *, passed: bool = True,
             created_at: str = "2026-01-01T00:00:00") -> None:
    """What evaluate's card link appends to eval_runs."""
    suite = json.loads((run / "manifest.json").read_text())["suite"]["name"]
    entry = {"run_id": run.name, "suite": suite, "target": target, "created_at": created_at, "path": str(run),
             "samples": 0, "passed": passed, "metrics": {}}
    registry.update_card_with(ref, lambda c: {"eval_runs": [*c.eval_runs, entry]})
