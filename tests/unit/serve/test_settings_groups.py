"""ServeSettings is grouped, yet every public LORAFLEET_* name and flat keyword still lands in its field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lorafleet.serve.config import FLAT_NAMES, GROUPS, ServeSettings, VllmSettings, flat_name
from lorafleet.serve.vllm_child import READY_TIMEOUT_S, VllmLaunch
from pydantic import SecretStr, ValidationError

REPO = Path(__file__).resolve().parents[3]

# The names ServeSettings read when it was flat (main at 1af74d5): none may stop working.
PUBLIC_NAMES = """
HOST PORT UPSTREAMS UPSTREAM_API_KEY VARIANT_UPSTREAMS VARIANT_CHILDREN BASE_NAME MAX_LORAS MAX_LORA_RANK
HOT_SET PINS REVIEW_URL REVIEW_TOKEN REVIEW_QUEUE CAPTURE NO_AUTH LORA_PLUGIN PROBE VLLM_PROGRAM VLLM_ARGS
VLLM_READY_TIMEOUT KV_CACHE_GB VLLM_OMP_BIND VLLM_DTYPE REQUEST_TIMEOUT CONNECT_TIMEOUT MAX_BODY_BYTES
MAX_IN_FLIGHT HEALTH_INTERVAL SATURATED_AT SPREAD_AT RING_VNODES REGISTRY_TTL KEY_CACHE_TTL
FAILED_KEY_LOOKUPS_PER_MINUTE METRICS_TOKEN DRIFT DRIFT_WINDOW DRIFT_FAR_THRESHOLD DRIFT_TRAIN_MAX
CANARY_WATCH CANARY_INTERVAL REVIEW_POLL_INTERVAL DATA_DIR BASE DATABASE_URL ENGINE
GPU_MEMORY_UTILIZATION MAX_CPU_LORAS TENSOR_PARALLEL_SIZE
""".split()  # noqa: SIM905 - a word list reads better than 50 quoted names

# LORAFLEET_<name>: (env value, nested field, the value it must land as); none is the default.
SAMPLES: dict[str, tuple[str, str, object]] = {
    "vllm_program": ('["/bin/vllm", "serve"]', "vllm.program", ["/bin/vllm", "serve"]),
    "vllm_args": ('["--enforce-eager"]', "vllm.args", ["--enforce-eager"]),
    "vllm_ready_timeout": ("120", "vllm.ready_timeout", 120.0),
    "max_loras": ("3", "vllm.max_loras", 3),
    "max_lora_rank": ("32", "vllm.max_lora_rank", 32),
    "kv_cache_gb": ("5", "vllm.kv_cache_gb", 5),
    "vllm_omp_bind": ("0-1", "vllm.omp_bind", "0-1"),
    "vllm_dtype": ("bfloat16", "vllm.dtype", "bfloat16"),
    "lora_plugin": ("false", "vllm.lora_plugin", False),
    "gpu_memory_utilization": ("0.4", "vllm.gpu_memory_utilization", 0.4),
    "max_cpu_loras": ("32", "vllm.max_cpu_loras", 32),
    "tensor_parallel_size": ("2", "vllm.tensor_parallel_size", 2),
    "upstreams": ('["http://127.0.0.1:9001"]', "upstream.urls", ["http://127.0.0.1:9001"]),
    "upstream_api_key": ("up-key", "upstream.api_key", "up-key"),
    "request_timeout": ("30", "upstream.request_timeout", 30.0),
    "connect_timeout": ("1.5", "upstream.connect_timeout", 1.5),
    "variant_upstreams": ('["nf4=http://127.0.0.1:8101"]', "upstream.variant_upstreams",
                          ["nf4=http://127.0.0.1:8101"]),
    "variant_children": ("false", "upstream.variant_children", False),
    "hot_set": ("7", "routing.hot_set", 7),
    "probe": ("false", "routing.probe", False),
    "health_interval": ("0.5", "routing.health_interval", 0.5),
    "saturated_at": ("9", "routing.saturated_at", 9),
    "spread_at": ("3", "routing.spread_at", 3),
    "ring_vnodes": ("16", "routing.ring_vnodes", 16),
    "registry_ttl": ("0", "routing.registry_ttl", 0.0),
    "no_auth": ("true", "auth.no_auth", True),
    "key_cache_ttl": ("60", "auth.key_cache_ttl", 60.0),
    "failed_key_lookups_per_minute": ("2", "auth.failed_key_lookups_per_minute", 2),
    "metrics_token": ("scrape-me", "auth.metrics_token", "scrape-me"),
    "max_body_bytes": ("4096", "auth.max_body_bytes", 4096),
    "max_in_flight": ("1", "auth.max_in_flight", 1),
    "review_url": ("http://review", "review.url", "http://review"),
    "review_token": ("rev-token", "review.token", "rev-token"),
    "review_queue": ("inbox", "review.queue", "inbox"),
    "capture": ('{"support-intents": 0.25}', "review.capture", {"support-intents": 0.25}),
    "review_poll_interval": ("0", "review.poll_interval", 0.0),
    "drift": ("false", "drift_monitor.enabled", False),
    "drift_window": ("60", "drift_monitor.window", 60),
    "drift_far_threshold": ("0.5", "drift_monitor.far_threshold", 0.5),
    "drift_train_max": ("100", "drift_monitor.train_max", 100),
    "canary_watch": ("false", "canary.watch", False),
    "canary_interval": ("0.2", "canary.interval", 0.2),
}


def nested(settings: ServeSettings, path: str) -> object:
    group, name = path.split(".")
    value = getattr(getattr(settings, group), name)
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def test_every_group_field_has_one_public_flat_name() -> None:
    fields = {(group, name) for group, model in GROUPS.items() for name in model.model_fields}
    assert set(FLAT_NAMES.values()) == fields
    assert len(FLAT_NAMES) == len(fields)
    assert set(SAMPLES) == set(FLAT_NAMES)
    assert {f"{g}.{n}" for g, n in FLAT_NAMES.values()} == {path for _, path, _ in SAMPLES.values()}


def test_no_public_name_was_dropped() -> None:
    assert {f"LORAFLEET_{n}" for n in PUBLIC_NAMES} <= ServeSettings.env_names()


def test_documented_env_names_land_in_their_nested_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    documented = {n.removeprefix("LORAFLEET_").lower() for n in re.findall(r"LORAFLEET_[A-Z0-9_]*[A-Z0-9]", text)}
    gateway = documented & set(FLAT_NAMES)  # the others are other processes' (review app, train, engine)
    assert {"vllm_dtype", "vllm_omp_bind", "saturated_at", "canary_interval"} <= gateway
    for flat in sorted(gateway):
        raw, path, expected = SAMPLES[flat]
        monkeypatch.setenv(f"LORAFLEET_{flat.upper()}", raw)
    settings = ServeSettings()
    assert {flat: nested(settings, SAMPLES[flat][1]) for flat in gateway} == {
        flat: SAMPLES[flat][2] for flat in gateway}


@pytest.mark.parametrize("flat", sorted(SAMPLES))
def test_env_name_lands_in_its_nested_field(flat: str, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, path, expected = SAMPLES[flat]
    assert nested(ServeSettings(), path) != expected  # the sample differs from the default
    monkeypatch.setenv(f"LORAFLEET_{flat.upper()}", raw)
    assert nested(ServeSettings(), path) == expected


@pytest.mark.parametrize("flat", sorted(SAMPLES))
def test_flat_keyword_lands_in_its_nested_field(flat: str) -> None:
    _, path, expected = SAMPLES[flat]
    assert nested(ServeSettings(**{flat: expected}), path) == expected
    assert nested(ServeSettings().updated(**{flat: expected}), path) == expected
    assert nested(ServeSettings().with_overrides(**{flat: expected, "port": None}), path) == expected


def test_a_flat_override_wins_over_the_dumped_group() -> None:
    """How `lorafleet serve` applies its flags: the env's settings dumped, the flags flat on top."""
    env = ServeSettings(max_loras=2, vllm_dtype="float32")
    merged = ServeSettings.model_validate({**env.model_dump(), "max_loras": 5})
    assert (merged.vllm.max_loras, merged.vllm.dtype) == (5, "float32")


