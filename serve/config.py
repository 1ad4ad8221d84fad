"""Gateway settings: core Settings plus what `lorafleet serve` needs; CLI flags go on top."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from lorafleet.serve.vllm_child import READY_TIMEOUT_S, VllmLaunch
from pydantic import Field, SecretStr, field_validator

from lorafleet.config import Settings
from lorafleet.errors import ConfigError

LOOPBACK_NAMES = {"localhost"}
SERVED_VARIANTS = ("nf4",)  # base variants an upstream may be named for (the gateway's own base is the other)


class ServeSettings(Settings):
    """Everything the gateway process reads, from LORAFLEET_* env vars and `lorafleet serve` flags."""

    host: str = Field(default="127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(default=8000, ge=0, le=65535)
    upstreams: list[str] = Field(default_factory=list,
                                 description="Existing vLLM servers; empty: start one as a child process.")
    upstream_api_key: SecretStr | None = Field(default=None, description="API key of the --upstream servers.")
    # Base variants (serve/variants.py): QLoRA adapters are served on the nf4 variant they were trained on.
    variant_upstreams: list[str] = Field(
        default_factory=list, description="LORAFLEET_VARIANT_UPSTREAMS: VARIANT=URL, an existing vLLM serving that "
                                          "base variant (nf4: the base's nf4 twin, or the base with --quantization "
                                          "bitsandbytes on GPU); repeat for replicas.")
    variant_children: bool = Field(default=True,
                                   description="LORAFLEET_VARIANT_CHILDREN: start a supervised vLLM child for a "
                                               "variant without --variant-upstream the first time one of its "
                                               "adapters is asked for (only when the gateway starts its own vLLM).")
    base_name: str | None = Field(default=None, description="Model name of the base; default: its folder name.")
    max_loras: int = Field(default=4, ge=1, description="Adapters in one vLLM batch (--max-loras).")
    max_lora_rank: int = Field(default=16, description="vLLM --max-lora-rank.")
    hot_set: int = Field(default=16, ge=1, description="Adapters kept loaded per upstream (LRU beyond).")
    pins: list[str] = Field(default_factory=list, description="Adapter refs loaded at start and never evicted.")
    review_url: str | None = Field(default=None, description="Human-review app base URL for capture.")
    review_token: SecretStr | None = None
    review_queue: str = Field(default="capture", description="Review queue captured samples go to.")
    capture: dict[str, float] = Field(default_factory=dict,
                                      description="Adapter name → sample rate in [0, 1] sent to review.")
    no_auth: bool = Field(default=False, description="Serve without keys (loopback host only).")
    lora_plugin: bool = Field(default=True, description="Passed to the vLLM child as LORAFLEET_LORA_PLUGIN.")
    probe: bool = Field(default=True, description="After a load, warn if the adapter output equals the base's.")
    vllm_program: list[str] = Field(default_factory=list,
                                    description="Command that starts vLLM's OpenAI server; default: "
                                                "this Python's `-m vllm.entrypoints.openai.api_server`.")
    vllm_args: list[str] = Field(default_factory=list, description="Extra arguments for the vLLM child.")
    vllm_ready_timeout: float = Field(default=READY_TIMEOUT_S, gt=0,
                                      description="Seconds a vLLM child may take to answer after each start.")
    kv_cache_gb: int = Field(default=2, ge=1, description="VLLM_CPU_KVCACHE_SPACE for the CPU child.")
    # GPU children (LORAFLEET_ENGINE=gpu): the flags a 7-8B base needs; ignored on the CPU engine.
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0, le=1, description="LORAFLEET_GPU_MEMORY_UTILIZATION: share of GPU memory a vLLM child "
                                              "takes (--gpu-memory-utilization); unset: vLLM's 0.9. GPU only.")
    max_cpu_loras: int | None = Field(
        default=None, ge=1, description="LORAFLEET_MAX_CPU_LORAS: adapters vLLM keeps in host memory "
                                        "(--max-cpu-loras, >= max_loras); unset: max(hot_set, max_loras).")
    tensor_parallel_size: int = Field(
        default=1, ge=1, description="LORAFLEET_TENSOR_PARALLEL_SIZE: GPUs one vLLM child splits the base over "
                                     "(--tensor-parallel-size). GPU only.")
    vllm_omp_bind: str = Field(default="all", pattern=r"^(all|auto|nobind|[0-9,|-]+)$",
                               description="VLLM_CPU_OMP_THREADS_BIND for the CPU child: all (every usable "
                                           "CPU; 1.9x vLLM's auto on 2 cores), auto, nobind or a CPU list.")
    vllm_dtype: str = Field(default="auto", pattern=r"^(auto|float32|bfloat16|float16)$",
                            description="vLLM --dtype; auto: float32 on vllm-cpu without native bf16.")
    request_timeout: float = Field(default=600.0, gt=0, description="Seconds an upstream may take to answer.")
    connect_timeout: float = Field(default=5.0, gt=0)
    max_body_bytes: int = Field(default=2_000_000, ge=1024)
    max_in_flight: int = Field(default=512, ge=1, description="Requests in flight before 503.")
    health_interval: float = Field(default=2.0, gt=0, description="Seconds between upstream health checks.")
    # Replica routing (several --upstream/--replicas). Load = requests the gateway has in flight on
    # a replica + vLLM's own waiting queue (vllm:num_requests_waiting, read at each health check).
    saturated_at: int = Field(default=64, ge=1,
                              description="LORAFLEET_SATURATED_AT: a replica whose load reaches this is "
                                          "saturated; adapters homed there spill to the least-loaded replica.")
    spread_at: int = Field(default=16, ge=1,
                           description="LORAFLEET_SPREAD_AT: an adapter with this many requests in flight on "
                                       "its home replica is shared with the next replica on the hash ring.")
    ring_vnodes: int = Field(default=64, ge=1, le=4096,
                             description="LORAFLEET_RING_VNODES: points per replica on the consistent-hash "
                                         "ring; more points, more even spread of adapters over replicas.")
    registry_ttl: float = Field(default=2.0, ge=0, description="Seconds a resolved alias is cached.")
    key_cache_ttl: float = Field(default=5.0, ge=0, description="Seconds a verified key is cached.")
    failed_key_lookups_per_minute: int = Field(default=60, ge=1,
                                               description="LORAFLEET_FAILED_KEY_LOOKUPS_PER_MINUTE: unknown keys one "
                                                           "client address may try a minute; then 429.")
    metrics_token: SecretStr | None = Field(default=None,
                                            description="LORAFLEET_METRICS_TOKEN: bearer token /metrics needs (an "
                                                        "admin key works too); unset: /metrics is open on a loopback "
                                                        "host only.")
    # Live drift (serve/drift.py) and review grades of captured samples (serve/review_grades.py).
    drift: bool = Field(default=True, description="LORAFLEET_DRIFT: measure input/output drift per adapter version.")
    drift_window: int = Field(default=200, ge=10, le=100_000,
                              description="LORAFLEET_DRIFT_WINDOW: requests per version the drift gauges cover.")
    drift_far_threshold: float = Field(default=0.3, gt=0, lt=1,
                                       description="LORAFLEET_DRIFT_FAR_THRESHOLD: a prompt is far when no training "
                                                   "prompt shares this MinHash word-set Jaccard with it.")
    drift_train_max: int = Field(default=5000, ge=10,
                                 description="LORAFLEET_DRIFT_TRAIN_MAX: training prompts indexed per version.")
    # Canary watch (serve/canary.py): the window and thresholds come from the canary record (the policy).
    canary_watch: bool = Field(default=True, description="LORAFLEET_CANARY_WATCH: compare running canaries with "
                                                         "their stable versions and roll a breaching one back.")
    canary_interval: float = Field(default=10.0, ge=0,
                                   description="LORAFLEET_CANARY_INTERVAL: seconds between the watcher's rounds "
                                               "(read the canaries, judge, record progress); 0: no rounds.")
    review_poll_interval: float = Field(default=60.0, ge=0,
                                        description="LORAFLEET_REVIEW_POLL_INTERVAL: seconds between reads of the "
                                                    "capture queue's grades (needs the admin token); 0: off.")

    @field_validator("capture")
    @classmethod
    def _rates(cls, value: dict[str, float]) -> dict[str, float]:
        for name, rate in value.items():
            if not 0 <= rate <= 1:
                raise ValueError(f"capture rate of {name!r} is {rate}; use a number in [0, 1]")
        return value

    @field_validator("variant_upstreams")
    @classmethod
    def _variant_upstreams(cls, value: list[str]) -> list[str]:
        for item in value:
            variant, sep, url = item.partition("=")
            if not sep or not url.startswith(("http://", "https://")) or variant not in SERVED_VARIANTS:
                raise ValueError(f"--variant-upstream {item!r}: use VARIANT=URL with VARIANT one of "
                                 f"{', '.join(SERVED_VARIANTS)}, e.g. nf4=http://127.0.0.1:8101")
        return value

    def variant_upstream_urls(self) -> dict[str, list[str]]:
        """--variant-upstream VARIANT=URL, grouped by variant."""
        urls: dict[str, list[str]] = {}
        for item in self.variant_upstreams:
            variant, _, url = item.partition("=")
            urls.setdefault(variant, []).append(url)
        return urls

    @property
    def spool_path(self) -> Path:
        return self.data_dir / "capture-spool.jsonl"

    def child_launch(self, model: Path, served_name: str, log_name: str, *, port: int,
                     extra_args: list[str] | None = None) -> VllmLaunch:
        """How the gateway starts a vLLM child: the one place these settings become a launch line."""
        launch = VllmLaunch(model=model, served_name=served_name, max_loras=self.max_loras,
                            max_lora_rank=self.max_lora_rank,
                            max_cpu_loras=self.max_cpu_loras or max(self.hot_set, self.max_loras),
                            kv_cache_gb=self.kv_cache_gb, lora_plugin=self.lora_plugin, omp_bind=self.vllm_omp_bind,
                            dtype=self.vllm_dtype, engine=self.engine,
                            gpu_memory_utilization=self.gpu_memory_utilization,
                            tensor_parallel_size=self.tensor_parallel_size,
                            extra_args=[*self.vllm_args, *(extra_args or [])], port=port,
                            log_path=self.data_dir / "logs" / log_name, ready_timeout=self.vllm_ready_timeout)
        if self.vllm_program:
            launch.program = list(self.vllm_program)
        return launch

    def check(self, *, child: bool = True) -> None:
        """Refuse unsafe combinations before anything starts (`child`: vLLM will be started here)."""
        if self.no_auth and not is_loopback(self.host):
            raise ConfigError(f"--no-auth with host {self.host!r}",
                              hint="--no-auth is only allowed on a loopback host such as 127.0.0.1")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ConfigError(f"max_cpu_loras {self.max_cpu_loras} is below max_loras {self.max_loras}",
                              hint="vLLM refuses that: set LORAFLEET_MAX_CPU_LORAS >= --max-loras, or leave it unset")
        if self.capture and not self.review_url:
            raise ConfigError("capture is on but no review URL is set", hint="pass --review-url URL")
        if child and not self.upstreams and not self.vllm_program and not (self.base_dir / "config.json").is_file():
            raise ConfigError(f"{self.base_dir}: no base model here (no config.json)",
                              hint="run `lorafleet base prepare`, pass --base DIR, or --upstream URL")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
