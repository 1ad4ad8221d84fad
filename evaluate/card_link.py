"""Record an eval run on the cards of the adapter versions it measured (when this registry has them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorafleet.evaluate.forgetting_score import card_entry
from lorafleet.evaluate.results import RunResults
from lorafleet.evaluate.scoring import uses_labels, with_labels
from lorafleet.evaluate.store import RunStore
from lorafleet.evaluate.suite import suite_from_dict

from lorafleet.card import AdapterCard
from lorafleet.errors import LorafleetError, RegistryError
from lorafleet.registry import Registry


def link_run_to_cards(registry: Registry, results: RunResults, run_path: Path) -> list[str]:
    """Append a summary of the run to each served version's `eval_runs`; returns the refs linked.

    Versions the endpoint served but this registry does not hold (another deployment) are skipped.
    The append happens under the registry lock, so concurrent runs against one adapter all land.
    """
    linked = []
    baselines = output_baselines(Path(run_path))
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
                     "metrics": {m: s.value for m, s in result.metrics.items()},
                     **baselines.get(target, {})}
            if append_eval_run(registry, resolved.served_name, entry):
                linked.append(resolved.served_name)
            if (forgot := card_entry(results, target, entry["path"])) is not None:
                registry.update_card_with(resolved.served_name, lambda _card, f=forgot: {"forgetting": f})
    return linked


def output_baselines(run_path: Path) -> dict[str, dict[str, Any]]:
    """Per target, what the gateway's live drift compares against: output_tokens_mean and output_chars_mean
    over its outputs, and for label suites label_pattern, labels, label_case_sensitive and invalid_rate (the
    share of original samples whose output named no label). Empty when the run folder cannot be read."""
    store = RunStore(run_path)
    try:
        outputs = store.outputs()
        suite = suite_from_dict(store.manifest().suite)
        label_fields: dict[str, Any] = {}
        invalid: dict[str, list[bool]] = {}
        if uses_labels(suite):
            extraction = with_labels(suite, store.samples()).extraction
            label_fields = {"label_pattern": extraction.label_pattern, "labels": list(extraction.labels),
                            "label_case_sensitive": extraction.case_sensitive}
            for row in store.scores():
                if "label" in row and not row.get("counterfactual_of"):
                    invalid.setdefault(row["target"], []).append(row["label"] == extraction.invalid_label)
    except (LorafleetError, OSError, ValueError):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for target, rows in outputs.items():
        tokens = [c.completion_tokens for c in rows.values() if c.completion_tokens is not None]
        entry: dict[str, Any] = {"output_chars_mean": round(sum(len(c.output) for c in rows.values()) / len(rows), 2)
                                 if rows else None,
                                 "output_tokens_mean": round(sum(tokens) / len(tokens), 2) if tokens else None}
        if label_fields:
            flags = invalid.get(target, [])
            entry |= {**label_fields, "invalid_rate": round(sum(flags) / len(flags), 4) if flags else None}
        out[target] = entry
    return out


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
