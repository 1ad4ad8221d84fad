"""The vLLM child process: its launch line and environment (CPU detection, OpenMP binding, dtype),
the process itself, and the supervisor that restarts it when it dies.

Nothing here speaks the OpenAI API: `serve/upstream.py` holds the HTTP client the gateway uses to
reach whatever this module starts. Training and registration-time checks import `VllmLaunch` and
`VllmProcess` from here for short-lived engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from lorafleet.errors import ConfigError

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 900.0  # a CPU child on a busy 2-core machine can take minutes; the one default


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VllmLaunch:
    """How to start one vLLM OpenAI server on loopback."""

    model: Path
    served_name: str
    port: int = 0
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    max_loras: int = 4
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None
    kv_cache_gb: int = 2
    lora_plugin: bool = True
    omp_bind: str = "all"
    """VLLM_CPU_OMP_THREADS_BIND for the CPU worker: "all" (every CPU this process may use),
    "auto" (vLLM's: reserves a core per worker), "nobind", or a CPU list such as "0-3"."""
    dtype: str = "auto"
    """vLLM --dtype. "auto": float32 on vllm-cpu when the CPU lacks native bfloat16 (there a bf16
    linear falls back to a slow path, ~7x slower than float32 here), else vLLM's own default."""
    engine: str = "cpu"
    """"cpu" (vllm-cpu: CPU env, our grouped LoRA plugin) or "gpu" (vllm on CUDA: the GPU flags below,
    no CPU plugin, no CPU variables)."""
    gpu_memory_utilization: float | None = None  # --gpu-memory-utilization (GPU only); None: vLLM's 0.9
    tensor_parallel_size: int = 1  # --tensor-parallel-size (GPU only): GPUs one model is split over
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    ready_timeout: float = READY_TIMEOUT_S  # seconds to wait for /v1/models after each start
    program: list[str] = field(default_factory=lambda: [sys.executable, "-m", "vllm.entrypoints.openai.api_server"])

    def command(self) -> list[str]:
        cmd = [*self.program, "--model", str(self.model),
               "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port),
               "--enable-lora", "--max-lora-rank", str(self.max_lora_rank),
               "--max-loras", str(self.max_loras), "--disable-uvicorn-access-log"]
        if self.max_cpu_loras:
            cmd += ["--max-cpu-loras", str(self.max_cpu_loras)]
        if self.engine == "gpu":
            if self.gpu_memory_utilization is not None:
                cmd += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
            if self.tensor_parallel_size > 1:
                cmd += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        # On GPU "auto" is vLLM's own default (the CPU-build fallback to float32 is for CPUs only).
        dtype = resolve_dtype(self.dtype, cpu_build=False) if self.engine == "gpu" else resolve_dtype(self.dtype)
        if dtype is not None:
            cmd += ["--dtype", dtype]
        return cmd + list(self.extra_args)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        gpu = self.engine == "gpu"
        env.update({
            # Runtime LoRA loading is unsafe to expose: this server only listens on loopback
            # behind its own random key, and only the gateway knows that key.
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            # The key goes through the environment, never argv: any local user can read /proc/*/cmdline.
            "VLLM_API_KEY": self.api_key,
            # serve/lora_plugin holds CPU ops only: never on a GPU engine, whatever the setting.
            "LORAFLEET_LORA_PLUGIN": "1" if self.lora_plugin and not gpu else "0",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        })
        if not gpu:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.kv_cache_gb)
            env.update(omp_env(self.omp_bind, env))
        return env


def resolve_dtype(dtype: str, *, cpu_build: bool | None = None, flags: set[str] | None = None) -> str | None:
    """The --dtype to pass vLLM, None for vLLM's default; see `VllmLaunch.dtype`."""
    if dtype != "auto":
        return dtype
    if cpu_build is None:
        cpu_build = vllm_cpu_installed()
    if not cpu_build:
        return None
    return None if native_bf16(cpu_flags() if flags is None else flags) else "float32"


