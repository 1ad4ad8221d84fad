"""One serving engine for the checks run at registration (fidelity, forgetting): a running vLLM reused, or
one short-lived vLLM child started with the gateway's own launcher for the whole block.

    settings = EngineSettings.from_core(core)
    with engine_session(base_dir, settings, adapters={"pirate@v1": folder}) as engine:
        engine.completions("pirate@v1", [ids, …], max_tokens=16)

It lives beside the CLI because it composes parts: the launcher is serving's, the callers are training's
and evaluation's. `base_dir` is the base the adapter is served on (for a QLoRA adapter, its matched variant).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field, SecretStr
from rich.console import Console

from lorafleet.config import Settings
from lorafleet.errors import ConfigError

REQUEST_TIMEOUT_S = 300.0


class EngineSettings(Settings):
    """Where the registration-time engine comes from; the serving fields share `lorafleet serve`'s env names."""

    engine_url: str | None = Field(default=None, description="LORAFLEET_ENGINE_URL: a running vLLM OpenAI server "
                                                              "(runtime LoRA updating on) to reuse; unset: start one.")
    engine_api_key: SecretStr | None = Field(default=None, description="LORAFLEET_ENGINE_API_KEY: that server's key "
                                                                       "(environment only, never a flag).")
    max_lora_rank: int = Field(default=16, description="LORAFLEET_MAX_LORA_RANK: the servers' --max-lora-rank.")
    vllm_dtype: str = Field(default="auto", pattern=r"^(auto|float32|bfloat16|float16)$",
                            description="LORAFLEET_VLLM_DTYPE: the dtype the gateway serves in (auto as serve).")
    kv_cache_gb: int = Field(default=2, ge=1, description="VLLM_CPU_KVCACHE_SPACE of a started engine.")
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1,
                                                 description="LORAFLEET_GPU_MEMORY_UTILIZATION (GPU engine only).")
    tensor_parallel_size: int = Field(default=1, ge=1, description="LORAFLEET_TENSOR_PARALLEL_SIZE (GPU engine only).")

    @classmethod
    def from_core(cls, core: Settings) -> EngineSettings:
        """Core settings as the CLI built them, plus this module's fields from the environment."""
        return cls(**core.model_dump())


@dataclass
class EngineSession:
    """An OpenAI-compatible vLLM server serving `base_name`, with the runtime LoRA API."""

    url: str
    api_key: str
    base_name: str
    dtype: str
    reused: bool
    start_s: float = 0.0
    loaded: list[str] = field(default_factory=list)
    client: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.api_key}"},
                                   timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=5.0))

    @property
    def endpoint(self) -> str:
        """The OpenAI `base_url` (…/v1)."""
        return f"{self.url}/v1"

    def load(self, served_name: str, path: Path) -> None:
        """Load an adapter under `served_name`; 'already loaded' counts as loaded."""
        resp = self._post("/v1/load_lora_adapter", {"lora_name": served_name, "lora_path": str(Path(path).resolve())})
        if resp.status_code == 400 and "already been loaded" in resp.text:
            return
        if resp.status_code != 200:
            raise ConfigError(f"the engine at {self.url} could not load {served_name}: "
                              f"HTTP {resp.status_code} {resp.text[:300]}",
                              hint="check the adapter is servable (rank, target modules) and the engine was "
                                   "started with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True")
        self.loaded.append(served_name)

    def unload(self, served_name: str) -> None:
        """Unload an adapter this session loaded (a 404 means it is gone already)."""
        self._post("/v1/unload_lora_adapter", {"lora_name": served_name})
        if served_name in self.loaded:
            self.loaded.remove(served_name)

    def completions(self, model: str, prompts: list[list[int]], *, max_tokens: int, logprobs: int | None = 1,
                    prompt_logprobs: int | None = None, **params: Any) -> list[dict[str, Any]]:
        """Greedy /v1/completions on token-id prompts, one request for all; the choices in prompt order."""
        body: dict[str, Any] = {"model": model, "prompt": prompts, "max_tokens": max_tokens, "temperature": 0,
                                "return_tokens_as_token_ids": True, **params}
        if logprobs is not None:
            body["logprobs"] = logprobs
        if prompt_logprobs is not None:
            body["prompt_logprobs"] = prompt_logprobs
        resp = self._post("/v1/completions", body)
        if resp.status_code != 200:
            raise ConfigError(f"the engine at {self.url} answered HTTP {resp.status_code} for {model}: "
                              f"{resp.text[:300]}", hint="see the engine's log")
        return sorted(resp.json()["choices"], key=lambda c: c["index"])

    def close(self) -> None:
        for name in list(self.loaded):
            with contextlib.suppress(ConfigError):  # the engine went away; nothing left to free
                self.unload(name)
        self.client.close()

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return self.client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ConfigError(f"the engine at {self.url} is unreachable ({exc.__class__.__name__})",
                              hint="is it running? unset LORAFLEET_ENGINE_URL to start one for the check") from None


