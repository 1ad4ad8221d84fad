"""What `lorafleet train` checks between saving an adapter and registering it, through the serving engine:
the fidelity check (lorafleet.cli.fidelity). The recipe calls the function built here, so training never
imports serving."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console

from lorafleet.cli.engine_session import EngineSettings
from lorafleet.config import Settings
from lorafleet.errors import ConfigError, RegistryError


def registration_checks(core: Settings, *, force: bool, skip: bool, console: Console,
                        forgetting: bool | None = None) -> Callable[[Any], dict[str, Any]]:
    """The recipe's `checks`: takes a RegistrationCheck, returns card fields, raises to refuse registration.
    Fidelity and forgetting (lorafleet.cli.forgetting; `forgetting` overrides LORAFLEET_FORGETTING_CHECK) share
    one engine session."""
    from lorafleet.cli.forgetting import ForgettingSettings, train_forgetting

    settings = EngineSettings.from_core(core)
    forgetting_settings = ForgettingSettings(**core.model_dump())
    if forgetting is not None:
        forgetting_settings = forgetting_settings.model_copy(update={"forgetting_check": forgetting})

    def run(check: Any) -> dict[str, Any]:
        if skip and not forgetting_settings.forgetting_check:
            return {"fidelity": {"skipped": "--skip-fidelity"}}
        from lorafleet.cli.engine_session import engine_session

        served = serving_base(check, settings)  # where the gateway will serve it: QLoRA on its nf4 twin
        if skip:  # forgetting only: an engine that will not start is recorded, never a failed training run
            try:
                with engine_session(served.path, settings, console=console, vllm_args=served.vllm_args) as engine:
                    return {"fidelity": {"skipped": "--skip-fidelity"},
                            **train_forgetting(check, engine, forgetting_settings, console, served=served)}
            except ConfigError as exc:
                return {"fidelity": {"skipped": "--skip-fidelity"},
                        "forgetting": {"skipped": f"no engine: {exc.message}"}}
        with engine_session(served.path, settings, console=console, vllm_args=served.vllm_args) as engine:
            fields = fidelity_fields(check, engine, served)
            return {**fields, **train_forgetting(check, engine, forgetting_settings, console, served=served)}

    def fidelity_fields(check: Any, engine: Any, served: Any) -> dict[str, Any]:
        from lorafleet.cli.fidelity import PROBES, check_fidelity
        from lorafleet.train.fidelity import probe_messages

        messages = probe_messages(check.probes, PROBES) if check.probes else None
        try:
            result = check_fidelity(check.adapter_dir, served.path, settings, messages=messages, force=force,
                                    what=check.name, console=console, engine=engine, reference_base=served.hf_path)
        except RegistryError as exc:
            raise RegistryError(exc.message, hint=f"{exc.hint}; the trained adapter stays in {check.adapter_dir} "
                                                  f"(`lorafleet adapters import {check.adapter_dir} --name "
                                                  f"{check.name} --force` registers it)") from None
        console.print(fidelity_summary(result.model_dump()), highlight=False)
        return {"fidelity": result.model_dump()}

    return run


def serving_base(check: Any, settings: Settings) -> Any:
    """The base the adapter will be served on (lorafleet.base_variants.ServingBase): for QLoRA its nf4 twin
    (CPU) or vLLM's bitsandbytes load of the base (GPU), so the checks measure what the gateway will serve."""
    from lorafleet.base_variants import serving_base as resolve
    from lorafleet.base_variants import trained_on
    from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo

    # The card is not built yet: a stand-in carries what the resolver reads (trained_on).
    card = AdapterCard(name=check.name, version="v0", base=BaseModelRef(id=str(check.base)),
                       lora=LoraInfo(rank=1, alpha=1, target_modules=[]),
                       trained_on=trained_on(check.base, qlora=check.qlora, data_dir=settings.data_dir))
    return resolve(card, base=check.base, data_dir=settings.data_dir, engine=settings.engine)


def fidelity_summary(f: dict[str, Any]) -> str:
    """One line for the training log."""
    verdict = "passed" if f["passed"] else "FAILED (--force: registered anyway)"
    secs = f.get("seconds", {})
    return (f"fidelity {verdict}: token agreement {f['token_agreement']:.3f}, mean |Δ logprob| "
            f"{f['mean_abs_logprob_diff']:.4f}, max {f['max_abs_logprob_diff']:.3f} over {f['tokens']} tokens "
            f"({f['engine_dtype']} engine, {secs.get('engine_start', 0):.0f} s start + {secs.get('check', 0):.0f} s)")
