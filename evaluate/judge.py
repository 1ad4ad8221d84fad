"""The LLM judge: asks an OpenAI endpoint to grade outputs on a review rubric (pointwise) or to pick the
better of two targets' outputs in both orders (pairwise); answers are cached and never fail the run
(a failed or unreadable verdict leaves that sample unjudged, counted)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from lorafleet.evaluate.cache import ResponseCache, cache_key
from lorafleet.evaluate.client import Completion, EndpointError, EvalClient, served_identity
from lorafleet.evaluate.dataset import Sample, originals
from lorafleet.evaluate.judge_schema import JudgeProvenance, Verdict
from lorafleet.evaluate.judge_spec import JudgeSpec
from lorafleet.evaluate.pool import run_pool

from lorafleet.errors import ConfigError
from lorafleet.fsutil import atomic_write_json, atomic_write_jsonl
from lorafleet.rubrics import Rubric

PROMPT_VERSION = "judge-v1"  # bump when the templates below change: it is part of the prompt hash
TIE = "tie"
POINTWISE_SYSTEM = """You are a strict, impartial grader. Grade the RESPONSE to the PROMPT on each criterion \
below, on its own scale: read the anchors and pick the level whose description fits best.{guidelines}

Criteria:
{criteria}

Answer with one JSON object and nothing else, e.g. {example}"""
PAIRWISE_SYSTEM = """You are a strict, impartial grader. Two responses, A and B, answer the same PROMPT. Decide \
which is better overall, judging content, not length or position. These criteria guide you:
{criteria}