def test_an_explicit_group_wins_over_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLEET_VLLM_DTYPE", "float16")
    assert ServeSettings(vllm=VllmSettings(dtype="bfloat16")).vllm.dtype == "bfloat16"
    assert ServeSettings().vllm.dtype == "float16"


def test_errors_name_the_public_flat_name(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError) as err:
        ServeSettings(max_loras=0)
    assert flat_name(err.value.errors()[0]["loc"]) == "max_loras"
    monkeypatch.setenv("LORAFLEET_CAPTURE", '{"a": 2}')
    with pytest.raises(ValidationError) as err:
        ServeSettings()
    assert flat_name(err.value.errors()[0]["loc"]) == "capture"
    assert flat_name(("port",)) == "port"


def test_the_ready_timeout_is_defined_once() -> None:
    assert VllmSettings().ready_timeout == READY_TIMEOUT_S
    assert VllmLaunch(model=Path("m"), served_name="m").ready_timeout == READY_TIMEOUT_S
    defined = [path for folder in ("serve", "lorafleet", "benchmarks", "scripts")
               for path in sorted((REPO / folder).rglob("*.py"))
               if re.search(r"^READY_TIMEOUT\w* = ", path.read_text(), re.M)]
    assert [p.relative_to(REPO).as_posix() for p in defined] == ["serve/vllm_child.py"]


def test_the_child_launch_carries_the_vllm_group(tmp_path: Path) -> None:
    settings = ServeSettings(data_dir=tmp_path, vllm_args=["--a"], vllm_program=["/bin/vllm"], max_loras=2,
                             hot_set=5, vllm_ready_timeout=42, lora_plugin=False)
    launch = settings.child_launch(tmp_path / "base", "base", "vllm.log", port=8123, extra_args=["--b"])
    assert (launch.program, launch.extra_args, launch.max_loras, launch.max_cpu_loras) == (
        ["/bin/vllm"], ["--a", "--b"], 2, 5)
    assert (launch.ready_timeout, launch.lora_plugin, launch.port) == (42.0, False, 8123)
    assert launch.log_path == tmp_path / "logs" / "vllm.log"
