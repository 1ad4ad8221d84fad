"""Record an eval run on the cards of the adapter versions it measured (when this registry has them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorafleet.evaluate.results import RunResults

from lorafleet.card import AdapterCard
from lorafleet.errors import RegistryError
from lorafleet.registry import Registry


def link_run_to_cards(registry: Registry, results: RunResults, run_path: Path) -> list[str]:
    """Append a summary of the run to each served version's `eval_runs`; returns the refs linked.

    Versions the endpoint served but this registry does not hold (another deployment) are skipped.
    The append happens under the registry lock, so concurrent runs against one adapter all land.
    """
    linked = []
    for target, result in results.targets.items():
        for served in result.served_models:
            try:
                resolved = registry.resolve(served)
            except (RegistryError, ValueError):
                continue
            gates = [g for g in results.gates if g.target == target]
            entry = {"run_id": results.run_id, "suite": results.suite, "target": target,
                     "created_at": results.created_at, "path": str(Path(run_path).resolve()),
                     "samples": results.samples, "passed": all(g.passed for g in gates),
                     "metrics": {m: s.value for m, s in result.metrics.items()}}
            if append_eval_run(registry, resolved.served_name, entry):
                linked.append(resolved.served_name)
    return linked


def append_eval_run(registry: Registry, ref: str, entry: dict[str, Any]) -> bool:
    """Add `entry` to the card's eval_runs unless a run with its run_id is there; True when added."""
    added = False

    def append(card: AdapterCard) -> dict[str, Any]:
        nonlocal added
        # De-duplicated inside the lock: the card read here is the one that gets written.
        if any(r.get("run_id") == entry["run_id"] for r in card.eval_runs):
            return {}
        added = True
        return {"eval_runs": [*card.eval_runs, entry]}

    registry.update_card_with(ref, append)
    return added
