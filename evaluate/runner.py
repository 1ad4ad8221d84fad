"""The suite runner: generate every target of a suite, score, gate and write the run folder; rescore stored runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lorafleet.evaluate.baselines import best_baselines, plan_baselines
from lorafleet.evaluate.cache import ResponseCache
from lorafleet.evaluate.client import Completion, EndpointError, EvalClient
from lorafleet.evaluate.dataset import Sample, dataset_path, load_samples, originals, variants
from lorafleet.evaluate.forgetting import REFERENCES_FILE, attach_references
from lorafleet.evaluate.forgetting_score import forgetting_gates, forgetting_warnings, summarize
from lorafleet.evaluate.judge import judge_endpoint, judge_outputs
from lorafleet.evaluate.judge_scoring import (
    HumanGrades,
    judge_grades,
    judge_into,
    judge_score_rows,
    without_judge_gates,
)
from lorafleet.evaluate.report import render_html, render_markdown
from lorafleet.evaluate.results import RunResults
from lorafleet.evaluate.scoring import TargetScores, score_run, with_labels
from lorafleet.evaluate.store import Manifest, RunStore, new_run_id
from lorafleet.evaluate.suite import BASE, Suite, suite_from_dict
from lorafleet.evaluate.targets import (
    PlannedTarget,
    RequestShape,
    RunPlan,
    effective_suite,
    expand_aliases,
    legacy_plan,
)

from lorafleet.errors import ConfigError
from lorafleet.heldout import HeldOutIndex
from lorafleet.registry import Registry

Progress = Callable[[str, int, int], None]  # (target, done, total)


@dataclass
class RunOptions:
    endpoint: str
    api_key: str | None = None
    concurrency: int = 8
    out: Path | None = None
    cache_path: Path | None = None  # None: no cache (--no-cache)
    max_retries: int = 4
    backoff_s: float = 0.5
    timeout_s: float = 120.0
    data_dir: Path | None = None  # the held-out guard's home: the suite's dataset is held out there, k-shot
    # baselines' examples are checked against it (None: no guard, e.g. library use without a data dir)
    grades: Path | None = None  # a grades export the judge is compared with (else the suite's judge.grades)
    references_dir: Path | None = None  # a forgetting suite's base answers (None: beside runs_dir, "forgetting")
    base_identity: str | None = None  # keys those answers, e.g. "base sha256:<hex>" (None: as /v1/models says)


@dataclass
class RunOutcome:
    path: Path
    results: RunResults

    @property
    def exit_code(self) -> int:
        return 0 if self.results.passed else 1


async def plan_run(suite: Suite, client: EvalClient, baselines: list[PlannedTarget]) -> RunPlan:
    """Every target to generate and the name each sends as `model`: `base` resolved, aliases pinned to
    their version, a weighted alias expanded into one target per version, baselines on the base."""
    try:
        listed = await client.list_models()
    except EndpointError:
        listed = []  # resolve_targets says what is wrong if the listing is needed
    planned = expand_aliases(suite.targets, listed)
    refs = [t.name for t in planned] + ([BASE] if baselines and BASE not in suite.targets else [])
    models = await client.resolve_targets(refs, base=BASE, base_model=suite.base_model)
    planned = [t.model_copy(update={"model": models[t.name]}) for t in planned]
    return RunPlan(targets=planned + [b.model_copy(update={"model": models[BASE]}) for b in baselines])


def run_plan(manifest: Manifest) -> RunPlan:
    return manifest.plan or legacy_plan(manifest.models)


async def generate_all(suite: Suite, samples: list[Sample], client: EvalClient, models: dict[str, str],
                       outputs: dict[str, dict[str, Completion]], progress: Progress | None,
                       shapes: dict[str, RequestShape] | None = None) -> None:
    """Generate every target into `outputs` (filled as answers arrive, so a failure keeps them)."""
    for target in suite.targets:
        outputs.setdefault(target, {})
        if progress:
            progress(target, 0, len(samples))

    def on_done(target: str, sid: str, c: Completion) -> None:
        outputs[target][sid] = c
        if progress:
            progress(target, len(outputs[target]), len(samples))

    await client.generate_targets({t: models[t] for t in suite.targets}, samples, suite.generation.params(),
                                  on_done=on_done, shapes=shapes)
    if "perplexity" in suite.metric_families():
        await client.add_reference_logprobs({t: models[t] for t in suite.targets}, samples, outputs, shapes=shapes)


def run_suite(suite: Suite, suite_path: Path, opts: RunOptions, *, runs_dir: Path, registry: Registry | None = None,
              progress: Progress | None = None) -> RunOutcome:
    """Generate for every target, score, compare, gate and write the run folder."""
    data_file = dataset_path(suite, suite_path, registry)
    samples = load_samples(suite, data_file)
    heldout = HeldOutIndex(opts.data_dir) if opts.data_dir is not None else None
    notes: list[str] = []
    if heldout is not None:
        # From this run on the suite's dataset is held out: train, data split/augment and review export refuse it.
        heldout.add_file(data_file, "eval", label=f"suite {suite.name}")
        notes += [heldout.note] if heldout.note else []
    # Baselines first: a held-out k-shot example is refused before anything is written or sent.
    baselines = plan_baselines(with_labels(suite, samples), suite_path, data_file, samples, BASE, heldout)
    run_id = new_run_id(suite.name)
    grades = judge_grades(suite, suite_path, opts.grades, run_id)  # a rubric mismatch stops the run before it starts
    store = RunStore(opts.out or runs_dir / run_id)
    # A forgetting run answers afresh: a cached base answer would hide the noise floor it measures.
    cache = ResponseCache(opts.cache_path) if opts.cache_path and suite.forgetting is None else None
    client = EvalClient(opts.endpoint, opts.api_key, concurrency=opts.concurrency, cache=cache,
                        max_retries=opts.max_retries, backoff_s=opts.backoff_s, timeout_s=opts.timeout_s)
    manifest = Manifest(run_id=run_id, suite=suite.model_dump(mode="json"), suite_path=str(suite_path),
                        endpoint=client.endpoint, created_at=datetime.now(UTC).isoformat(timespec="microseconds"))
    outputs: dict[str, dict[str, Completion]] = {}
    store.write_samples(samples)
    try:
        manifest.plan = asyncio.run(plan_run(suite, client, baselines))
        manifest.models = manifest.plan.models()
        store.write_manifest(manifest)
        if suite.forgetting is not None:
            samples = forgetting_references(suite, samples, client, manifest.models[BASE],
                                            opts.references_dir or runs_dir.parent / "forgetting", store, progress,
                                            opts.base_identity)
        asyncio.run(generate_all(effective_suite(suite, manifest.plan), samples, client, manifest.models, outputs,
                                 progress, shapes=manifest.plan.shapes()))
    finally:
        # Whatever happens, keep what was generated: the cache resumes it, the folder shows it.
        store.write_outputs(outputs)
        store.write_manifest(manifest)
        if cache is not None:
            cache.close()
    manifest.status = "complete"
    store.write_manifest(manifest)
    judge_step(suite, suite_path, samples, outputs, manifest, store.path, opts)
    return RunOutcome(store.path, score_and_write(store, suite, samples, outputs, manifest, notes=notes,
                                                  grades=grades))


def forgetting_references(suite: Suite, samples: list[Sample], client: EvalClient, base_model: str, refs_dir: Path,
                          store: RunStore, progress: Progress | None, base_identity: str | None = None
                          ) -> list[Sample]:
    """The base's stored (or now generated) answers as the samples' references, recorded in the run folder."""
    attached, info = asyncio.run(attach_references(suite, samples, client, base_model, refs_dir, progress,
                                                   base_identity))
    store.write_samples(attached)
    store.write_text(REFERENCES_FILE, info.model_dump_json(indent=2))
    return attached


def score_and_write(store: RunStore, suite: Suite, samples: list[Sample], outputs: dict[str, dict[str, Completion]],
                    manifest: Manifest, *, notes: list[str] | None = None, grades: HumanGrades | None = None
                    ) -> RunResults:
    """Score a run's outputs and write results, per-sample scores and both reports; `notes` join the warnings;
    the judge's verdicts in the run folder become judge metrics (compared with `grades` where given)."""
    plan = run_plan(manifest)
    suite = effective_suite(suite, plan)
    scored = score_run(without_judge_gates(suite), samples, outputs, manifest.models, extra_pairs=plan.extra_pairs())
    st = suite.stats
    results = RunResults(run_id=manifest.run_id, suite=suite.name, created_at=manifest.created_at,
                         endpoint=manifest.endpoint, baseline=suite.baseline_target,
                         samples=len(originals(samples)),
                         confidence=st.confidence, resamples=st.resamples, seed=st.seed,
                         targets={t: s.result for t, s in scored.targets.items()}, comparisons=scored.comparisons,
                         gates=scored.gates, passed=scored.passed, bias=scored.bias,
                         warnings=[*(notes or []), *scored.warnings])
    judged = judge_into(results, suite, store.path, grades, plan.extra_pairs())
    add_plan(results, plan, primary_metrics(suite))
    if suite.forgetting is not None and BASE in results.targets:
        add_forgetting(results, suite, store.path)
    rows = per_sample_rows(samples, scored.targets)
    if judged is not None:
        judge_score_rows(rows, judged)
    store.write_scores(rows)
    store.write_results(results)
    store.write_text("report.md", render_markdown(results))
    store.write_text("report.html", render_html(results, samples, outputs, rows, primary=primary_metric(suite)))
    return results


