"""The fidelity check at registration (train and `adapters import`): the adapter as the engine serves it vs
as HF + PEFT computes it, on the same base and prompts. Composes serving's engine (through engine_session)
with training's reference half, which is why it sits beside the CLI.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console

from lorafleet.cli.engine_session import EngineSession, EngineSettings, engine_session
from lorafleet.errors import ConfigError
from lorafleet.fidelity import Fidelity, ProbeResult, Tolerance, judge, refusal, tolerance_for

PROBES = 6  # prompts per check
PROBE_TOKENS = 24  # greedy tokens per prompt


def check_fidelity(adapter_dir: Path, base_dir: Path, settings: EngineSettings, *,
                   messages: list[list[dict[str, str]]] | None = None, probes_source: str = "val data",
                   engine: EngineSession | None = None, served_dir: Path | None = None, force: bool = False,
                   what: str = "", tolerance: Tolerance | None = None, console: Console | None = None,
                   max_tokens: int = PROBE_TOKENS, reference_base: Path | None = None,
                   vllm_args: list[str] | None = None) -> Fidelity:
    """Probe the adapter in the engine (`engine`, or one reused/started for this call), compare, and return the
    card's record; raise the refusal (RegistryError) when it fails, unless `force` (then `forced` is set).

    `base_dir` is the base the engine serves the adapter on; `reference_base` the folder HF loads for the same
    weights when that differs (a GPU engine's own bitsandbytes load of the base vs its nf4 twin on disk), and
    `vllm_args` what a started engine needs for it (lorafleet.base_variants.ServingBase).
    `served_dir`: what the engine loads, when it differs from the adapter the reference uses (tests, benchmarks)."""
    from lorafleet.train import fidelity as ref

    started = time.perf_counter()
    if not messages:
        messages, probes_source = ref.fixed_probe_messages(PROBES), "fixed probes"
    messages = messages[:PROBES]
    reference_base = reference_base or base_dir
    prompts = ref.prompt_token_ids(reference_base, messages)
    if engine is None:
        with engine_session(base_dir, settings, console=console, vllm_args=vllm_args) as session:
            return check_fidelity(adapter_dir, base_dir, settings, messages=messages, probes_source=probes_source,
                                  engine=session, served_dir=served_dir, force=force, what=what,
                                  tolerance=tolerance, console=console, max_tokens=max_tokens,
                                  reference_base=reference_base)
    checked = time.perf_counter()
    generated = engine_probes(engine, served_dir or adapter_dir, prompts, max_tokens)
    sequences = [(p, toks) for p, (toks, _) in zip(prompts, generated, strict=True)]
    references = ref.reference_logprobs(reference_base, adapter_dir, sequences)
    probes = [ProbeResult(prompt_tokens=len(p), tokens=toks, engine_logprobs=lps, reference_logprobs=r_lp,
                          reference_argmax=r_arg)
              for p, (toks, lps), (r_lp, r_arg) in zip(prompts, generated, references, strict=True)]
    check_s = time.perf_counter() - checked
    result = judge(probes, tolerance or tolerance_for(engine.dtype),
                   engine="reused " + engine.url if engine.reused else "started", engine_dtype=engine.dtype,
                   base=str(Path(base_dir).resolve()), probes=f"{probes_source} ({len(probes)} prompts)",
                   seconds={"engine_start": engine.start_s, "check": round(check_s, 1),
                            "total": round(engine.start_s + time.perf_counter() - started, 1)})
    if not result.passed:
        if not force:
            raise refusal(result, what or str(adapter_dir))
        result = result.model_copy(update={"forced": True})
    return result


def engine_probes(engine: EngineSession, adapter_dir: Path, prompts: list[list[int]],
                  max_tokens: int) -> list[tuple[list[int], list[float]]]:
    """Greedy tokens and their logprobs from the engine, the adapter loaded under a throwaway name
    (never a registry name: a reused engine's prefix cache must not mix them up)."""
    name = f"fidelity-check-{uuid.uuid4().hex[:10]}"
    engine.load(name, adapter_dir)
    try:
        choices = engine.completions(name, prompts, max_tokens=max_tokens, logprobs=1)
    finally:
        engine.unload(name)
    return [parse_choice(c) for c in choices]


def parse_choice(choice: dict[str, Any]) -> tuple[list[int], list[float]]:
    """(token ids, their logprobs) from a /v1/completions choice made with return_tokens_as_token_ids."""
    logprobs = choice.get("logprobs") or {}
    tokens, values = logprobs.get("tokens") or [], logprobs.get("token_logprobs") or []
    try:
        ids = [int(str(t).rsplit(":", 1)[1]) for t in tokens]
    except (IndexError, ValueError):
        raise ConfigError("the engine did not return token ids with its logprobs",
                          hint="the fidelity check needs vLLM's return_tokens_as_token_ids (vLLM >= 0.5)") from None
    return ids, [float(v) for v in values]
