"""The suite YAML: a pydantic model whose errors name the key and its line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from lorafleet.evaluate.judge_spec import JudgeSpec, check_judge, is_judge_metric
from lorafleet.evaluate.metrics import FAMILY_OF, families_for
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorafleet.errors import ConfigError
from lorafleet.formats import FormatName
from lorafleet.yaml_lines import line_of, load_yaml_with_lines

BASE = "base"
_GATE_RE = re.compile(r"^\s*([A-Za-z_][\w+]*)\s*(>=|<=|>|<)\s*(-?\d+(?:\.\d*)?|-?\.\d+)\s*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSpec(_Strict):
    """A JSONL file (chat, alpaca or prompt/completion), or a split of a registered adapter's card."""

    path: str | None = None
    adapter: str | None = Field(default=None, description="Use the dataset file recorded in this adapter's card.")
    split: str = "test"
    format: FormatName | None = None
    limit: int | None = Field(default=None, ge=1, description="Only the first N records.")


class Generation(_Strict):
    """Decoding parameters: identical for every target."""

    temperature: float = Field(default=0.0, ge=0)
    max_tokens: int = Field(default=128, ge=1)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = 0
    stop: list[str] | None = None
    extra: dict[str, Any] = Field(default_factory=dict, description="Passed through to the request body.")

    def params(self) -> dict[str, Any]:
        body = self.model_dump(exclude={"extra"}, exclude_none=True)
        return {**body, **self.extra}


class Extraction(_Strict):
    """How to read a label out of an output; what does not match is the INVALID class."""

    label_pattern: str | None = Field(default=None, description="Regex; group 1 (or the match) is the label.")
    labels: list[str] = Field(default_factory=list,
                              description="The declared label set; default: the gold labels of the dataset.")
    invalid_label: str = "INVALID"
    label_field: str = Field(default="label", description="Record key holding the gold label.")
    case_sensitive: bool = False

    @field_validator("label_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regex: {exc}") from None
        return value


class Gate(_Strict):
    """`metric op threshold` on each target, or a delta over a baseline target."""

    metric: str
    op: Literal[">=", ">", "<=", "<"] = ">="
    threshold: float | None = None
    vs: str | None = None
    min_delta: float | None = None
    significant: bool = False
    targets: list[str] | None = Field(default=None, description="Default: every target except `vs`/baseline.")

    @model_validator(mode="before")
    @classmethod
    def _forms(cls, value: Any) -> Any:
        return parse_gate(value)

    def describe(self) -> str:
        if self.vs is not None:
            sig = ", significant" if self.significant else ""
            return f"{self.metric} vs {self.vs}: delta >= {self.min_delta or 0:g}{sig}"
        return f"{self.metric} {self.op} {self.threshold:g}"


class ReviewSpec(_Strict):
    sample: int = Field(default=0, ge=0, description="Samples per target sent for rubric review.")
    rubric: str | None = None
    pairwise: list[str] | None = Field(default=None, min_length=2, max_length=2)
    queue: str = "eval"
    pairwise_queue: str | None = Field(
        default=None, description="Queue for the blind A/B items (a pairwise queue); default: <queue>-pairwise.")
    seed: int = 0

    @property
    def pairwise_target_queue(self) -> str:
        """A review queue is either rubric or pairwise, so A/B items go to a queue of their own."""
        return self.pairwise_queue or f"{self.queue}-pairwise"


class StatsSpec(_Strict):
    resamples: int = Field(default=1000, ge=1)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    seed: int = 0