Answer with one JSON object and nothing else: {{"winner": "A"}}, {{"winner": "B"}} or {{"winner": "tie"}}."""


# ---- prompts ---------------------------------------------------------------------------------------


def _criteria_text(rubric: Rubric, anchors: bool = True) -> str:
    lines = []
    for c in rubric.criteria:
        lines.append(f"- {c.name} ({c.scale[0]}-{c.scale[1]}): {c.description}".rstrip(": "))
        if anchors:
            lines += [f"    {level}: {text}" for level, text in sorted(c.anchors.items())]
    return "\n".join(lines) or "- overall quality: which answers the prompt better and more correctly"


def _conversation(sample: Sample) -> str:
    turns = [m for m in sample.messages if m.role != "assistant" or m is not sample.messages[-1]]
    return "\n".join(f"[{m.role}] {m.content}" for m in turns)


def pointwise_messages(rubric: Rubric, sample: Sample, output: str) -> list[dict[str, str]]:
    """System: rubric and answer format; user: the prompt, the reference (if any) and the response."""
    example = json.dumps({c.name: c.scale[1] for c in rubric.criteria})
    guidelines = f"\n\nGuidelines:\n{rubric.guidelines.strip()}" if rubric.guidelines.strip() else ""
    system = POINTWISE_SYSTEM.format(guidelines=guidelines, criteria=_criteria_text(rubric), example=example)
    ref = f"\n\nREFERENCE (a good answer):\n{sample.reference}" if sample.reference else ""
    user = f"PROMPT:\n{_conversation(sample)}{ref}\n\nRESPONSE:\n{output}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def pairwise_messages(rubric: Rubric, sample: Sample, first: str, second: str) -> list[dict[str, str]]:
    system = PAIRWISE_SYSTEM.format(criteria=_criteria_text(rubric, anchors=False))
    ref = f"\n\nREFERENCE (a good answer):\n{sample.reference}" if sample.reference else ""
    user = f"PROMPT:\n{_conversation(sample)}{ref}\n\nRESPONSE A:\n{first}\n\nRESPONSE B:\n{second}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def pointwise_schema(rubric: Rubric) -> dict[str, Any]:
    """Every criterion an integer level of its scale (enum: what guided decoding handles best)."""
    return {"type": "object", "additionalProperties": False, "required": [c.name for c in rubric.criteria],
            "properties": {c.name: {"type": "integer", "enum": c.levels} for c in rubric.criteria}}


PAIRWISE_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["winner"],
                   "properties": {"winner": {"type": "string", "enum": ["A", "B", TIE]}}}


def response_format(kind: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    if kind == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema, "strict": True}}
    return {"type": "json_object"} if kind == "json_object" else None


def rubric_sha(rubric: Rubric) -> str:
    return hashlib.sha256(rubric.model_dump_json().encode()).hexdigest()


def prompt_hash(spec: JudgeSpec, rubric: Rubric) -> str:
    """sha256 of everything that shapes a verdict but the sample: templates, rubric, schema, decoding."""
    blob = json.dumps([PROMPT_VERSION, POINTWISE_SYSTEM, PAIRWISE_SYSTEM, rubric.model_dump(mode="json"),
                       pointwise_schema(rubric), PAIRWISE_SCHEMA, spec.response_format, spec.temperature,
                       spec.max_tokens], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---- parsing (lenient: small judges wrap JSON in prose or code fences) ----------------------------------


def _json_objects(text: str) -> list[Any]:
    """Every JSON object found in `text`, outermost first: each {...} span that parses."""
    text = text.strip()
    found = []
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text[m.start():])
            found.append(obj)
        except ValueError:
            continue
    return [o for o in found if isinstance(o, dict)]


def _level(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*(/\s*\d+)?\s*", value):
        return int(value.split("/")[0])
    if isinstance(value, dict):  # {"relevance": {"score": 4, "reason": …}}
        return _level(value.get("score", value.get("level", value.get("grade"))))
    return None


def parse_pointwise(text: str, rubric: Rubric) -> tuple[dict[str, int] | None, str | None]:
    """(criterion → level, None) or (None, why it is unreadable): JSON, under `scores` or flat."""
    objects = _json_objects(text)
    if not objects:
        return None, "not JSON"
    for obj in objects:
        inner = obj.get("scores") if isinstance(obj.get("scores"), dict) else obj
        lowered = {str(k).strip().lower(): v for k, v in inner.items()}
        levels = {c.name: _level(lowered.get(c.name)) for c in rubric.criteria}
        if all(v is not None for v in levels.values()):
            off = [f"{c.name}={levels[c.name]}" for c in rubric.criteria if levels[c.name] not in c.levels]
            if off:
                return None, f"off the scale ({', '.join(off)})"
            return {k: int(v) for k, v in levels.items() if v is not None}, None
    missing = [c.name for c in rubric.criteria if c.name not in {str(k).lower() for k in objects[0]}]
    return None, f"JSON without {', '.join(missing) or 'integer levels'}"


def parse_pairwise(text: str) -> tuple[str | None, str | None]:
    """('A' | 'B' | 'tie', None) or (None, why)."""
    objects = _json_objects(text)
    if not objects:
        return None, "not JSON"
    for obj in objects:
        value = str(obj.get("winner", obj.get("better", ""))).strip().strip("\"'").lower()
        if value in ("a", "response a"):
            return "A", None
        if value in ("b", "response b"):
            return "B", None
        if value in (TIE, "equal", "both", "none"):
            return TIE, None
    return None, "JSON without a winner A, B or tie"


# ---- the endpoint -------------------------------------------------------------------------------------


@dataclass
class JudgeEndpoint:
    """Where the judge is and how to reach it; `key` is read from the env var the suite names."""

    url: str
    key: str | None
    concurrency: int = 8
    timeout_s: float = 120.0
    backoff_s: float = 0.5


def judge_endpoint(spec: JudgeSpec, run_endpoint: str, run_key: str | None, *, concurrency: int = 8,
                   timeout_s: float = 120.0, backoff_s: float = 0.5,
                   environ: Mapping[str, str] | None = None) -> JudgeEndpoint:
    """The run's endpoint and key (the gateway), or the suite's own endpoint with the key from its env var."""
    if spec.endpoint is None:
        return JudgeEndpoint(run_endpoint, run_key, concurrency, timeout_s, backoff_s)
    key = None
    if spec.api_key_env:
        key = (environ if environ is not None else os.environ).get(spec.api_key_env)
        if not key:
            raise ConfigError(f"judge.api_key_env: {spec.api_key_env} is not set",
                              hint=f"export {spec.api_key_env}=<the judge endpoint's key>")
    return JudgeEndpoint(spec.endpoint, key, concurrency, timeout_s, backoff_s)


@dataclass
class Job:
    kind: str
    sample: Sample
    target: str | None = None
    shown: tuple[str, str] | None = None
    outputs: tuple[str, ...] = ()


@dataclass
class Judge:
    """Sends judge requests (cached, retried, structured where the endpoint takes it) and reads verdicts."""

    spec: JudgeSpec
    rubric: Rubric
    endpoint: JudgeEndpoint
    cache: ResponseCache | None = None
    transport: httpx.AsyncBaseTransport | None = None
    model: str = ""
    identity: str = ""
    format_refused: bool = False
    unreachable: str | None = None
    served: set[str] = field(default_factory=set)
    fingerprints: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.client = EvalClient(self.endpoint.url, self.endpoint.key, concurrency=self.endpoint.concurrency,
                                 max_retries=self.spec.retries, backoff_s=self.endpoint.backoff_s,
                                 timeout_s=self.endpoint.timeout_s, transport=self.transport)
        self.hash = prompt_hash(self.spec, self.rubric)

    async def resolve(self) -> None:
        """The name to send (`base` → the endpoint's base) and what answers for it; an endpoint that
        does not list its models leaves every verdict unjudged when `base` must be resolved."""
        try:
            listed = await self.client.list_models()
        except EndpointError as exc:
            listed = []
            if self.spec.model == "base":
                self.unreachable = f"judge endpoint down: {exc.message}"
        if self.spec.model == "base":
            bases = [m["id"] for m in listed if not m.get("parent") and "@" not in m["id"]]
            if not bases and self.unreachable is None:
                self.unreachable = f"judge endpoint {self.client.endpoint} lists no base model"
            self.model = bases[0] if bases else "base"
        else:
            self.model = self.spec.model
        self.identity = served_identity(self.model, listed)

    def provenance(self) -> JudgeProvenance:
        fmt = self.spec.response_format + (" (refused)" if self.format_refused else "")
        return JudgeProvenance(endpoint=self.client.endpoint, model=self.model, served_models=sorted(self.served),
                               identity=self.identity, fingerprints=sorted(self.fingerprints),
                               rubric=self.rubric.name, rubric_sha256=rubric_sha(self.rubric),
                               prompt_hash=self.hash, response_format=fmt, temperature=self.spec.temperature,
                               max_tokens=self.spec.max_tokens)

    async def run(self, jobs: list[Job]) -> list[Verdict]:
        await self.resolve()
        out: list[Verdict | None] = [None] * len(jobs)
        async with self.client._client() as http:
            async def work(i: int) -> None:
                out[i] = await self._one(http, jobs[i])

            await run_pool(list(range(len(jobs))), work, self.endpoint.concurrency)
        return [v for v in out if v is not None]

    def _messages(self, job: Job) -> tuple[list[dict[str, str]], dict[str, Any]]:
        if job.kind == "pointwise":
            return pointwise_messages(self.rubric, job.sample, job.outputs[0]), pointwise_schema(self.rubric)
        return pairwise_messages(self.rubric, job.sample, job.outputs[0], job.outputs[1]), PAIRWISE_SCHEMA

    async def _one(self, http: httpx.AsyncClient, job: Job) -> Verdict:
        base = {"kind": job.kind, "id": job.sample.id, "target": job.target,
                "shown": list(job.shown) if job.shown else None, "prompt_hash": self.hash}
        if self.unreachable:
            return Verdict(**base, error=self.unreachable)
        messages, schema = self._messages(job)
        try:
            reply, cached = await self._ask(http, messages, schema)
        except EndpointError as exc:
            return Verdict(**base, error=f"judge endpoint failed: {exc.message}"[:300])
        self.served.update([reply["served_model"]] if reply.get("served_model") else [])
        self.fingerprints.update([reply["fingerprint"]] if reply.get("fingerprint") else [])
        verdict = Verdict(**base, raw=reply["output"][:500], served_model=reply.get("served_model"),
                          fingerprint=reply.get("fingerprint"), cached=cached)
        text = reply["output"]
        if job.kind == "pointwise":
            verdict.scores, verdict.error = parse_pointwise(text, self.rubric)
        else:
            letter, verdict.error = parse_pairwise(text)
            if letter is not None and job.shown is not None:
                verdict.winner = TIE if letter == TIE else job.shown[0 if letter == "A" else 1]
        if verdict.error is not None and self.cache is not None:
            self.cache.put(self._key(messages, schema), {"unreadable": True})  # re-asked next run, not reused
        return verdict

    def _params(self, schema: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {"temperature": self.spec.temperature, "max_tokens": self.spec.max_tokens,
                                  "seed": 0}
        fmt = None if self.format_refused else response_format(self.spec.response_format, schema)
        return {**params, **({"response_format": fmt} if fmt else {})}

    def _key(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> str:
        return cache_key(self.client.endpoint, self.model, messages, self._params(schema), f"judge {self.identity}")

    async def _ask(self, http: httpx.AsyncClient, messages: list[dict[str, str]], schema: dict[str, Any]
                   ) -> tuple[dict[str, Any], bool]:
        """The reply {output, served_model, fingerprint} (from the cache when a readable one is there);
        structured output refused (400/422) → asked again plainly."""
        key = self._key(messages, schema)
        if self.cache is not None and (hit := self.cache.get(key)) is not None and "output" in hit:
            return hit, True
        body = {"model": self.model, "messages": messages, **self._params(schema)}
        try:
            resp = await self.client._request(http, "POST", "/v1/chat/completions", body)
        except EndpointError as exc:
            if exc.status not in (400, 422) or "response_format" not in body:
                raise
            self.format_refused = True  # this endpoint takes no structured output: ask plainly, parse leniently
            return await self._ask(http, messages, schema)
        try:
            data = resp.json()
            reply = {"output": str(data["choices"][0]["message"].get("content") or ""),
                     "served_model": data.get("model"), "fingerprint": data.get("system_fingerprint")}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise EndpointError("malformed chat completion from the judge endpoint") from None
        if self.cache is not None:
            self.cache.put(key, reply)
        return reply, False


# ---- what to judge --------------------------------------------------------------------------------------


def judged_samples(spec: JudgeSpec, samples: list[Sample]) -> list[Sample]:
    """The originals to judge: all, or `sample` of them drawn with `seed` (the same for every target)."""
    origs = originals(samples)
    if spec.sample is None or spec.sample >= len(origs):
        return origs
    chosen = {s.id for s in random.Random(spec.seed).sample(origs, spec.sample)}
    return [s for s in origs if s.id in chosen]


def pointwise_targets(spec: JudgeSpec, targets: list[str]) -> list[str]:
    return [t for t in targets if spec.targets is None or t in spec.targets]


def pair_of(spec: JudgeSpec, targets: list[str], baseline: str, review_pairwise: list[str] | None) -> tuple[str, str]:
    """The two targets compared: judge.pairwise, else review.pairwise, else the baseline and the first other."""
    if spec.pairwise:
        return spec.pairwise[0], spec.pairwise[1]
    if review_pairwise:
        return review_pairwise[0], review_pairwise[1]
    other = next((t for t in targets if t != baseline), targets[-1])
    return baseline, other


def plan_jobs(spec: JudgeSpec, samples: list[Sample], outputs: dict[str, dict[str, Completion]],
              targets: list[str], pair: tuple[str, str] | None) -> list[Job]:
    """Pointwise: one job per (target, sample); pairwise: two per sample, the second with positions swapped."""
    chosen = judged_samples(spec, samples)
    jobs: list[Job] = []
    if spec.pointwise:
        for t in pointwise_targets(spec, targets):
            jobs += [Job("pointwise", s, target=t, outputs=(outputs[t][s.id].output,))
                     for s in chosen if s.id in outputs.get(t, {})]
    if spec.is_pairwise and pair is not None:
        a, b = pair
        for s in chosen:
            if s.id in outputs.get(a, {}) and s.id in outputs.get(b, {}):
                oa, ob = outputs[a][s.id].output, outputs[b][s.id].output
                jobs += [Job("pairwise", s, shown=(a, b), outputs=(oa, ob)),
                         Job("pairwise", s, shown=(b, a), outputs=(ob, oa))]
    return jobs


# ---- the run folder -------------------------------------------------------------------------------------


JUDGEMENTS, JUDGE_META = "judgements.jsonl", "judge.json"


def write_judgements(run_dir: Path, verdicts: list[Verdict], provenance: JudgeProvenance, rubric: Rubric,
                     spec: JudgeSpec, pair: tuple[str, str] | None, samples: int) -> None:
    atomic_write_jsonl(run_dir / JUDGEMENTS, [v.model_dump(mode="json", exclude_none=True) for v in verdicts])
    atomic_write_json(run_dir / JUDGE_META, {"provenance": provenance.model_dump(mode="json"),
                                             "rubric": rubric.model_dump(mode="json"),
                                             "spec": spec.model_dump(mode="json"),
                                             "pair": list(pair) if pair else None, "samples": samples})


@dataclass
class StoredJudge:
    verdicts: list[Verdict]
    provenance: JudgeProvenance
    rubric: Rubric
    pair: tuple[str, str] | None
    samples: int


def read_judgements(run_dir: Path) -> StoredJudge | None:
    """The run's verdicts and provenance, or None when it was not judged."""
    meta_path, rows_path = run_dir / JUDGE_META, run_dir / JUDGEMENTS
    if not meta_path.is_file() or not rows_path.is_file():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    verdicts = [Verdict.model_validate_json(line) for line in rows_path.read_text(encoding="utf-8").splitlines()
                if line.strip()]
    pair = tuple(meta["pair"]) if meta.get("pair") else None
    return StoredJudge(verdicts, JudgeProvenance.model_validate(meta["provenance"]),
                       Rubric.model_validate(meta["rubric"]), pair, int(meta.get("samples", 0)))  # type: ignore[arg-type]


def judge_run(spec: JudgeSpec, rubric: Rubric, endpoint: JudgeEndpoint, samples: list[Sample],
              outputs: dict[str, dict[str, Completion]], targets: list[str], pair: tuple[str, str] | None, *,
              run_dir: Path, cache_path: Path | None, transport: httpx.AsyncBaseTransport | None = None
              ) -> StoredJudge:
    """Judge a run's outputs and write judgements.jsonl and judge.json; never raises for the endpoint."""
    cache = ResponseCache(cache_path) if cache_path else None
    judge = Judge(spec, rubric, endpoint, cache=cache, transport=transport)
    try:
        verdicts = asyncio.run(judge.run(plan_jobs(spec, samples, outputs, targets, pair)))
    finally:
        if cache is not None:
            cache.close()
    stored = StoredJudge(verdicts, judge.provenance(), rubric, pair, len(judged_samples(spec, samples)))
    write_judgements(run_dir, verdicts, stored.provenance, rubric, spec, pair, stored.samples)
    return stored


def _verdict_spec(spec: JudgeSpec) -> dict[str, Any]:
    """The parts of a judge spec that change its verdicts (trust bars and grades do not)."""
    return spec.model_dump(mode="json", exclude={"trusted_if", "grades", "max_failure_rate", "min_shared"})


def judge_outputs(suite: Any, suite_path: Path | str | None, samples: list[Sample],
                  outputs: dict[str, dict[str, Completion]], run_dir: Path, endpoint: JudgeEndpoint, *,
                  cache_path: Path | None, pair_names: Mapping[str, str] | None = None, reuse: bool = False,
                  transport: httpx.AsyncBaseTransport | None = None) -> StoredJudge | None:
    """Judge a scored suite's targets (None without `judge:`). With `reuse` (rescore), verdicts already in the
    run folder for the same rubric, prompt and judge settings are kept and nothing is sent."""
    spec: JudgeSpec | None = suite.judge
    if spec is None:
        return None
    from lorafleet.evaluate.judge_spec import judge_rubric

    rubric = judge_rubric(spec, suite_path)
    if reuse and (stored := read_judgements(run_dir)) is not None:
        meta = json.loads((run_dir / JUDGE_META).read_text(encoding="utf-8"))
        same_spec = {k: v for k, v in (meta.get("spec") or {}).items() if k in _verdict_spec(spec)}
        if stored.provenance.prompt_hash == prompt_hash(spec, rubric) and same_spec == _verdict_spec(spec):
            return stored
    targets = [t for t in suite.targets if t in outputs]
    review_pair = [(pair_names or {}).get(t, t) for t in suite.review.pairwise] if suite.review.pairwise else None
    pair = pair_of(spec, targets, suite.baseline_target, review_pair) if spec.is_pairwise else None
    if pair is not None:
        pair = ((pair_names or {}).get(pair[0], pair[0]), (pair_names or {}).get(pair[1], pair[1]))
    return judge_run(spec, rubric, endpoint, samples, outputs, targets, pair, run_dir=run_dir,
                     cache_path=cache_path, transport=transport)
