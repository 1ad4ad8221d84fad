"""Declared baselines: the base prompted well, so an adapter is measured against a fair opponent.

- `k_shot`: k examples drawn (seeded) from a train split, sent as user/assistant turns before each prompt.
  They must not be held out (the held-out guard is checked, and the suite's own dataset is refused).
- `constrained`: for label tasks, decoding limited to the declared labels (vLLM structured outputs
  `choice`), written the way the references write them so the suite's extraction reads them back.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from lorafleet.evaluate.dataset import Sample
from lorafleet.evaluate.metrics.registry import LOWER_IS_BETTER
from lorafleet.evaluate.results import BestBaseline, Comparison, RunResults, TargetResult, VersusBest
from lorafleet.evaluate.scoring import extract_label, uses_labels
from lorafleet.evaluate.suite import BaselineSpec, Extraction, Suite
from lorafleet.evaluate.targets import PlannedTarget, RequestShape, RunPlan

from lorafleet.errors import ConfigError, HeldOutError
from lorafleet.formats import Message, prompt_and_answer, read_records
from lorafleet.fsutil import sha256_file
from lorafleet.heldout import HeldOutIndex, heldout_text

LABEL = "{label}"


def examples_path(spec: BaselineSpec, suite_path: Path) -> Path:
    """`examples` is relative to the suite file, as `dataset.path` is."""
    path = Path(spec.examples or "")
    return path if path.is_absolute() else Path(suite_path).parent / path


def same_file(a: Path, b: Path) -> bool:
    """The same path, or the same bytes under another name."""
    if a.resolve() == b.resolve():
        return True
    return a.is_file() and b.is_file() and a.stat().st_size == b.stat().st_size and sha256_file(a) == sha256_file(b)


def few_shot_turns(spec: BaselineSpec, suite: Suite, suite_path: Path, dataset: Path,
                   heldout: HeldOutIndex | None) -> list[Message]:
    """k examples from the train split as (user…, assistant) turns; refuses held-out examples.

    The suite's dataset is held out first (it is what is measured), so an example that is, or is
    nearly, one of its prompts is refused whatever else the index holds.
    """
    path = examples_path(spec, suite_path)
    where = f"baseline {spec.name!r}"
    if same_file(path, dataset):
        raise ConfigError(f"{where}: examples {path} is the suite's own dataset",
                          hint="draw k-shot examples from the train split, e.g. ../data/NAME/train.jsonl")
    rows = []
    for item in read_records(path):
        messages, answer = prompt_and_answer(item.record)
        if answer.strip() and any(m.role == "user" for m in messages):
            rows.append((item.line, messages, answer))
    if len(rows) < spec.k:
        raise ConfigError(f"{where}: {path} has {len(rows)} answered record(s), k is {spec.k}",
                          hint="lower k or point examples at a larger train split")
    chosen = [rows[i] for i in random.Random(spec.seed).sample(range(len(rows)), spec.k)]
    if heldout is None:
        raise ConfigError(f"{where}: k-shot examples are checked against the held-out guard, which needs the "
                          "data dir", hint="pass --data-dir (or set LORAFLEET_DATA_DIR)")
    heldout.add_file(dataset, "eval", label=f"suite {suite.name}")
    matches = heldout.check([(f"{path}:{line}", heldout_text(messages)) for line, messages, _ in chosen])
    if matches:
        lines = "\n".join(f"{m.where}: matches held-out {m.role} {m.source} ({m.kind}, {m.similarity:.2f})"
                          for m in matches)
        raise HeldOutError(f"{where}: {len(matches)} k-shot example(s) are held out:\n{lines}",
                           hint="draw the examples from the train split, never from val/test", matches=matches)
    turns: list[Message] = []
    for _, messages, answer in chosen:
        turns += [m for m in messages if m.role != "system"]
        turns.append(Message(role="assistant", content=answer))
    return turns


def choice_format(spec: BaselineSpec, extraction: Extraction, samples: list[Sample]) -> str:
    """How a label is written: as given, else as the references write it (`[Intent: {label}]` for a
    pattern that reads the label out of `[Intent: …]`), else the bare label."""
    if spec.choice_format:
        return spec.choice_format
    if not extraction.label_pattern:
        return LABEL
    flags = 0 if extraction.case_sensitive else re.IGNORECASE
    for s in samples:
        m = re.search(extraction.label_pattern, s.reference, flags)
        if m and m.groups() and m.group(1):
            start, end = m.span(1)
            whole = m.group(0)
            return whole[:start - m.start()] + LABEL + whole[end - m.start():]
    return LABEL


def label_choices(spec: BaselineSpec, suite: Suite, samples: list[Sample]) -> list[str]:
    """The declared labels, each written so the suite's extraction reads it back as itself."""
    extraction = suite.extraction
    if not uses_labels(suite) or not extraction.labels:
        raise ConfigError(f"baseline {spec.name!r}: constrained decoding needs a label task",
                          hint="add a label metric (accuracy, label_f1) and a label set, or drop `constrained`")
    fmt = choice_format(spec, extraction, samples)
    choices = [fmt.replace(LABEL, label) for label in extraction.labels]
    for label, choice in zip(extraction.labels, choices, strict=True):
        if extract_label(choice, extraction) != label:
            raise ConfigError(f"baseline {spec.name!r}: the choice {choice!r} does not read back as {label!r}",
                              hint="set choice_format so the extraction finds the label, e.g. '[Intent: {label}]'")
    return choices


