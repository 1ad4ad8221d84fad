"""`eval compare`: the same samples across two stored runs (e.g. adapter v3 vs v2), paired."""

from __future__ import annotations

from pathlib import Path

from lorafleet.evaluate.dataset import originals
from lorafleet.evaluate.results import Comparison
from lorafleet.evaluate.scoring import compare_metrics, gold_labels, score_target, with_labels
from lorafleet.evaluate.store import RunStore
from lorafleet.evaluate.suite import suite_from_dict

from lorafleet.errors import ConfigError


def _default_target(targets: list[str], baseline: str) -> str:
    others = [t for t in targets if t != baseline]
    return others[-1] if others else targets[0]


def compare_runs(run_a: Path, run_b: Path, *, target_a: str | None = None, target_b: str | None = None
                 ) -> tuple[str, str, int, list[Comparison]]:
    """Paired B − A on the samples both runs share; refuses when metric configurations differ."""
    sides = []
    for run, target in ((run_a, target_a), (run_b, target_b)):
        store = RunStore(run)
        suite = suite_from_dict(store.manifest().suite)
        target = target or _default_target(suite.targets, suite.baseline_target)
        outputs = store.outputs()
        if target not in outputs:
            raise ConfigError(f"{run}: no target {target!r}", hint=f"targets: {', '.join(outputs)}")
        sides.append((store, suite, target, outputs[target]))
    (sa, suite_a, ta, out_a), (sb, suite_b, tb, out_b) = sides
    if suite_a.metric_families() != suite_b.metric_families() or suite_a.extraction != suite_b.extraction:
        raise ConfigError("the runs use different metric configurations",
                          hint="rescore one run with the other's suite first (eval rescore RUN --suite …)")
    by_id_b = {s.id: s for s in sb.samples()}
    # Originals only: counterfactual variants are scored apart (bias), never as more samples.
    shared = [s for s in originals(sa.samples()) if s.id in by_id_b and s.id in out_a and s.id in out_b]
    if not shared:
        raise ConfigError("the runs share no samples", hint="compare runs of the same dataset")
    differing = [s.id for s in shared if s.messages != by_id_b[s.id].messages]
    if differing:
        raise ConfigError(f"sample {differing[0]!r} has different prompts in the two runs",
                          hint="compare runs made with the same dataset and system prompt")
    suite_a, suite_b = with_labels(suite_a, shared), with_labels(suite_b, shared)
    gold = gold_labels(suite_a, shared)
    score_a = score_target(suite_a, shared, out_a, ta, gold)
    score_b = score_target(suite_b, shared, out_b, tb, gold)
    for name, m in score_a.metrics.items():
        if name in score_b.metrics and m.config != score_b.metrics[name].config:
            raise ConfigError(f"metric {name} was computed differently ({m.config} vs {score_b.metrics[name].config})",
                              hint="use the same library versions and options on both runs")
    label_a = f"{sa.manifest().run_id}:{ta}"
    label_b = f"{sb.manifest().run_id}:{tb}"
    comps = compare_metrics(score_a.metrics, score_b.metrics, target=label_b, vs=label_a, suite=suite_a)
    return label_a, label_b, len(shared), comps