def vllm_cpu_installed() -> bool:
    """True when the installed vLLM is the CPU build (the `vllm-cpu` distribution)."""
    from importlib import metadata

    try:
        metadata.distribution("vllm-cpu")
    except metadata.PackageNotFoundError:
        return False
    return True


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


def native_bf16(flags: set[str]) -> bool:
    """Whether oneDNN has bf16 matmul kernels for this CPU (x86 AVX512-BF16/AMX, Arm BF16)."""
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def omp_env(bind: str, env: dict[str, str]) -> dict[str, str]:
    """The OpenMP variables for vLLM's CPU worker under one `omp_bind` setting.

    "all" becomes the explicit list of CPUs this process may run on: vLLM's own "auto" reserves
    one core per worker for its scheduler, which on a 2-core machine leaves the model ONE thread.
    "nobind" leaves placement to the OS, with as many OpenMP threads as usable CPUs unless the
    caller already chose OMP_NUM_THREADS.
    """
    if bind == "all":
        return {"VLLM_CPU_OMP_THREADS_BIND": cpu_list(usable_cpus())}
    if bind == "nobind":
        return {"VLLM_CPU_OMP_THREADS_BIND": "nobind",
                "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS") or str(len(usable_cpus()))}
    return {"VLLM_CPU_OMP_THREADS_BIND": bind}


def split_binds(bind: str, children: int, cpus: list[int] | None = None) -> list[str]:
    """One VLLM_CPU_OMP_THREADS_BIND per child. With "all", the usable CPUs are split into
    `children` disjoint runs (children bound to the same cores would fight over them; more
    children than CPUs share them round-robin); any other setting is given to every child as is."""
    if bind != "all" or children <= 1:
        return [bind] * children
    cpus = sorted(cpus if cpus is not None else usable_cpus())
    if children >= len(cpus):
        return [str(cpus[i % len(cpus)]) for i in range(children)]
    share, extra = divmod(len(cpus), children)
    binds, start = [], 0
    for i in range(children):
        size = share + (1 if i < extra else 0)
        binds.append(cpu_list(cpus[start:start + size]))
        start += size
    return binds