def add_forgetting(results: RunResults, suite: Suite, run_dir: Path) -> None:
    """The forgetting section, its gates (which decide `passed` with the others) and what it could not measure."""
    assert suite.forgetting is not None
    refs_file = Path(run_dir) / REFERENCES_FILE
    refs = json.loads(refs_file.read_text(encoding="utf-8")) if refs_file.is_file() else {}
    refs["cached"] = refs.get("generated", 1) == 0
    results.forgetting = summarize(suite.forgetting, results, refs)
    results.gates += forgetting_gates(suite.forgetting, results.forgetting)
    results.passed = all(g.passed for g in results.gates)
    results.warnings += forgetting_warnings(results.forgetting)


def add_plan(results: RunResults, plan: RunPlan, metrics: list[str]) -> None:
    """Say on each target what it is (alias version, baseline) and judge the adapters against the best baseline."""
    for name, result in results.targets.items():
        if (planned := plan.get(name)) is not None:
            result.role, result.alias_of, result.weight = planned.role, planned.alias_of, planned.weight
            result.baseline = planned.baseline
    results.best_baseline = best_baselines(plan, results.targets, results.comparisons, metrics)


def primary_metrics(suite: Suite) -> list[str]:
    """The metrics an adapter is judged by against the best baseline: the primary one and every gated one."""
    first = primary_metric(suite)
    return list(dict.fromkeys([*([first] if first else []), *(g.metric for g in suite.gates)]))


