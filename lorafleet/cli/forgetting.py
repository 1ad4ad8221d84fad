"""Forgetting measured at train time: a time-boxed subset of the off-domain suite (examples/forgetting) run
through the registration engine (engine_session: a running vLLM reused, or one short start), on the card.

Composes evaluation's runner with serving's engine, which is why it sits beside the CLI. It never fails a
training run: an engine or suite problem is recorded on the card as `{"skipped": why}` and printed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import Field
from rich.console import Console

from lorafleet.cli.engine_session import EngineSession, EngineSettings, engine_session
from lorafleet.errors import LorafleetError
from lorafleet.registry import Registry

SUITE = Path("examples/forgetting/suite.yaml")  # relative to the working directory (a checkout)
# 60 of the 300 prompts (interleaved: 12 of each kind) at the suite's 32 tokens: on the demo's 2-core CPU the
# check costs ~20-30 s per adapter (the first one also generates the base's answers); docs/benchmarks.md.
TRAIN_PROMPTS = 60
CONCURRENCY = 32  # base and adapter answered in the same batches (vLLM batches them together)


class ForgettingSettings(EngineSettings):
    """`train`'s forgetting step (LORAFLEET_FORGETTING_*), on top of the registration engine's settings."""

    forgetting_check: bool = Field(default=True, description="LORAFLEET_FORGETTING_CHECK: measure after training.")
    forgetting_prompts: int = Field(default=TRAIN_PROMPTS, ge=5, description="LORAFLEET_FORGETTING_PROMPTS: how "
                                    "many of the suite's prompts (its first N, every kind interleaved).")
    forgetting_suite: Path = Field(default=SUITE, description="LORAFLEET_FORGETTING_SUITE: the forgetting suite.")


def measure_forgetting(registry: Registry, served_name: str, settings: ForgettingSettings, *,
                       engine: EngineSession | None = None, console: Console | None = None) -> dict[str, Any]:
    """Forgetting of a registered version, written to its card's `forgetting`; returns the entry."""
    resolved = registry.resolve(served_name)
    base_dir = Path(resolved.card.base.path or settings.base_dir)
    if engine is None and settings.forgetting_suite.is_file():
        with engine_session(base_dir, settings, console=console) as session:
            return measure_forgetting(registry, served_name, settings, engine=session, console=console)
    entry = forgetting_entry(engine, resolved.path, served_name, resolved.card.base.weights_sha256, settings,
                             data_dir=settings.data_dir, registry=registry, console=console)
    registry.update_card_with(served_name, lambda _card: {"forgetting": entry})
    return entry


def train_forgetting(check: Any, engine: EngineSession | None, settings: ForgettingSettings,
                     console: Console | None = None, *, served: Any = None) -> dict[str, Any]:
    """The card fields of train's forgetting step (recipe's RegistrationCheck, before registration): the saved
    adapter loaded under a throwaway name in the registration engine. {} when switched off.

    `served` (a base_variants.ServingBase): the base the engine serves. The references are that base's own
    answers: a QLoRA adapter is compared with its nf4 twin's, not with the full base's."""
    if not settings.forgetting_check:
        return {}
    import uuid

    from lorafleet.base_model import inspect_base

    name = f"{check.name}-forgetting-{uuid.uuid4().hex[:8]}"  # never a registry name (prefix cache)
    try:
        sha = inspect_base(Path(served.path if served is not None else check.base)).weights_sha256
    except (LorafleetError, OSError):
        sha = None
    if sha and served is not None and served.vllm_args:  # GPU nf4: the original weights, quantised by vLLM
        sha = f"{sha}+{served.variant}"
    return {"forgetting": forgetting_entry(engine, Path(check.adapter_dir), name, sha, settings,
                                           data_dir=settings.data_dir, console=console)}


def forgetting_entry(engine: EngineSession | None, adapter_dir: Path, name: str, base_sha: str | None,
                     settings: ForgettingSettings, *, data_dir: Path, registry: Registry | None = None,
                     console: Console | None = None) -> dict[str, Any]:
    """Run the forgetting subset against the adapter (loaded as `name`); the card entry, or {skipped: why}."""
    started = time.perf_counter()
    path = Path(settings.forgetting_suite)
    try:
        if not path.is_file():
            raise LorafleetError(f"no forgetting suite at {path}", hint="run from the checkout, or set "
                                 "LORAFLEET_FORGETTING_SUITE")
        if engine is None:
            raise LorafleetError("no engine", hint="the registration engine did not start")
        entry = _run(engine, adapter_dir, name, base_sha, settings, path, data_dir, registry)
    except (LorafleetError, OSError) as exc:
        entry = {"skipped": getattr(exc, "message", str(exc)), "suite": str(path)}
    entry["seconds"] = round(time.perf_counter() - started, 1)
    if console is not None:
        _report(console, name, entry)
    return entry


def _run(engine: EngineSession, adapter_dir: Path, name: str, base_sha: str | None, settings: ForgettingSettings,
         path: Path, data_dir: Path, registry: Registry | None) -> dict[str, Any]:
    from lorafleet.evaluate.forgetting_score import card_entry
    from lorafleet.evaluate.runner import RunOptions, run_suite
    from lorafleet.evaluate.suite import BASE, load_suite

    suite = load_suite(path)
    if suite.forgetting is None:
        raise LorafleetError(f"{path} is not a forgetting suite", hint="give it a forgetting: {max_drop: …} block")
    prompts = settings.forgetting_prompts
    suite = suite.model_copy(update={
        "targets": [BASE, name], "base_model": engine.base_name,
        "dataset": suite.dataset.model_copy(update={"limit": min(prompts, suite.dataset.limit or prompts)}),
        "forgetting": suite.forgetting.model_copy(update={"targets": None})})
    engine.load(name, adapter_dir)
    eval_dir = data_dir / "eval"
    opts = RunOptions(endpoint=engine.endpoint, api_key=engine.api_key, concurrency=CONCURRENCY, cache_path=None,
                      data_dir=data_dir, references_dir=eval_dir / "forgetting",
                      base_identity=f"base sha256:{base_sha}" if base_sha else None)
    outcome = run_suite(suite, path, opts, runs_dir=eval_dir / "runs", registry=registry)
    entry = card_entry(outcome.results, name, str(outcome.path)) or {"skipped": "the run did not check it"}
    return {**entry, "where": "train", "engine": "reused " + engine.url if engine.reused else "started",
            "engine_dtype": engine.dtype, "engine_start_s": engine.start_s}


def _report(console: Console, served: str, entry: dict[str, Any]) -> None:
    from lorafleet.evaluate.forgetting_score import card_lines

    if "skipped" in entry:
        console.print(f"[yellow]forgetting not measured for {served}:[/] {entry['skipped']}", highlight=False)
        return
    for line in card_lines(entry):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    if entry.get("passed") is False:
        console.print(f"[yellow]warning:[/] {served} answers general prompts unlike its base (forgetting gate "
                      "failed; registered anyway, recorded on the card)", highlight=False)