class BaselineSpec(_Strict):
    """A prompted base beside the zero-shot one: k-shot examples from a train split, decoding
    constrained to the label set, or both (`kind: k_shot, constrained: true`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Its column in the results.")
    kind: Literal["k_shot", "constrained"]
    k: int = Field(default=3, ge=1, le=64, description="k_shot: how many examples.")
    examples: str | None = Field(default=None, description="k_shot: a train-split JSONL, relative to the suite.")
    seed: int = Field(default=0, description="k_shot: which examples are drawn.")
    constrained: bool = Field(default=False, description="k_shot: also constrain decoding to the labels.")
    choice_format: str | None = Field(default=None, description="How a label is written, e.g. '[Intent: {label}]'; "
                                      "default: as the references write it.")

    @model_validator(mode="after")
    def _fits_kind(self) -> BaselineSpec:
        if self.kind == "k_shot" and not self.examples:
            raise ValueError("a k_shot baseline needs 'examples': a train-split JSONL (never val/test)")
        if self.kind == "constrained" and self.examples:
            raise ValueError("a constrained baseline takes no examples; for both write kind: k_shot, constrained: true")
        if self.choice_format is not None and "{label}" not in self.choice_format:
            raise ValueError("choice_format must contain {label}")
        return self

    @property
    def is_constrained(self) -> bool:
        return self.kind == "constrained" or self.constrained

    def describe(self) -> str:
        parts = [f"{self.k}-shot from {self.examples} (seed {self.seed})"] if self.kind == "k_shot" else []
        if self.is_constrained:
            parts.append("decoding constrained to the labels")
        return ", ".join(parts)


class Counterfactual(_Strict):
    """Swap attribute words (names, genders, origins) in every prompt; both directions."""

    swaps: list[list[str]] = Field(min_length=1)
    prefix: str | None = Field(default=None, description="Text put before every user prompt (e.g. 'I am John "
                               "from London. ') for datasets whose prompts name nobody; the swaps then apply to it.")

    @field_validator("swaps")
    @classmethod
    def _pairs(cls, value: list[list[str]]) -> list[list[str]]:
        for pair in value:
            if len(pair) != 2 or not all(p.strip() for p in pair):
                raise ValueError("each swap is a pair of two non-empty words, e.g. [John, Maria]")
        return value


BIAS_RATES = ("label_flip_rate", "output_changed_rate", "output_similarity")
GAP_SUFFIX = "_gap"


class BiasLimit(_Strict):
    """A bound on one counterfactual figure: a rate (`label_flip_rate`), the similarity, or `<metric>_gap`
    (its absolute original − swapped gap). With `significant`, the whole CI must lie within the bound."""

    max: float | None = None
    min: float | None = None
    significant: bool = False
    targets: list[str] | None = Field(default=None, description="Default: every target except the baseline.")

    @model_validator(mode="before")
    @classmethod
    def _number_is_max(cls, value: Any) -> Any:
        return {"max": value} if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _bounded(self) -> BiasLimit:
        if self.max is None and self.min is None:
            raise ValueError("give 'max' (or 'min'), e.g. label_flip_rate: {max: 0.05}")
        return self

    def describe(self, name: str) -> str:
        what = f"|{name}|" if name.endswith(GAP_SUFFIX) else name
        bounds = [f"<= {self.max:g}"] if self.max is not None else []
        bounds += [f">= {self.min:g}"] if self.min is not None else []
        return f"bias {what} {' and '.join(bounds)}{' (CI)' if self.significant else ''}"


FORGETTING_METRICS = ("rougeL", "exact_match")


class ForgettingSpec(_Strict):
    """The suite is a forgetting check: its references are the base's own greedy answers (generated once per
    base and suite, then reused), and an adapter passes when the upper CI bound of its drop in agreement with
    them, against the base's own agreement now (the noise floor), is under `max_drop`."""

    max_drop: float = Field(default=0.05, gt=0, lt=1, description="Non-inferiority margin on the agreement metric.")
    metric: Literal["rougeL", "exact_match"] = Field(
        default="rougeL", description="Agreement with the base's answers that the margin applies to.")
    targets: list[str] | None = Field(default=None, description="Default: every target except base.")

    def describe(self) -> str:
        return f"forgetting: {self.metric} drop vs base, CI upper bound < {self.max_drop:g}"


