"""`--replicas N` on CPU: each vLLM child gets its own share of the cores (issue 18 §6), not all of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from lorafleet.serve.app import _upstreams
from lorafleet.serve.config import ServeSettings
from lorafleet.serve.vllm_child import split_binds


@pytest.mark.parametrize("cpus, children, expected", [
    ([0, 1], 2, ["0", "1"]),
    ([0, 1, 2, 3], 2, ["0-1", "2-3"]),
    ([0, 1, 2, 3, 4], 2, ["0-2", "3-4"]),
    ([2, 3, 6, 7], 2, ["2-3", "6-7"]),  # an affinity mask with holes (taskset, containers)
    ([0, 1], 3, ["0", "1", "0"]),  # more children than cores: shared round-robin
    ([0, 1, 2, 3], 1, ["all"]),
])
def test_split_binds(cpus: list[int], children: int, expected: list[str]) -> None:
    assert split_binds("all", children, cpus) == expected


def test_an_explicit_bind_is_kept_for_every_child() -> None:
    assert split_binds("0-3", 2, [0, 1, 2, 3]) == ["0-3", "0-3"]
    assert split_binds("nobind", 2, [0, 1]) == ["nobind", "nobind"]


def test_replica_children_get_disjoint_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lorafleet.serve.vllm_child.usable_cpus", lambda: [0, 1, 2, 3])
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    settings = ServeSettings(data_dir=tmp_path / "data", base_dir=base, vllm_omp_bind="all")
    _, launches = _upstreams(settings, 2)
    binds = [launch.env()["VLLM_CPU_OMP_THREADS_BIND"] for launch in launches]
    assert binds == ["0-1", "2-3"]
    _, (single,) = _upstreams(settings, 1)
    assert single.env()["VLLM_CPU_OMP_THREADS_BIND"] == "0-3"  # one child keeps every core