def primary_metric(suite: Suite) -> str | None:
    """The metric worst samples are ranked by: the first gated one, else the first listed."""
    if suite.gates:
        return suite.gates[0].metric
    first = suite.metrics[0]
    name = first if isinstance(first, str) else next(iter(first))
    return {"rouge": "rougeL", "classification": "label_f1"}.get(name, name)


def per_sample_rows(samples: list[Sample], scored: dict[str, TargetScores]) -> list[dict[str, Any]]:
    """One row per target and sample; a counterfactual variant's row names its original."""
    origs, swapped = originals(samples), variants(samples)
    rows = []
    for target, s in scored.items():
        for i, sample in enumerate(origs):
            row: dict[str, Any] = {"target": target, "id": sample.id,
                                   "scores": {n: float(m.per_sample[i]) for n, m in s.metrics.items()}}
            if s.pred_labels is not None:
                row["label"] = s.pred_labels[i]
            rows.append(row)
        for j, sample in enumerate(swapped):
            k = len(origs) + j
            row = {"target": target, "id": sample.id, "counterfactual_of": sample.counterfactual_of,
                   "scores": {n: float(m.per_sample[k]) for n, m in (s.with_variants or {}).items()}}
            if s.with_variants_labels is not None:
                row["label"] = s.with_variants_labels[k]
            rows.append(row)
    return rows


def rescore(run_dir: Path, suite: Suite | None = None, *, grades: Path | None = None, suite_path: Path | None = None,
            judge_opts: RunOptions | None = None) -> RunResults:
    """Recompute metrics and gates of a stored run (optionally with a changed suite); no generation. The
    judge's stored verdicts are reused; a changed judge (rubric, prompt, model) asks `judge_opts`' endpoint
    (default: the run's, without a key). `grades` measures the judge's agreement with reviewers."""
    store = RunStore(run_dir)
    manifest = store.manifest()
    suite = suite or suite_from_dict(manifest.suite)
    outputs = store.outputs()
    targets = effective_suite(suite, run_plan(manifest)).targets
    missing = [t for t in targets if t not in outputs]
    if missing:
        raise ConfigError(f"{run_dir}: no outputs for target(s) {', '.join(missing)}",
                          hint="rescore only the targets the run generated, or run the suite again")
    samples = store.samples()
    incomplete = [t for t in targets if len(outputs[t]) < len(samples)]
    if incomplete:
        raise ConfigError(f"{run_dir}: run is partial for {', '.join(incomplete)}",
                          hint="resume it with the same `eval run` command (cached answers are reused)")
    where = suite_path or manifest.suite_path
    human = judge_grades(suite, where, grades, manifest.run_id)
    judge_step(suite, where, samples, outputs, manifest, store.path,
               judge_opts or RunOptions(endpoint=manifest.endpoint), reuse=True)
    return score_and_write(store, suite, samples, outputs, manifest, grades=human)


def judge_step(suite: Suite, suite_path: Path | str | None, samples: list[Sample],
               outputs: dict[str, dict[str, Completion]], manifest: Manifest, run_dir: Path, opts: RunOptions, *,
               reuse: bool = False) -> None:
    """Judge the run's outputs when the suite has a judge (verdicts go to the run folder; failures are counted
    there, never raised)."""
    if suite.judge is None:
        return
    plan = run_plan(manifest)
    endpoint = judge_endpoint(suite.judge, opts.endpoint, opts.api_key, concurrency=opts.concurrency,
                              timeout_s=opts.timeout_s, backoff_s=opts.backoff_s)
    judge_outputs(effective_suite(suite, plan), suite_path, samples, outputs, run_dir, endpoint,
                  cache_path=opts.cache_path, pair_names={t: plan.heaviest(t) for t in suite.targets}, reuse=reuse)