class Suite(_Strict):
    """One evaluation: dataset, targets, decoding, metrics, extraction, gates, review push."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str | None = None
    dataset: DatasetSpec
    targets: list[str] = Field(min_length=1)
    base_model: str | None = Field(default=None, description="What `base` means; default: from /v1/models.")
    baseline: str | None = Field(default=None, description="Target the others are compared with.")
    baselines: list[BaselineSpec] = Field(default_factory=list, description="Prompted bases, each one more target.")
    system_prompt: str | None = None
    generation: Generation = Field(default_factory=Generation)
    metrics: list[str | dict[str, dict[str, Any]]] = Field(min_length=1)
    extraction: Extraction = Field(default_factory=Extraction)
    gates: list[Gate] = Field(default_factory=list)
    review: ReviewSpec = Field(default_factory=ReviewSpec)
    stats: StatsSpec = Field(default_factory=StatsSpec)
    counterfactual: Counterfactual | None = None
    bias: dict[str, BiasLimit] = Field(
        default_factory=dict, description="Gates on counterfactual figures, e.g. label_flip_rate: {max: 0.05}.")
    judge: JudgeSpec | None = Field(default=None, description="An LLM judge grading outputs on a review rubric.")
    forgetting: ForgettingSpec | None = Field(
        default=None, description="Off-domain check: agreement with the base's own answers, e.g. {max_drop: 0.05}.")

    @field_validator("dataset", mode="before")
    @classmethod
    def _path_shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str | dict[str, dict[str, Any]]]) -> list[str | dict[str, dict[str, Any]]]:
        for item in value:
            for name in [item] if isinstance(item, str) else list(item):
                if name not in FAMILY_OF:
                    raise ValueError(f"unknown metric {name!r}; known: {', '.join(sorted(FAMILY_OF))}")
        return value

    @property
    def baseline_target(self) -> str:
        return self.baseline or (BASE if BASE in self.targets else self.targets[0])

    def metric_families(self) -> dict[str, dict[str, Any]]:
        """Family → options for every family a requested metric (or a gate) needs."""
        names: list[str] = []
        options: dict[str, dict[str, Any]] = {}
        for item in self.metrics:
            entries = {item: {}} if isinstance(item, str) else item
            for name, opts in entries.items():
                names.append(name)
                options.setdefault(name, {}).update(opts or {})
        names += [g.metric for g in self.gates if not is_judge_metric(g.metric)]  # the judge computes those
        names += list(FORGETTING_METRICS) if self.forgetting is not None else []
        return families_for(names, options)


def parse_gate(value: Any) -> Any:
    """`"label_f1 >= 0.9"`, `{rougeL: {vs: base, min_delta: 0.05}}` or `{metric: …}` → Gate fields."""
    if isinstance(value, str):
        m = _GATE_RE.match(value)
        if not m:
            raise ValueError(f"cannot read gate {value!r}; write e.g. 'label_f1 >= 0.9'")
        return {"metric": m.group(1), "op": m.group(2), "threshold": float(m.group(3))}
    if isinstance(value, dict) and len(value) == 1 and "metric" not in value:
        (metric, options), = value.items()
        if isinstance(options, (int, float)):
            return {"metric": metric, "threshold": float(options)}
        if isinstance(options, dict):
            options = dict(options)
            if "min" in options:
                options["threshold"] = options.pop("min")
            return {"metric": metric, **options}
    return value


def _check_references(suite: Suite, lines: dict, path: Path) -> None:
    """Cross-field rules: gates name known metrics and targets, pairwise names targets."""
    def fail(loc: tuple[Any, ...], msg: str, hint: str) -> None:
        line = line_of(lines, loc)
        raise ConfigError(f"{path}:{line}: {'.'.join(map(str, loc))}: {msg}", hint=hint)

    if len(set(suite.targets)) != len(suite.targets):
        fail(("targets",), "a target is listed twice", "list each target once")
    _check_baselines(suite, fail, path)
    if suite.baseline_target not in suite.targets and suite.baseline_target not in {b.name for b in suite.baselines}:
        fail(("baseline",), f"{suite.baseline_target!r} is not a target", "pick one of 'targets'")
    for i, gate in enumerate(suite.gates):
        if is_judge_metric(gate.metric):
            pass  # checked against the judge's rubric in check_judge
        elif gate.metric not in FAMILY_OF or FAMILY_OF[gate.metric] == gate.metric and gate.metric in (
                "rouge", "classification"):
            fail(("gates", i), f"unknown metric {gate.metric!r}", "use a metric name such as rougeL or label_f1")
        if gate.vs is None and gate.threshold is None:
            fail(("gates", i), "needs a threshold or 'vs'", "e.g. 'label_f1 >= 0.9' or {rougeL: {vs: base}}")
        for t in [gate.vs, *(gate.targets or [])]:
            if t is not None and t not in suite.targets:
                fail(("gates", i), f"{t!r} is not a target", "name one of 'targets'")
    if suite.review.pairwise:
        for t in suite.review.pairwise:
            if t not in suite.targets:
                fail(("review", "pairwise"), f"{t!r} is not a target", "name two of 'targets'")
    if suite.dataset.path is None and suite.dataset.adapter is None:
        fail(("dataset",), "give 'path' or 'adapter'", "e.g. dataset: ../data/test.jsonl")
    _check_bias(suite, fail)
    _check_forgetting(suite, fail)
    check_judge(suite, fail, path)


def _check_forgetting(suite: Suite, fail: Any) -> None:
    """A forgetting suite compares with the base's answers: base is a target, and it names the adapters."""
    if suite.forgetting is None:
        return
    if BASE not in suite.targets:
        fail(("forgetting",), "a forgetting check compares adapters with the base's own answers, but 'base' is "
             "not a target", "add base to targets, e.g. targets: [base, my-adapter@latest]")
    for t in suite.forgetting.targets or []:
        if t not in suite.targets or t == BASE:
            fail(("forgetting", "targets"), f"{t!r} is not an adapter target", "name targets other than base")


