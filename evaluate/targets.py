"""What a run generates: the suite's targets with weighted aliases expanded into their versions,
plus the declared baselines (the base prompted better), each with how its requests are shaped.

A weighted alias (`x@canary` → {v1: 0.9, v2: 0.1}) has no single answer, so it becomes one target per
version, named by the exact version (`x@v1`, `x@v2`), each carrying `alias_of` and its weight. The
versions are compared with each other and with the baseline, as any two targets are.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Literal

from lorafleet.evaluate.dataset import Sample
from lorafleet.evaluate.suite import BASE, Gate, ReviewSpec, Suite
from pydantic import BaseModel, Field

from lorafleet.formats import Message
from lorafleet.refs import VERSION_RE, version_number

Role = Literal["base", "adapter", "baseline"]


class RequestShape(BaseModel):
    """How one target's requests differ from the suite's: turns before the prompt, extra body fields."""

    few_shot: list[Message] = Field(default_factory=list, description="user/assistant turns put before the prompt.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Added to the request body, e.g. "
                                  "structured_outputs.")

    def messages(self, sample: Sample) -> list[Message]:
        """The sample's messages with the few-shot turns after its leading system prompt(s)."""
        if not self.few_shot:
            return list(sample.messages)
        head = 0
        while head < len(sample.messages) and sample.messages[head].role == "system":
            head += 1
        return [*sample.messages[:head], *self.few_shot, *sample.messages[head:]]

    def params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**params, **self.extra} if self.extra else params


class PlannedTarget(BaseModel):
    """One column of the results: what is sent as `model`, and how."""

    name: str
    model: str = Field(description="The name sent as `model`.")
    role: Role
    ref: str = Field(description="As the suite names it: the target, the weighted alias, or the baseline.")
    alias_of: str | None = Field(default=None, description="The weighted alias this version stands behind.")
    weight: float | None = Field(default=None, description="Its share of the alias's traffic.")
    baseline: str | None = Field(default=None, description="A declared baseline's description.")
    shape: RequestShape = Field(default_factory=RequestShape)


class RunPlan(BaseModel):
    targets: list[PlannedTarget]

    def names(self) -> list[str]:
        return [t.name for t in self.targets]

    def models(self) -> dict[str, str]:
        return {t.name: t.model for t in self.targets}

    def shapes(self) -> dict[str, RequestShape]:
        return {t.name: t.shape for t in self.targets if t.shape.few_shot or t.shape.extra}

    def get(self, name: str) -> PlannedTarget | None:
        return next((t for t in self.targets if t.name == name), None)

    def expanded(self, ref: str) -> list[str]:
        """The target names a suite ref stands for: an alias's versions, else the ref itself."""
        versions = [t.name for t in self.targets if t.alias_of == ref]
        return versions or [ref]

    def heaviest(self, ref: str) -> str:
        """Where one name is needed for an alias (a baseline, `vs`): its most weighted version."""
        versions = [t for t in self.targets if t.alias_of == ref]
        return max(versions, key=lambda t: t.weight or 0.0).name if versions else ref

    def extra_pairs(self) -> list[tuple[str, str]]:
        """(target, vs) beyond every-target-vs-baseline: each adapter against each declared baseline,
        and the versions of one weighted alias against each other (later vs earlier)."""
        adapters = [t.name for t in self.targets if t.role == "adapter"]
        pairs = [(a, b.name) for b in self.targets if b.role == "baseline" for a in adapters]
        aliases = dict.fromkeys(t.alias_of for t in self.targets if t.alias_of)
        for alias in aliases:
            versions = sorted((t for t in self.targets if t.alias_of == alias), key=_version_key)
            pairs += [(later.name, earlier.name) for earlier, later in combinations(versions, 2)]
        return pairs


def _version_key(target: PlannedTarget) -> int:
    version = target.name.rpartition("@")[2]
    return version_number(version) if VERSION_RE.match(version) else 0


