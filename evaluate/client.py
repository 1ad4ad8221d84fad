"""The HTTP client of an OpenAI-compatible endpoint: bounded concurrency, on-disk cache, retries
with back-off on 429/5xx/timeouts, and a clear error (partial work kept) when the endpoint fails."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from lorafleet.evaluate.cache import ResponseCache, cache_key
from lorafleet.evaluate.dataset import Sample
from lorafleet.evaluate.pool import run_pool
from lorafleet.evaluate.targets import RequestShape
from pydantic import BaseModel, Field

from lorafleet.errors import LorafleetError

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class EndpointError(LorafleetError):
    """The endpoint refused or kept failing; what was generated so far is cached."""

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status  # the HTTP status of a refusal (None: retries ran out or malformed answer)


# Statuses an endpoint without prompt_logprobs answers them with: perplexity is left out, the run goes on.
UNSUPPORTED_STATUS = {400, 422}


class Completion(BaseModel):
    """One target's answer to one sample."""

    output: str
    served_model: str | None = None
    latency_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    cached: bool = False
    ref_nll: float | None = Field(default=None, description="Summed -logprob of the reference's tokens.")
    ref_tokens: int | None = Field(default=None, description="How many tokens covered the reference.")


def api_root(endpoint: str) -> str:
    """`http://h:p`, `http://h:p/` and `http://h:p/v1` all mean the same server."""
    root = endpoint.rstrip("/")
    return root[:-3] if root.endswith("/v1") else root