def _check_bias(suite: Suite, fail: Any) -> None:
    """Bias gates name a known figure, need a counterfactual section (and labels for label flips)."""
    families = suite.metric_families()
    computed = sorted(m for m, fam in FAMILY_OF.items() if fam in families and m not in ("rouge", "classification"))
    for name, limit in suite.bias.items():
        loc = ("bias", name)
        if suite.counterfactual is None:
            fail(loc, "bias gates need counterfactual variants", "add counterfactual: {swaps: [[John, Maria]]}")
        if name.endswith(GAP_SUFFIX):
            if name.removesuffix(GAP_SUFFIX) not in computed:
                fail(loc, f"{name.removesuffix(GAP_SUFFIX)!r} is not a computed metric",
                     f"gate the gap of one of: {', '.join(computed)} (as <metric>_gap)")
        elif name not in BIAS_RATES:
            fail(loc, f"unknown bias figure {name!r}",
                 f"use one of {', '.join(BIAS_RATES)} or <metric>_gap, e.g. accuracy_gap")
        if name == "label_flip_rate" and "classification" not in families:
            fail(loc, "label flips need a label metric", "add accuracy or label_f1 to metrics (and extraction)")
        for t in limit.targets or []:
            if t not in suite.targets:
                fail(loc, f"{t!r} is not a target", "name one of 'targets'")


def _check_baselines(suite: Suite, fail: Any, path: Path) -> None:
    """Baseline names are new columns; constrained needs labels; examples exist and are not the dataset."""
    seen: set[str] = set()
    for i, spec in enumerate(suite.baselines):
        loc = ("baselines", i)
        if spec.name in suite.targets or spec.name == BASE or spec.name in seen:
            fail((*loc, "name"), f"{spec.name!r} is already a target or baseline", "give each baseline its own name")
        seen.add(spec.name)
        if spec.is_constrained and "classification" not in suite.metric_families():
            fail(loc, "constrained decoding needs a label task", "add a label metric (accuracy, label_f1)")
        if spec.examples is not None:
            examples = Path(spec.examples) if Path(spec.examples).is_absolute() else path.parent / spec.examples
            if not examples.is_file():
                fail((*loc, "examples"), f"no such file {examples}",
                     "point it at the train split (relative to the suite)")
            dataset = suite.dataset.path
            if dataset is not None:
                data = Path(dataset) if Path(dataset).is_absolute() else path.parent / dataset
                if data.resolve() == examples.resolve():
                    fail((*loc, "examples"), "the examples are the suite's own dataset (held out)",
                         "draw k-shot examples from the train split, e.g. ../data/NAME/train.jsonl")


def load_suite(path: Path) -> Suite:
    """Read and validate a suite; a ConfigError names file:line, the key and the fix."""
    path = Path(path)
    data, lines = load_yaml_with_lines(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a suite is a YAML mapping", hint="start with 'name:', 'dataset:', 'targets:'")
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # A misspelt key also makes the real one "missing": report the misspelling, it is the cause.
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = _yaml_loc(err["loc"], lines)
        line = line_of(lines, loc)
        key = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{path}:{line}: {key}: {msg}", hint=_hint(err)) from None
    _check_references(suite, lines, path)
    return suite


def _yaml_loc(loc: tuple[Any, ...], lines: dict) -> tuple[Any, ...]:
    """Drop pydantic's union-member tags from an error location, keeping the YAML keys."""
    kept: tuple[Any, ...] = ()
    for i, part in enumerate(loc):
        if (*kept, part) in lines or i == len(loc) - 1 and not isinstance(part, int) and part[:1].islower() \
                and "[" not in part and part not in ("str", "dict", "list", "int", "float"):
            kept = (*kept, part)
    return kept


def _hint(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "remove the key or fix its spelling; see examples/suites/"
    if err["type"] == "missing":
        return "add the key; see examples/suites/"
    return "see examples/suites/ for a valid suite"


def suite_from_dict(data: dict[str, Any]) -> Suite:
    """A suite from an already-parsed dict (stored runs keep the resolved suite as JSON)."""
    return Suite.model_validate(data)