def expand_aliases(targets: list[str], listed: list[dict[str, Any]]) -> list[PlannedTarget]:
    """The suite's targets (base and adapters), a weighted alias replaced by one target per version.

    `listed` is the endpoint's /v1/models; the lorafleet gateway lists a weighted alias once, with
    `lorafleet: {kind: alias, adapter, versions: {vN: weight}}`. A version also named on its own is
    one target (it gains `alias_of`). `model` is left to the caller to resolve (it is the ref here).
    """
    by_id = {m.get("id"): (m.get("lorafleet") or {}) for m in listed}
    out: dict[str, PlannedTarget] = {}
    for target in targets:
        if target == BASE:
            out[target] = PlannedTarget(name=target, model=target, role="base", ref=target)
            continue
        info = by_id.get(target, {})
        versions = info.get("versions") if info.get("kind") == "alias" else None
        if not isinstance(versions, dict) or not versions:
            out.setdefault(target, PlannedTarget(name=target, model=target, role="adapter", ref=target))
            continue
        adapter = info.get("adapter") or target.partition("@")[0]
        ordered = sorted(versions, key=lambda v: version_number(v) if VERSION_RE.match(v) else 0)
        for version in ordered:
            name = f"{adapter}@{version}"
            entry = out.get(name) or PlannedTarget(name=name, model=name, role="adapter", ref=target)
            out[name] = entry.model_copy(update={"alias_of": target, "weight": float(versions[version])})
    return list(out.values())


def legacy_plan(models: dict[str, str]) -> RunPlan:
    """The plan of a run stored before plans were (every target as sent, no baselines, no aliases)."""
    return RunPlan(targets=[PlannedTarget(name=t, model=m, role="base" if t == BASE else "adapter", ref=t)
                            for t, m in models.items()])


def effective_suite(suite: Suite, plan: RunPlan) -> Suite:
    """The suite as scoring sees it: its targets expanded by the plan, its baselines as targets, and
    gates (and bias limits) on those names.

    A gate without `targets` applies to the adapters (never to a declared baseline: a prompted base is
    there to be beaten, not gated). A weighted alias named in a gate stands for all its versions; as
    `vs` or `baseline`, for its most weighted version.
    """
    names = list(dict.fromkeys([n for t in suite.targets for n in plan.expanded(t)]
                               + [b.name for b in suite.baselines]))
    roles = {t.name: t.role for t in plan.targets}
    adapters = [n for n in names if roles.get(n, "base" if n == BASE else "adapter") == "adapter"]
    baseline = plan.heaviest(suite.baseline_target)

    def chosen(targets: list[str] | None, skip: str) -> list[str]:
        if targets:
            return [n for t in targets for n in plan.expanded(t)]
        return [n for n in adapters if n != skip] or [n for n in names if n != skip] or names

    gates: list[Gate] = []
    for gate in suite.gates:
        vs = plan.heaviest(gate.vs) if gate.vs else None
        gates.append(gate.model_copy(update={"vs": vs, "targets": chosen(gate.targets, vs or baseline)}))
    update: dict[str, Any] = {"targets": names, "gates": gates, "baseline": baseline}
    limits = getattr(suite, "bias", None)  # counterfactual gates: the same default targets as gates
    if isinstance(limits, dict) and limits:
        update["bias"] = {k: v.model_copy(update={"targets": chosen(v.targets, baseline)}) for k, v in limits.items()}
    return suite.model_copy(update=update)


def for_review(spec: ReviewSpec, plan: RunPlan, outputs: dict[str, dict[str, Any]]
               ) -> tuple[ReviewSpec, dict[str, dict[str, Any]]]:
    """What a run sends for human review: the suite's targets (declared baselines are measured, not
    reviewed), with a weighted alias in `pairwise` read as its most weighted version."""
    kept = {t: rows for t, rows in outputs.items() if (p := plan.get(t)) is None or p.role != "baseline"}
    if spec.pairwise:
        spec = spec.model_copy(update={"pairwise": [plan.heaviest(t) for t in spec.pairwise]})
    return spec, kept
