"""The vLLM child's CPU settings: OpenMP thread binding and dtype, as the launcher hands them over."""

from __future__ import annotations

from pathlib import Path

import pytest
from lorafleet.serve import vllm_child
from lorafleet.serve.config import ServeSettings
from lorafleet.serve.vllm_child import VllmLaunch, cpu_list, native_bf16, omp_env, resolve_dtype


@pytest.fixture
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_child.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)


def launch(**kwargs) -> VllmLaunch:
    return VllmLaunch(model=Path("/m"), served_name="b", **kwargs)


def test_default_binds_the_worker_to_every_usable_cpu(two_cpus, monkeypatch: pytest.MonkeyPatch) -> None:
    # vLLM's own "auto" reserves one of two cores and computes on one thread: measured 2x slower
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "auto")  # an inherited value does not win
    env = launch().env()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"


def test_all_follows_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_child.os, "sched_getaffinity", lambda _pid: {2, 3, 4, 7}, raising=False)
    assert launch(omp_bind="all").env()["VLLM_CPU_OMP_THREADS_BIND"] == "2-4,7"


def test_nobind_sets_thread_count_unless_given(two_cpus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = launch(omp_bind="nobind").env()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert env["OMP_NUM_THREADS"] == "2"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert launch(omp_bind="nobind").env()["OMP_NUM_THREADS"] == "1"


@pytest.mark.parametrize("bind", ["auto", "0-3", "0,2|1,3"])
def test_vllm_values_pass_through(bind: str) -> None:
    assert omp_env(bind, {}) == {"VLLM_CPU_OMP_THREADS_BIND": bind}


@pytest.mark.parametrize(("cpus", "text"), [([0], "0"), ([0, 1], "0-1"), ([1, 0, 1], "0-1"),
                                            ([0, 1, 2, 5, 7, 8], "0-2,5,7-8"), ([3, 5], "3,5")])
def test_cpu_list_syntax(cpus: list[int], text: str) -> None:
    assert cpu_list(cpus) == text


def test_dtype_auto_is_float32_on_cpu_build_without_native_bf16() -> None:
    assert resolve_dtype("auto", cpu_build=True, flags={"avx2", "fma"}) == "float32"
    assert resolve_dtype("auto", cpu_build=True, flags={"avx512f", "avx512_bf16"}) is None
    assert resolve_dtype("auto", cpu_build=True, flags={"amx_bf16"}) is None
    assert resolve_dtype("auto", cpu_build=False, flags=set()) is None  # GPU vLLM: its own default
    assert resolve_dtype("bfloat16", cpu_build=True, flags=set()) == "bfloat16"
    assert not native_bf16(set())


def test_dtype_reaches_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    cmd = launch(dtype="bfloat16").command()
    assert cmd[cmd.index("--dtype") + 1] == "bfloat16"
    monkeypatch.setattr(vllm_child, "vllm_cpu_installed", lambda: False)
    assert "--dtype" not in launch().command()


def test_serve_settings_carry_bind_and_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLEET_VLLM_OMP_BIND", "nobind")
    monkeypatch.setenv("LORAFLEET_VLLM_DTYPE", "bfloat16")
    settings = ServeSettings()
    assert (settings.vllm.omp_bind, settings.vllm.dtype) == ("nobind", "bfloat16")
    monkeypatch.delenv("LORAFLEET_VLLM_OMP_BIND")
    monkeypatch.delenv("LORAFLEET_VLLM_DTYPE")
    defaults = ServeSettings()
    assert (defaults.vllm.omp_bind, defaults.vllm.dtype) == (launch().omp_bind, launch().dtype)
