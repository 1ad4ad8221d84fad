"""The GPU engine's launch line from settings (LORAFLEET_ENGINE=gpu): --gpu-memory-utilization,
--max-cpu-loras, --tensor-parallel-size, no CPU LoRA plugin and no CPU variables; the CPU line as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lorafleet.serve import vllm_child
from lorafleet.serve.config import ServeSettings
from lorafleet.serve.variants import variant_launch
from lorafleet.serve.vllm_child import VllmLaunch
from pydantic import ValidationError

from lorafleet.base_variants import VLLM_BNB_ARGS, serving_base
from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo, TrainedOn
from lorafleet.errors import ConfigError

GPU_ENV = {"LORAFLEET_ENGINE": "gpu", "LORAFLEET_GPU_MEMORY_UTILIZATION": "0.8", "LORAFLEET_MAX_CPU_LORAS": "64",
           "LORAFLEET_TENSOR_PARALLEL_SIZE": "2"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [*GPU_ENV, "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "LORAFLEET_LORA_PLUGIN"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LORAFLEET_DATA_DIR", str(tmp_path / "data"))


def value(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


def test_cpu_launch_is_unchanged_and_ignores_the_gpu_flags() -> None:
    launch = VllmLaunch(model=Path("/m"), served_name="b", max_cpu_loras=16, gpu_memory_utilization=0.5,
                        tensor_parallel_size=2)
    command, env = launch.command(), launch.env()
    assert "--gpu-memory-utilization" not in command and "--tensor-parallel-size" not in command
    assert value(command, "--max-cpu-loras") == "16"
    assert env["LORAFLEET_LORA_PLUGIN"] == "1" and env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert "VLLM_CPU_OMP_THREADS_BIND" in env


def test_gpu_launch_has_the_gpu_flags_and_no_cpu_plugin() -> None:
    launch = VllmLaunch(model=Path("/m"), served_name="b", engine="gpu", max_cpu_loras=32,
                        gpu_memory_utilization=0.85, tensor_parallel_size=2, lora_plugin=True)
    command, env = launch.command(), launch.env()
    assert value(command, "--gpu-memory-utilization") == "0.85"
    assert value(command, "--tensor-parallel-size") == "2"
    assert value(command, "--max-cpu-loras") == "32"
    assert env["LORAFLEET_LORA_PLUGIN"] == "0"  # the plugin's ops are CPU ops
    assert "VLLM_CPU_KVCACHE_SPACE" not in env and "VLLM_CPU_OMP_THREADS_BIND" not in env


def test_gpu_leaves_out_unset_flags() -> None:
    command = VllmLaunch(model=Path("/m"), served_name="b", engine="gpu").command()
    assert "--gpu-memory-utilization" not in command and "--tensor-parallel-size" not in command


def test_auto_dtype_on_gpu_is_vllms_default_not_the_cpu_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_child, "vllm_cpu_installed", lambda: True)
    monkeypatch.setattr(vllm_child, "cpu_flags", lambda: set())  # no native bf16: the CPU line says float32
    assert value(VllmLaunch(model=Path("/m"), served_name="b").command(), "--dtype") == "float32"
    assert "--dtype" not in VllmLaunch(model=Path("/m"), served_name="b", engine="gpu").command()


def test_env_settings_reach_the_gateways_child_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, val in GPU_ENV.items():
        monkeypatch.setenv(name, val)
    launch = ServeSettings().child_launch(Path("/m"), "b", "vllm.log", port=1)
    command = launch.command()
    assert launch.engine == "gpu"
    assert value(command, "--gpu-memory-utilization") == "0.8"
    assert value(command, "--max-cpu-loras") == "64"
    assert value(command, "--tensor-parallel-size") == "2"
    assert launch.env()["LORAFLEET_LORA_PLUGIN"] == "0"


def test_default_max_cpu_loras_is_as_before() -> None:
    launch = ServeSettings(hot_set=16, max_loras=4).child_launch(Path("/m"), "b", "vllm.log", port=1)
    assert value(launch.command(), "--max-cpu-loras") == "16"
    assert launch.engine == "cpu" and launch.env()["LORAFLEET_LORA_PLUGIN"] == "1"


def test_max_cpu_loras_below_max_loras_is_refused_before_start(tmp_path: Path) -> None:
    settings = ServeSettings(max_loras=8, max_cpu_loras=4, upstreams=["http://127.0.0.1:1"])
    with pytest.raises(ConfigError, match="max_cpu_loras 4 is below max_loras 8") as err:
        settings.check()
    assert "LORAFLEET_MAX_CPU_LORAS" in (err.value.hint or "")


@pytest.mark.parametrize("field", [{"gpu_memory_utilization": 1.5}, {"gpu_memory_utilization": 0},
                                   {"tensor_parallel_size": 0}, {"max_cpu_loras": 0}])
def test_bad_gpu_settings(field: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        ServeSettings(**field)


def test_nf4_variant_on_gpu_is_bitsandbytes_with_the_gpu_flags(tmp_path: Path) -> None:
    base = tmp_path / "base-model"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    settings = ServeSettings(base=base, engine="gpu", gpu_memory_utilization=0.4)
    twin = settings.data_dir / "base" / f"{base.resolve().name}-nf4"
    twin.mkdir(parents=True)
    (twin / "config.json").write_text("{}")
    card = AdapterCard(name="q", version="v1", base=BaseModelRef(id="b"), trained_on=TrainedOn(variant="nf4"),
                       lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj"], quantization="nf4"))
    launch = variant_launch(settings, serving_base(card, base=base, data_dir=settings.data_dir,
                                                   engine=settings.engine), "b")
    command = launch.command()
    assert " ".join(VLLM_BNB_ARGS) in " ".join(command)
    assert value(command, "--model") == str(base.resolve())
    assert value(command, "--gpu-memory-utilization") == "0.4"
    assert launch.env()["LORAFLEET_LORA_PLUGIN"] == "0"


def test_registration_engine_on_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lorafleet.cli.engine_session import EngineSettings, start_engine

    seen: list[VllmLaunch] = []

    class FakeProcess:
        url, api_key = "http://127.0.0.1:1", "k"

        def __init__(self, launch: VllmLaunch) -> None:
            seen.append(launch)

        def wait_ready(self, timeout: float) -> None:
            pass

    monkeypatch.setattr(vllm_child, "VllmProcess", FakeProcess)
    for name, val in GPU_ENV.items():
        monkeypatch.setenv(name, val)
    _, session = start_engine(tmp_path / "base", EngineSettings(), max_loras=2, console=None,
                              log_path=tmp_path / "e.log", vllm_args=list(VLLM_BNB_ARGS))
    command = seen[0].command()
    assert value(command, "--gpu-memory-utilization") == "0.8" and value(command, "--tensor-parallel-size") == "2"
    assert " ".join(VLLM_BNB_ARGS) in " ".join(command)
    assert seen[0].env()["LORAFLEET_LORA_PLUGIN"] == "0"
    assert session.dtype == "unknown"  # vLLM's default on GPU: the base config's (none here)
