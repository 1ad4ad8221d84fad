"""The registration-time engine (EngineSettings) reads the serving settings under `lorafleet serve`'s own env names,
with its defaults: a check run with other ranks, dtype or GPU share than the gateway serves with checks nothing."""

from __future__ import annotations

import pytest
from lorafleet.serve.config import FLAT_NAMES, GROUPS, ServeSettings

from lorafleet.cli.engine_session import EngineSettings
from lorafleet.config import Settings

SHARED = ("max_lora_rank", "vllm_dtype", "kv_cache_gb", "gpu_memory_utilization", "tensor_parallel_size")


@pytest.mark.parametrize("name", SHARED)
def test_a_serving_field_has_the_gateways_env_name_and_default(name: str) -> None:
    group, field = FLAT_NAMES[name]  # the gateway reads LORAFLEET_<NAME> into this group field
    assert EngineSettings.model_fields[name].default == GROUPS[group].model_fields[field].default


@pytest.mark.parametrize(("name", "raw"), [("max_lora_rank", "64"), ("vllm_dtype", "bfloat16"),
                                           ("kv_cache_gb", "6"), ("gpu_memory_utilization", "0.7"),
                                           ("tensor_parallel_size", "2")])
def test_one_env_value_reaches_both_alike(monkeypatch: pytest.MonkeyPatch, name: str, raw: str) -> None:
    monkeypatch.setenv(f"LORAFLEET_{name.upper()}", raw)
    group, field = FLAT_NAMES[name]
    engine = EngineSettings.from_core(Settings())
    assert getattr(engine, name) == getattr(getattr(ServeSettings(), group), field)
    assert getattr(engine, name) != EngineSettings.model_fields[name].default  # the env reached it
