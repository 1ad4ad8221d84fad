"""deploy/k8s: overlays render with kustomize and every object validates against the Kubernetes
OpenAPI schemas bundled in kubernetes-validate (strict: unknown fields fail); then the wiring."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest

from tests.unit.deploy import kustomize
from tests.unit.deploy.paths import K8S, OVERLAYS, load_yaml_docs

K8S_VERSION = "1.33"
NAMESPACE = "lorafleet"
SECRET = "lorafleet-secrets"
CLUSTER_SCOPED = {"Namespace"}
SERVICEMONITOR_SCHEMA = Path(__file__).with_name("servicemonitor-schema.json")

needs_kustomize = pytest.mark.skipif(
    kustomize.renderer() is None,
    reason="no kustomize >= v4 (a `kustomize` binary or `kubectl kustomize`) on PATH; "
           "test_base_manifests_validate still checks every complete manifest unrendered")


def validate(doc: dict) -> None:
    """kubernetes-validate for built-in kinds, the ServiceMonitor subset schema for the CRD."""
    if doc["kind"] == "ServiceMonitor":
        jsonschema.validate(doc, json.loads(SERVICEMONITOR_SCHEMA.read_text()))
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def describe(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    if kustomize.renderer() is None:
        pytest.skip("no kustomize >= v4 on PATH")
    return request.param, kustomize.render(K8S / "overlays" / request.param)


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in {"Deployment", "StatefulSet"}]


def containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_base_manifests_validate() -> None:
    """Runs with or without kustomize: every complete manifest file, as written."""
    files = sorted((K8S / "base").glob("*.yaml")) + sorted((K8S / "components").rglob("*.yaml"))
    docs = [d for f in files if f.name != "kustomization.yaml" for d in load_yaml_docs(f)]
    assert {"StatefulSet", "Deployment", "Service", "HorizontalPodAutoscaler", "NetworkPolicy",
            "ServiceMonitor", "PersistentVolumeClaim"} <= {d["kind"] for d in docs}
    for doc in docs:
        validate(doc)


def test_validation_rejects_a_misspelled_field() -> None:
    doc = load_yaml_docs(K8S / "base" / "gateway.yaml")[1]
    broken = copy.deepcopy(doc)
    broken["spec"]["replica"] = broken["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)
    monitor = copy.deepcopy(load_yaml_docs(K8S / "base" / "servicemonitor.yaml")[0])
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


@needs_kustomize
def test_overlay_renders_and_validates(rendered) -> None:
    name, docs = rendered
    assert len(docs) >= 15
    for doc in docs:
        try:
            validate(doc)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            raise AssertionError(f"{name}: {describe(doc)}: {exc.message}") from None


@needs_kustomize
def test_everything_lands_in_one_namespace_with_labels(rendered) -> None:
    _, docs = rendered
    for doc in docs:
        meta = doc["metadata"]
        if doc["kind"] not in CLUSTER_SCOPED:
            assert meta.get("namespace") == NAMESPACE, describe(doc)
        assert meta.get("labels", {}).get("app.kubernetes.io/part-of") == "lorafleet", describe(doc)


@needs_kustomize
def test_services_select_pods_and_name_their_ports(rendered) -> None:
    _, docs = rendered
    for svc in by_kind(docs, "Service"):
        selector = svc["spec"]["selector"]
        matched = [w for w in workloads(docs)
                   if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matched) == 1, f"Service/{svc['metadata']['name']} selects {len(matched)} workloads"
        ports = {p["name"] for c in containers(matched[0]) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{describe(svc)} targets missing port {port['targetPort']}"


@needs_kustomize
def test_referenced_objects_exist(rendered) -> None:
    _, docs = rendered
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for workload in workloads(docs):
        pod = workload["spec"]["template"]["spec"]
        templates = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        mounted = {m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"] for v in pod.get("volumes", [])}
        assert mounted <= volumes | templates, f"{describe(workload)} mounts undeclared volumes"
        for volume in pod.get("volumes", []):
            if claim := volume.get("persistentVolumeClaim"):
                assert ("PersistentVolumeClaim", claim["claimName"]) in names, claim
            if cm := volume.get("configMap"):
                assert ("ConfigMap", cm["name"]) in names, cm
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) in names


@needs_kustomize
def test_vllm_is_ready_on_health_and_reads_the_shared_registry(rendered) -> None:
    name, docs = rendered
    vllm = one(docs, "StatefulSet", "vllm")
    (container,) = containers(vllm)
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    env = env_of(container)
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == SECRET
    assert "--enable-lora" in container["args"]
    assert container["args"][container["args"].index("--model") + 1] == "/models/base"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["registry"]["mountPath"] == "/data" and mounts["registry"]["readOnly"] is True
    gateway = one(docs, "Deployment", "gateway")
    gw_mounts = {m["name"]: m for m in containers(gateway)[0]["volumeMounts"]}
    assert gw_mounts["registry"]["mountPath"] == "/data"
    claim = {v["name"]: v for v in vllm["spec"]["template"]["spec"]["volumes"]}["registry"]
    gw_claim = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}["registry"]
    assert claim["persistentVolumeClaim"]["claimName"] == gw_claim["persistentVolumeClaim"]["claimName"]
    pvc = one(docs, "PersistentVolumeClaim", claim["persistentVolumeClaim"]["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


@needs_kustomize
def test_overlay_engine(rendered) -> None:
    name, docs = rendered
    (container,) = containers(one(docs, "StatefulSet", "vllm"))
    resources = container.get("resources", {})
    if name == "gpu":
        assert container["image"].startswith("lorafleet-gpu:")
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/models", "/data", "/dev/shm"}
    else:
        assert container["image"].startswith("lorafleet-cpu:")
        assert "nvidia.com/gpu" not in json.dumps(resources)
        assert "VLLM_CPU_KVCACHE_SPACE" in env_of(container)
    for workload in workloads(docs):
        for c in containers(workload):
            assert re.search(r":[\w.-]*\d", c["image"]) and not c["image"].endswith(":latest"), c["image"]


@needs_kustomize
def test_gateway_addresses_every_vllm_replica_and_scales_on_cpu(rendered) -> None:
    _, docs = rendered
    vllm = one(docs, "StatefulSet", "vllm")
    gateway = one(docs, "Deployment", "gateway")
    (container,) = containers(gateway)
    args = container["args"]
    upstreams = [args[i + 1] for i, a in enumerate(args) if a == "--upstream"]
    service = vllm["spec"]["serviceName"]
    assert one(docs, "Service", service)["spec"]["clusterIP"] == "None"  # headless: per-pod DNS
    expected = [f"http://vllm-{i}.{service}:8000" for i in range(vllm["spec"]["replicas"])]
    assert upstreams == expected
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["resources"]["requests"]["cpu"], "an HPA on CPU needs a CPU request"
    hpa = one(docs, "HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    env = env_of(container)
    for var in ("LORAFLEET_UPSTREAM_API_KEY", "LORAFLEET_DATABASE_URL"):
        assert env[var]["valueFrom"]["secretKeyRef"]["name"] == SECRET


@needs_kustomize
def test_only_the_gateway_reaches_vllm(rendered) -> None:
    _, docs = rendered
    vllm_labels = one(docs, "StatefulSet", "vllm")["spec"]["template"]["metadata"]["labels"]
    gateway_labels = one(docs, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]
    policies = [p for p in by_kind(docs, "NetworkPolicy")
                if p["spec"]["podSelector"]["matchLabels"].items() <= vllm_labels.items()]
    assert policies, "no NetworkPolicy selects the vLLM pods"
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"]["ingress"]:
            for peer in rule["from"]:
                assert "ipBlock" not in peer, "vLLM must not be open to address ranges"
                if "namespaceSelector" in peer:
                    # Prometheus in the monitoring namespace, for /metrics only (no API key).
                    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
                else:
                    assert peer["podSelector"]["matchLabels"].items() <= gateway_labels.items()
                    assert peer["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == "gateway"


@needs_kustomize
def test_pods_run_as_non_root_and_secrets_come_from_one_secret(rendered) -> None:
    _, docs = rendered
    documented = set(re.findall(r"^([\w-]+)=", (K8S / "secrets.example.env").read_text(), re.MULTILINE))
    for workload in workloads(docs):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, describe(workload)
        assert pod["securityContext"]["runAsUser"] != 0
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, describe(workload)
            for var in c.get("env", []):
                if re.search(r"KEY|TOKEN|PASSWORD|DATABASE_URL", var["name"]):
                    assert "value" not in var, f"{describe(workload)}: {var['name']} written in the manifest"
                if ref := var.get("valueFrom", {}).get("secretKeyRef"):
                    assert ref["name"] == SECRET and ref["key"] in documented, ref


@needs_kustomize
def test_servicemonitors_scrape_the_gateway_and_vllm(rendered) -> None:
    _, docs = rendered
    scraped = set()
    for monitor in by_kind(docs, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [s for s in by_kind(docs, "Service") if selector.items() <= s["metadata"]["labels"].items()]
        assert len(services) == 1, describe(monitor)
        ports = {p["name"] for p in services[0]["spec"]["ports"]}
        assert all(e["port"] in ports and e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
        scraped.add(services[0]["metadata"]["name"])
    assert scraped == {"gateway", "vllm"}


@needs_kustomize
def test_config_refs_resolve_and_vllm_serves_the_gateways_base_name(rendered) -> None:
    _, docs = rendered
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind(docs, "ConfigMap")}
    for workload in workloads(docs):
        for c in containers(workload):
            for var in c.get("env", []):
                if ref := var.get("valueFrom", {}).get("configMapKeyRef"):
                    assert ref["key"] in config_maps.get(ref["name"], {}), f"{describe(workload)}: {ref}"
    (vllm,) = containers(one(docs, "StatefulSet", "vllm"))
    (gateway,) = containers(one(docs, "Deployment", "gateway"))
    args = vllm["args"]
    assert args[args.index("--served-model-name") + 1] == "$(LORAFLEET_BASE_NAME)"
    source = env_of(vllm)["LORAFLEET_BASE_NAME"]["valueFrom"]
    assert source == env_of(gateway)["LORAFLEET_BASE_NAME"]["valueFrom"]