@contextmanager
def engine_session(base_dir: Path, settings: EngineSettings, *, adapters: dict[str, Path] | None = None,
                   console: Console | None = None, log_path: Path | None = None,
                   vllm_args: list[str] | None = None, max_loras: int | None = None) -> Iterator[EngineSession]:
    """The engine for one block: LORAFLEET_ENGINE_URL reused if set, else one vLLM child, stopped at the end.

    `vllm_args`: extra launcher arguments for a started engine (e.g. a variant's `--quantization …`);
    `max_loras`: its --max-loras (default: one per adapter in `adapters`, at least 1)."""
    adapters = adapters or {}
    process = None
    # An engine that needs launch flags (a variant's bitsandbytes load) is never reused: its flags are unknown.
    session = reuse_engine(settings.engine_url.rstrip("/"), settings, base_dir, console) \
        if settings.engine_url and not vllm_args else None
    if session is None:
        process, session = start_engine(base_dir, settings, max_loras=max_loras or max(1, len(adapters)),
                                        console=console,
                                        log_path=log_path or settings.data_dir / "logs" / "engine-session.log",
                                        vllm_args=vllm_args or [])
    try:
        for name, path in adapters.items():
            session.load(name, path)
        yield session
    finally:
        session.close()
        if process is not None:
            process.stop()


def reuse_engine(url: str, settings: EngineSettings, base_dir: Path,
                 console: Console | None = None) -> EngineSession | None:
    """A running vLLM, after checking it answers; None when it serves another base than `base_dir` (then the
    caller starts one on the right base: a check is never run on another base)."""
    key = settings.engine_api_key.get_secret_value() if settings.engine_api_key else "EMPTY"
    try:
        resp = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10.0)
    except httpx.HTTPError as exc:
        raise ConfigError(f"LORAFLEET_ENGINE_URL={url} is unreachable ({exc.__class__.__name__})",
                          hint="start it, or unset LORAFLEET_ENGINE_URL to start an engine for the check") from None
    if resp.status_code != 200:
        raise ConfigError(f"LORAFLEET_ENGINE_URL={url} answered HTTP {resp.status_code} to /v1/models",
                          hint="set LORAFLEET_ENGINE_API_KEY to its key")
    models = resp.json().get("data", [])
    base = next((m for m in models if not m.get("parent")), None)
    if base is None or not _same_folder(base.get("root"), base_dir):
        if console is not None:
            console.print(f"note: LORAFLEET_ENGINE_URL={url} serves {base.get('root') if base else 'nothing'}, "
                          f"not {base_dir}: starting an engine on that base instead", highlight=False)
        return None
    dtype = settings.vllm_dtype if settings.vllm_dtype != "auto" else "unknown"
    return EngineSession(url=url, api_key=key, base_name=str(base["id"]), dtype=dtype, reused=True)


def start_engine(base_dir: Path, settings: EngineSettings, *, max_loras: int, console: Console | None,
                 log_path: Path, vllm_args: list[str] | None = None) -> tuple[Any, EngineSession]:
    """One vLLM child on loopback with a fresh random key, started by serving's launcher; (process, session)."""
    from lorafleet.serve.vllm_child import VllmLaunch, VllmProcess, resolve_dtype

    launch = VllmLaunch(model=Path(base_dir), served_name=Path(base_dir).name, max_loras=max_loras,
                        max_lora_rank=settings.max_lora_rank, kv_cache_gb=settings.kv_cache_gb,
                        dtype=settings.vllm_dtype, log_path=log_path, extra_args=list(vllm_args or []),
                        engine=settings.engine, gpu_memory_utilization=settings.gpu_memory_utilization,
                        tensor_parallel_size=settings.tensor_parallel_size)
    started = time.perf_counter()
    if console is not None:
        console.print(f"starting an engine on {base_dir} for the registration checks (log: {log_path}) …")
    process = VllmProcess(launch)
    try:
        process.wait_ready(launch.ready_timeout)  # VllmLaunch's default: the one READY_TIMEOUT_S
    except BaseException:
        process.stop()
        raise
    dtype = resolve_dtype(settings.vllm_dtype, cpu_build=False if settings.engine == "gpu" else None) \
        or _config_dtype(base_dir)
    return process, EngineSession(url=process.url, api_key=process.api_key, base_name=launch.served_name,
                                  dtype=dtype, reused=False, start_s=round(time.perf_counter() - started, 1))


def _config_dtype(base_dir: Path) -> str:
    """vLLM's default dtype on a base: the config's torch_dtype (bf16 for the embedded base)."""
    import json

    try:
        cfg = json.loads((Path(base_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return "unknown"
    return str(cfg.get("torch_dtype") or cfg.get("dtype") or "unknown")


def _same_folder(root: Any, base_dir: Path) -> bool:
    try:
        return root is not None and Path(str(root)).resolve() == Path(base_dir).resolve()
    except OSError:
        return False