def plan_baselines(suite: Suite, suite_path: Path, dataset: Path, samples: list[Sample], base_model: str,
                   heldout: HeldOutIndex | None) -> list[PlannedTarget]:
    """One target per declared baseline, all prompting the base model. `suite` has its labels declared."""
    out = []
    for spec in suite.baselines:
        shape = RequestShape()
        if spec.kind == "k_shot":
            shape.few_shot = few_shot_turns(spec, suite, suite_path, dataset, heldout)
        if spec.is_constrained:
            choices = label_choices(spec, suite, samples)
            # Under a grammar the model may spell a choice in tiny tokens (seen: 14 for "[Intent: greeting]"),
            # and a choice cut by max_tokens reads as INVALID; one token per byte always fits.
            room = max(len(c.encode("utf-8")) for c in choices) + 4
            shape.extra = {"structured_outputs": {"choice": choices},
                           "max_tokens": max(suite.generation.max_tokens, room)}
        out.append(PlannedTarget(name=spec.name, model=base_model, role="baseline", ref=spec.name,
                                 baseline=spec.describe(), shape=shape))
    return out


def best_baselines(plan: RunPlan, targets: dict[str, TargetResult], comparisons: list[Comparison],
                   metrics: list[str]) -> dict[str, BestBaseline]:
    """Per metric: the best of the base and the declared baselines, and each adapter against it."""
    opponents = [t.name for t in plan.targets if t.role in ("base", "baseline") and t.name in targets]
    adapters = [t.name for t in plan.targets if t.role == "adapter" and t.name in targets]
    out: dict[str, BestBaseline] = {}
    for metric in metrics:
        values = {n: targets[n].metrics[metric].value for n in opponents if metric in targets[n].metrics}
        if not values or not adapters:
            continue
        lower = metric in LOWER_IS_BETTER
        best = (min if lower else max)(values, key=lambda n: values[n])
        versus = []
        for a in adapters:
            c = next((c for c in comparisons if c.target == a and c.vs == best and c.metric == metric), None)
            if c is None:
                continue
            gain = -c.delta if lower else c.delta
            versus.append(VersusBest(target=a, delta=c.delta, ci=c.ci, p_value=c.p_value, significant=c.significant,
                                     beats=bool(c.significant and gain > 0)))
        out[metric] = BestBaseline(baseline=best, value=values[best], candidates=values, adapters=versus)
    return out


def verdict_lines(results: RunResults) -> list[str]:
    """One plain sentence per adapter and metric: does it significantly beat the best baseline?"""
    lines = []
    for metric, best in results.best_baseline.items():
        for v in best.adapters:
            figures = f"{v.delta:+.3f} [{v.ci[0]:+.3f}, {v.ci[1]:+.3f}]"
            if v.beats:
                lines.append(f"{v.target} beats {best.baseline} on {metric} ({figures}, p={v.p_value:.3g})")
            else:
                lines.append(f"{v.target} does NOT beat {best.baseline} on {metric} ({figures}, p={v.p_value:.3g})")
    return lines


def target_notes(results: RunResults) -> list[str]:
    """What the non-obvious columns are: prompted baselines, and the versions behind a weighted alias."""
    notes = []
    for name, t in results.targets.items():
        if t.baseline:
            notes.append(f"`{name}`: the base, {t.baseline}")
        elif t.alias_of:
            share = "" if t.weight is None else f", {t.weight:.0%} of its traffic"
            notes.append(f"`{name}`: a version behind the weighted alias `{t.alias_of}`{share}")
    return notes
