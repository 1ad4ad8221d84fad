"""deploy/compose.yaml: valid against the Compose specification schema, and wired safely.

The schema (compose-spec.json, Apache-2.0) is the Compose Specification's own
`schema/compose-spec.json`, shipped here so the test needs no network.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache

import jsonschema
import pytest
import yaml

from tests.unit.deploy.paths import COMPOSE, COMPOSE_GPU, COMPOSE_SCHEMA, DEPLOY

SECRET_NAME = re.compile(r"(KEY|TOKEN|PASSWORD|SECRET)", re.IGNORECASE)
REQUIRED_VAR = re.compile(r"\$\{\w+:\?[^}]*\}")


@cache
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def schema_errors(doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator().iter_errors(doc)]


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=lambda p: p.name)
def test_valid_against_the_compose_spec(path) -> None:
    assert schema_errors(yaml.safe_load(path.read_text())) == []


def test_schema_rejects_a_misspelled_key() -> None:
    doc = compose()
    broken = copy.deepcopy(doc)
    broken["services"]["vllm"]["helthcheck"] = broken["services"]["vllm"].pop("healthcheck")
    assert any("helthcheck" in e for e in schema_errors(broken))


def test_the_services_of_the_stack() -> None:
    assert set(compose()["services"]) == {"vllm", "gateway", "review", "postgres", "prometheus", "grafana"}


def test_vllm_is_reachable_only_from_the_gateway_and_prometheus() -> None:
    doc = compose()
    services, networks = doc["services"], doc["networks"]
    vllm = services["vllm"]
    assert "ports" not in vllm and "network_mode" not in vllm
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    for net in vllm["networks"]:
        assert networks[net].get("internal") is True, f"vLLM joins non-internal network {net}"
        members = {name for name, svc in services.items() if net in svc.get("networks", [])}
        assert members <= {"vllm", "gateway", "prometheus"}, f"{net} exposes vLLM to {members}"


def test_postgres_is_internal_only() -> None:
    doc = compose()
    pg = doc["services"]["postgres"]
    assert "ports" not in pg
    assert all(doc["networks"][n].get("internal") is True for n in pg["networks"])


def test_gateway_points_at_vllm_and_shares_the_registry() -> None:
    services = compose()["services"]
    gateway, vllm = services["gateway"], services["vllm"]
    command = gateway["command"]
    assert command[:1] == ["serve"]
    assert command[command.index("--upstream") + 1] == "http://vllm:8000"
    assert vllm["command"][vllm["command"].index("--port") + 1] == "8000"
    assert "--enable-lora" in vllm["command"]
    assert gateway["environment"]["LORAFLEET_DATA_DIR"] == "/data"
    # The gateway hands vLLM paths under /data/registry: both see the same volume at /data.
    assert "registry:/data" in gateway["volumes"]
    assert "registry:/data:ro" in vllm["volumes"]
    assert set(gateway["networks"]) & set(vllm["networks"])
    assert gateway["depends_on"]["vllm"]["condition"] == "service_healthy"


def test_every_service_has_a_healthcheck() -> None:
    for name, svc in compose()["services"].items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_no_secret_is_written_in_the_compose_file() -> None:
    for name, svc in compose()["services"].items():
        for var, value in (svc.get("environment") or {}).items():
            value = str(value)
            if SECRET_NAME.search(var) or re.search(r"://[^/@\s]+:[^/@\s]+@", value):
                assert REQUIRED_VAR.search(value) or value in {"", "${LORAFLEET_REVIEW_TOKEN:-}"}, (
                    f"{name}.{var} must come from the environment (${{VAR:?…}}), not the file")
        assert "--api-key" not in json.dumps(svc.get("command", "")), f"{name}: key on a command line"


def test_published_ports_bind_to_loopback_by_default() -> None:
    for name, svc in compose()["services"].items():
        for port in svc.get("ports", []):
            assert re.match(r"\$\{\w+:-127\.0\.0\.1\}:\d+:\d+$", port), f"{name} publishes {port} on all interfaces"


def test_mounted_files_and_dockerfiles_exist() -> None:
    for name, svc in compose()["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
        if build := svc.get("build"):
            dockerfile = re.sub(r"\$\{\w+:-([^}]+)\}", r"\1", build["dockerfile"])
            assert (DEPLOY / build["context"] / dockerfile).is_file(), f"{name}: no {dockerfile}"


def test_grafana_is_provisioned_from_the_repo() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("."))
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/lorafleet.yaml").read_text())
    assert mounts["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


def test_prometheus_scrapes_the_gateway_and_vllm() -> None:
    doc = compose()
    prom = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"gateway:8000", "vllm:8000"}
    for rule_file in prom["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file.removeprefix("/etc/prometheus/")).is_file()
    nets = set(doc["services"]["prometheus"]["networks"])
    assert nets & set(doc["services"]["vllm"]["networks"]) and nets & set(doc["services"]["gateway"]["networks"])


def test_env_example_lists_every_required_variable() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text() + COMPOSE_GPU.read_text()))
    documented = set(re.findall(r"^#?\s*(\w+)=", (DEPLOY / "env.example").read_text(), re.MULTILINE))
    assert required and required <= documented, required - documented
