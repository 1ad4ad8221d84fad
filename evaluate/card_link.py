"""Record an eval run on the cards of the adapter versions it measured (when this registry has them)."""

from __future__ import annotations

from pathlib import Path

from lorafleet.evaluate.results import RunResults

from lorafleet.errors import RegistryError
from lorafleet.registry import Registry


def link_run_to_cards(registry: Registry, results: RunResults, run_path: Path) -> list[str]:
    """Append a summary of the run to each served version's `eval_runs`; returns the refs linked.

    Versions the endpoint served but this registry does not hold (another deployment) are skipped.
    """
    linked = []
    for target, result in results.targets.items():
        for served in result.served_models:
            try:
                resolved = registry.resolve(served)
            except (RegistryError, ValueError):
                continue
            runs = list(resolved.card.eval_runs)
            if any(r.get("run_id") == results.run_id for r in runs):
                continue
            gates = [g for g in results.gates if g.target == target]
            runs.append({"run_id": results.run_id, "suite": results.suite, "target": target,
                         "created_at": results.created_at, "path": str(Path(run_path).resolve()),
                         "samples": results.samples, "passed": all(g.passed for g in gates),
                         "metrics": {m: s.value for m, s in result.metrics.items()}})
            registry.update_card(resolved.served_name, eval_runs=runs)
            linked.append(resolved.served_name)
    return linked