def usable_cpus() -> list[int]:
    """CPU ids this process may run on (its affinity mask, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cpu_list(cpus: list[int]) -> str:
    """vLLM's CPU-list syntax, runs collapsed: [0, 1, 2, 5] -> "0-2,5"."""
    parts: list[str] = []
    for cpu in sorted(set(cpus)):
        if parts and cpu == int(parts[-1].rsplit("-", 1)[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{cpu}"
        else:
            parts.append(str(cpu))
    return ",".join(parts)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the gateway (or test run) dies without stopping us."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class VllmProcess:
    """A running vLLM child: `.url`, `.api_key`, `.pid`; `stop()` ends its whole process group."""

    def __init__(self, launch: VllmLaunch) -> None:
        if launch.program[-1].startswith("vllm") and not (Path(launch.model) / "config.json").is_file():
            raise ConfigError(f"{launch.model}: not a Hugging Face model folder (no config.json)",
                              hint="run `lorafleet base prepare` or pass --base DIR")
        if launch.port == 0:
            launch.port = free_port()
        self.launch = launch
        self.url = f"http://127.0.0.1:{launch.port}"
        self.api_key = launch.api_key
        log_file = subprocess.DEVNULL
        if launch.log_path is not None:
            launch.log_path.parent.mkdir(parents=True, exist_ok=True)
            log_file = open(launch.log_path, "ab")  # noqa: SIM115 - handed to the child
        # Own session, so stop() can end vLLM's engine-core children with it.
        self.proc = subprocess.Popen(launch.command(), env=launch.env(), stdout=log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        if log_file is not subprocess.DEVNULL:
            log_file.close()
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        path = self.launch.log_path
        if path is None or not path.exists():
            return ""
        return path.read_bytes()[-chars:].decode("utf-8", "replace")

    def _probe(self) -> bool:
        try:
            resp = httpx.get(f"{self.url}/v1/models", headers={"Authorization": f"Bearer {self.api_key}"},
                             timeout=2.0)
            return resp.status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float | None = None, on_tick: Callable[[float], None] | None = None) -> None:
        """Block until the server answers /v1/models; raise ConfigError if it exits or times out
        (`timeout`: the launch's `ready_timeout` unless given)."""
        timeout = self.launch.ready_timeout if timeout is None else timeout
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if not self.alive():
                raise ConfigError(f"vLLM exited with code {self.proc.returncode} while starting",
                                  hint=f"see its log: {self.launch.log_path}\n{self.log_tail()}")
            if self._probe():
                return
            if on_tick:
                on_tick(time.monotonic() - start)
            time.sleep(1.0)
        self.stop()
        raise ConfigError(f"vLLM did not become ready within {timeout:.0f}s",
                          hint=f"see its log: {self.launch.log_path}")

    async def wait_ready_async(self, timeout: float | None = None) -> None:
        timeout = self.launch.ready_timeout if timeout is None else timeout
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if not self.alive():
                raise ConfigError(f"vLLM exited with code {self.proc.returncode} while starting",
                                  hint=f"see its log: {self.launch.log_path}")
            if await asyncio.to_thread(self._probe):
                return
            await asyncio.sleep(1.0)
        self.stop()
        raise ConfigError(f"vLLM did not become ready within {timeout:.0f}s", hint=f"see {self.launch.log_path}")

    def kill(self) -> None:
        """SIGKILL the whole process group at once (tests use this to simulate a crash)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL after `grace` seconds."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
                self.proc.wait(10)
        else:
            self.kill()  # the leader is gone; make sure its children are too


class Watched(Protocol):
    """What the supervisor tells when its child dies: the gateway's upstream for that child."""

    def mark_down(self) -> None: ...


class ChildSupervisor:
    """Keeps one vLLM child alive: if it dies, marks the upstream down and restarts it with back-off."""

    def __init__(self, launch: VllmLaunch, replica: Watched, *, ready_timeout: float | None = None) -> None:
        self.launch = launch
        self.replica = replica
        self.ready_timeout = launch.ready_timeout if ready_timeout is None else ready_timeout
        self.process: VllmProcess | None = None
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = VllmProcess(self.launch)
        log.info("started vLLM (pid %s) on %s", self.process.pid, self.process.url)
        await self.process.wait_ready_async(self.ready_timeout)
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        backoff = 1.0
        while True:
            await asyncio.sleep(0.5)
            assert self.process is not None
            if self.process.alive():
                continue
            self.replica.mark_down()
            log.error("vLLM (pid %s) exited with code %s; restarting in %.0fs",
                      self.process.pid, self.process.proc.returncode, backoff)
            self.process.kill()
            await asyncio.sleep(backoff)
            try:
                self.process = VllmProcess(self.launch)  # same port and key: the client stays valid
                self.restarts += 1
                await self.process.wait_ready_async(self.ready_timeout)
                backoff = 1.0
                log.warning("vLLM restarted (pid %s)", self.process.pid)
            except ConfigError as exc:
                log.error("vLLM restart failed: %s", exc.message)
                backoff = min(backoff * 2, 60.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.process is not None:
            await asyncio.to_thread(self.process.stop)


class ReplicaSet:
    """Several supervised vLLM children started and stopped together (`lorafleet serve --replicas N`).

    Quacks like one ChildSupervisor, so the gateway state holds either; each child keeps its own
    port, key and restart loop.
    """

    def __init__(self, supervisors: list[ChildSupervisor]) -> None:
        self.supervisors = supervisors

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self.supervisors)

    async def start(self) -> None:
        # started together: each CPU child takes a minute or more to come up
        results = await asyncio.gather(*(s.start() for s in self.supervisors), return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            await self.stop()
            raise failed

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.supervisors))