def _error_text(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error", {})
        return str(err.get("message") if isinstance(err, dict) else err)[:300]
    except ValueError:
        return resp.text[:300]


class EvalClient:
    """Sends chat completions for many samples with at most `concurrency` in flight."""

    def __init__(self, endpoint: str, api_key: str | None = None, *, concurrency: int = 8,
                 cache: ResponseCache | None = None, max_retries: int = 4, backoff_s: float = 0.5,
                 timeout_s: float = 120.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.endpoint = api_root(endpoint)
        self.api_key = api_key
        self.concurrency = max(1, concurrency)
        self.cache = cache
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.transport = transport
        # model sent → what answers for it (served version, base weights): part of every cache key.
        self.identity: dict[str, str] = {}
        # model → the endpoint's refusal of prompt_logprobs: its reference log-probs are not asked again.
        self.logprobs_refused: dict[str, str] = {}

    def _client(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        return httpx.AsyncClient(base_url=self.endpoint, headers=headers, timeout=self.timeout_s,
                                 limits=limits, transport=self.transport)

    async def list_models(self) -> list[dict[str, Any]]:
        async with self._client() as client:
            resp = await self._request(client, "GET", "/v1/models", None)
        return list(resp.json().get("data", []))

    async def resolve_targets(self, targets: list[str], *, base: str, base_model: str | None) -> dict[str, str]:
        """target → the name to send. `base` becomes the endpoint's base model; an alias ref that the
        lorafleet gateway lists with its version (`support-intents@latest` → v3) is pinned to
        `name@vN`, so every sample hits one version and cached answers never outlive an alias move."""
        try:
            listed = await self.list_models()
        except EndpointError:
            if base in targets and base_model is None:
                raise
            listed = []
        ids = {m.get("id") for m in listed}
        models = {}
        for target in targets:
            if target == base:
                models[target] = base_model or self._base_of(listed)
                continue
            entry = next((m for m in listed if m.get("id") == target), {})
            info = entry.get("lorafleet") or {}
            pinned = f"{info.get('adapter')}@{info.get('version')}"
            use_pin = info.get("kind") == "adapter" and info.get("version") and pinned in ids
            models[target] = pinned if use_pin else target
        self.identity.update({m: served_identity(m, listed) for m in models.values()})
        return models

    async def resolve_base(self) -> str:
        """The base model's name: the listed model that is nobody's adapter."""
        return self._base_of(await self.list_models())

    def _base_of(self, models: list[dict[str, Any]]) -> str:
        bases = [m["id"] for m in models if not m.get("parent") and "@" not in m["id"]]
        if not bases:
            raise EndpointError(f"{self.endpoint}/v1/models lists no base model",
                                hint="set base_model: in the suite")
        return bases[0]

    async def generate(self, model: str, samples: list[Sample], params: dict[str, Any], *,
                       on_done: Callable[[str, Completion], None] | None = None) -> dict[str, Completion]:
        """Completions for every sample (cached ones are not re-sent); order of `samples` kept."""
        def done(target: str, sid: str, c: Completion) -> None:
            if on_done:
                on_done(sid, c)

        out = await self.generate_targets({model: model}, samples, params, on_done=done)
        return out[model]

    async def generate_targets(self, models: dict[str, str], samples: list[Sample], params: dict[str, Any], *,
                               on_done: Callable[[str, str, Completion], None] | None = None,
                               shapes: Mapping[str, RequestShape] | None = None
                               ) -> dict[str, dict[str, Completion]]:
        """target → sample id → completion. One pool of `concurrency` workers serves every target,
        sample by sample across targets, so an engine batches base and adapters together. A target
        in `shapes` (a baseline) gets its few-shot turns and extra body fields on every request."""
        shapes = shapes or {}
        results: dict[str, dict[str, Completion]] = {t: {} for t in models}

        async with self._client() as client:
            async def work(job: tuple[str, Sample]) -> None:
                target, sample = job
                completion = await self._one(client, models[target], sample, params, shapes.get(target))
                results[target][sample.id] = completion
                if on_done:
                    on_done(target, sample.id, completion)

            await run_pool([(t, s) for s in samples for t in models], work, self.concurrency)
        return {t: {s.id: results[t][s.id] for s in samples} for t in models}

    async def _one(self, client: httpx.AsyncClient, model: str, sample: Sample, params: dict[str, Any],
                   shape: RequestShape | None = None) -> Completion:
        messages = [m.model_dump() for m in (shape.messages(sample) if shape else sample.messages)]
        params = shape.params(params) if shape else params
        key = cache_key(self.endpoint, model, messages, params, self.identity.get(model, ""))
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return Completion(**{**hit, "cached": True})
        started = time.perf_counter()
        resp = await self._request(client, "POST", "/v1/chat/completions",
                                   {"model": model, "messages": messages, **params})
        completion = self._parse(resp, time.perf_counter() - started)
        if self.cache is not None:
            self.cache.put(key, completion.model_dump(exclude={"cached"}))
        return completion

    async def add_reference_logprobs(self, models: dict[str, str], samples: list[Sample],
                                     results: dict[str, dict[str, Completion]],
                                     shapes: Mapping[str, RequestShape] | None = None) -> None:
        """Fill `ref_nll`/`ref_tokens`: the reference appended as the assistant turn, scored by the
        endpoint's prompt logprobs (vLLM's `prompt_logprobs`); left empty where it gives none or refuses
        them (a 400/422, recorded in `logprobs_refused`): scoring then leaves perplexity out with a warning."""
        jobs = [(t, s) for s in samples for t in models if s.reference and results[t][s.id].ref_nll is None]
        if not jobs:
            return

        async with self._client() as client:
            async def work(job: tuple[str, Sample]) -> None:
                target, sample = job
                if models[target] in self.logprobs_refused:
                    return
                scored = await self._reference_nll(client, models[target], sample, (shapes or {}).get(target))
                if scored is not None:
                    results[target][sample.id].ref_nll, results[target][sample.id].ref_tokens = scored

            await run_pool(jobs, work, self.concurrency)

    async def _reference_nll(self, client: httpx.AsyncClient, model: str, sample: Sample,
                             shape: RequestShape | None = None) -> tuple[float, int] | None:
        # A k-shot baseline's likelihood is read after its examples; decoding constraints do not apply.
        prompt = shape.messages(sample) if shape else sample.messages
        messages = [m.model_dump() for m in prompt] + [{"role": "assistant", "content": sample.reference}]
        params = {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0, "add_generation_prompt": False,
                  "continue_final_message": True}
        key = cache_key(self.endpoint, model, messages, params, self.identity.get(model, ""))
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return None if hit.get("nll") is None else (hit["nll"], hit["tokens"])
        try:
            resp = await self._request(client, "POST", "/v1/chat/completions",
                                       {"model": model, "messages": messages, **params})
        except EndpointError as exc:
            if exc.status not in UNSUPPORTED_STATUS:
                raise
            # Not cached: the same endpoint may accept prompt_logprobs after an upgrade.
            self.logprobs_refused[model] = exc.message
            return None
        scored = reference_nll(resp.json().get("prompt_logprobs"), sample.reference)
        if self.cache is not None:
            self.cache.put(key, {"nll": scored[0] if scored else None, "tokens": scored[1] if scored else None})
        return scored

    @staticmethod
    def _parse(resp: httpx.Response, latency: float) -> Completion:
        try:
            body = resp.json()
            choice = body["choices"][0]
            usage = body.get("usage") or {}
            return Completion(output=choice["message"].get("content") or "", served_model=body.get("model"),
                              latency_s=latency, prompt_tokens=usage.get("prompt_tokens"),
                              completion_tokens=usage.get("completion_tokens"),
                              finish_reason=choice.get("finish_reason"))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise EndpointError(f"malformed chat completion from the endpoint ({exc.__class__.__name__})",
                                hint="is this an OpenAI-compatible server?") from None

    async def _request(self, client: httpx.AsyncClient, method: str, path: str,
                       body: dict[str, Any] | None) -> httpx.Response:
        """One request with retries: back-off (honouring Retry-After) on 429, 5xx and timeouts."""
        problem = ""
        for attempt in range(self.max_retries + 1):
            try:
                resp = await client.request(method, path, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                problem, retry_after = exc.__class__.__name__, None
            else:
                if resp.status_code < 400:
                    return resp
                if resp.status_code not in RETRY_STATUS:
                    model = (body or {}).get("model")
                    raise EndpointError(
                        f"{self.endpoint}{path} answered {resp.status_code}"
                        f"{f' for model {model!r}' if model else ''}: {_error_text(resp)}",
                        hint="check the target name, the API key and the endpoint URL", status=resp.status_code)
                problem, retry_after = f"HTTP {resp.status_code}", resp.headers.get("retry-after")
            if attempt < self.max_retries:
                await asyncio.sleep(self._delay(attempt, retry_after))
        raise EndpointError(f"{self.endpoint}{path} failed {self.max_retries + 1} times (last: {problem})",
                            hint="the partial run is cached; rerun the same command to resume")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), 30.0)
            except ValueError:
                pass
        return self.backoff_s * (2 ** attempt) * (0.5 + random.random() / 2)


def base_identity(listed: list[dict[str, Any]]) -> str:
    """The base's weights sha256 where the lorafleet gateway reports it, else its id and `root` (a raw
    vLLM lists the model path there; its `created` is the time of the request, so it would key nothing)."""
    base = next((m for m in listed if (m.get("lorafleet") or {}).get("kind") == "base"), None) or next(
        (m for m in listed if not m.get("parent") and "@" not in str(m.get("id"))), None)
    if base is None:
        return ""
    sha = (base.get("lorafleet") or {}).get("weights_sha256")
    return f"base sha256:{sha}" if sha else f"base {base.get('id')} root={base.get('root')}"


def served_identity(model: str, listed: list[dict[str, Any]]) -> str:
    """What answers for `model`: its served version (`name@vN`) or, unversioned, its listed `root`
    (a LoRA path), on the base's identity. Empty when the endpoint lists nothing."""
    base = base_identity(listed)
    entry = next((m for m in listed if m.get("id") == model), None)
    if entry is None or not entry.get("parent"):
        return base
    info = entry.get("lorafleet") or {}
    if info.get("version"):
        own = f"{info.get('adapter')}@{info['version']}"
    elif info.get("versions"):  # a weighted alias: its split is what answers
        own = f"{model} versions={sorted(info['versions'].items())}"
    else:
        own = f"{model} root={entry.get('root')}"
    return f"{own} on {base}"


def reference_nll(prompt_logprobs: Any, reference: str) -> tuple[float, int] | None:
    """Sum of -logprob over the last prompt tokens that together spell the reference.

    `prompt_logprobs` is vLLM's list (None for the first token) of {token_id: {logprob, decoded_token}}
    holding the prompt token itself; the chat template ends with the reference, so we walk back from
    the end until the decoded text covers it.
    """
    if not isinstance(prompt_logprobs, list) or not reference.strip():
        return None
    target = reference.strip()
    text, nll = "", 0.0
    for count, entry in enumerate(reversed(prompt_logprobs), start=1):
        if not isinstance(entry, dict) or not entry:
            return None
        info = next(iter(entry.values()))
        text = (info.get("decoded_token") or "") + text
        nll -= float(info["logprob"])
        if len(text.strip()) >= len(target):
            return nll, count
    return None
