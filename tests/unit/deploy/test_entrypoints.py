"""The commands the deploy files run exist with the flags and settings they pass: vLLM's real
argument parser, the `lorafleet` CLI, and the gateway's settings fields."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml

from lorafleet.cli.main import build_app
from tests.unit.deploy import kustomize
from tests.unit.deploy.paths import COMPOSE, DEPLOY, K8S, OVERLAYS

# Runs in a child: importing vLLM's parser takes seconds and pulls torch into the process.
PARSE_WITH_VLLM = """
import json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser
problems = {}
parser = make_arg_parser(FlexibleArgumentParser())
for where, argv in json.load(sys.stdin).items():
    try:
        args = parser.parse_args(argv)
        validate_parsed_serve_args(args)
    except SystemExit:
        problems[where] = "rejected (see stderr)"
    except Exception as exc:
        problems[where] = f"{type(exc).__name__}: {exc}"
print(json.dumps(problems))
"""


def compose_services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def interpolate(value: str) -> str:
    """Compose `${VAR:-default}` and the kubelet's `$(VAR)` → a stand-in value."""
    value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\(\w+\)", "base", value)


def dockerfile_cmd(name: str) -> list[str]:
    text = (DEPLOY / "docker" / name).read_text()
    return json.loads(re.search(r"^CMD (\[.*\])$", text, re.MULTILINE).group(1))


def vllm_argvs() -> dict[str, list[str]]:
    argvs = {"compose vllm": [interpolate(a) for a in compose_services()["vllm"]["command"]],
             "Dockerfile.cpu CMD": dockerfile_cmd("Dockerfile.cpu"),
             "Dockerfile.gpu CMD": dockerfile_cmd("Dockerfile.gpu")}
    if kustomize.renderer() is not None:
        for overlay in OVERLAYS:
            docs = kustomize.render(K8S / "overlays" / overlay)
            vllm = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "vllm")
            args = vllm["spec"]["template"]["spec"]["containers"][0]["args"]
            argvs[f"k8s {overlay} vllm"] = [interpolate(a) for a in args]
    return argvs


@pytest.mark.slow  # importing vLLM's parser imports torch: 10-60 s depending on the machine's load
def test_vllm_accepts_every_argument_list() -> None:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed (the cpu or gpu extra brings it)")
    argvs = vllm_argvs()
    argvs["a misspelled flag (must be rejected)"] = ["--model", "/m", "--max-lora-rnk", "16"]
    done = subprocess.run([sys.executable, "-c", PARSE_WITH_VLLM], input=json.dumps(argvs),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    problems = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(problems) == ["a misspelled flag (must be rejected)"], (problems, done.stderr[-3000:])


def click_command(*path: str):
    command = typer.main.get_command(build_app())
    for name in path:
        command = command.commands[name] if hasattr(command, "commands") else None
        assert command is not None, f"no `lorafleet {' '.join(path)}`"
    return command


def options_of(command) -> set[str]:
    return {opt for param in command.params for opt in param.opts}


def flags(argv: list[str]) -> set[str]:
    return {a.split("=")[0] for a in argv if a.startswith("--")}


def test_gateway_command_flags_exist() -> None:
    serve = click_command("serve")
    used = flags(compose_services()["gateway"]["command"])
    gateway = yaml.safe_load_all((K8S / "base" / "gateway.yaml").read_text())
    deployment = next(d for d in gateway if d["kind"] == "Deployment")
    used |= flags(deployment["spec"]["template"]["spec"]["containers"][0]["args"])
    assert used >= {"--host", "--port", "--upstream"}
    assert used <= options_of(serve)


def gateway_env_names() -> set[str]:
    names = set(compose_services()["gateway"]["environment"])
    for doc in yaml.safe_load_all((K8S / "base" / "gateway.yaml").read_text()):
        if doc["kind"] == "Deployment":
            names |= {e["name"] for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]}
    return {n for n in names if n.startswith("LORAFLEET_")}


def test_gateway_env_vars_are_serve_settings() -> None:
    from lorafleet.serve.config import ServeSettings

    fields = ServeSettings.env_names()
    used = gateway_env_names()
    assert {"LORAFLEET_DATA_DIR", "LORAFLEET_UPSTREAM_API_KEY", "LORAFLEET_BASE_NAME"} <= used
    assert used - fields == set()


def test_vllm_serves_the_base_under_the_gateways_base_name() -> None:
    services = compose_services()
    command = services["vllm"]["command"]
    served = command[command.index("--served-model-name") + 1]
    assert served == services["gateway"]["environment"]["LORAFLEET_BASE_NAME"]


def review_env_names() -> set[str]:
    names = set(compose_services()["review"]["environment"])
    for doc in yaml.safe_load_all((K8S / "base" / "review.yaml").read_text()):
        if doc["kind"] == "Deployment":
            names |= {e["name"] for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]}
    return {n for n in names if n.startswith("LORAFLEET_")}


def test_review_command_flags_and_env_exist() -> None:
    review = click_command("review")
    if "serve" not in getattr(review, "commands", {}):
        pytest.skip("`lorafleet review serve` has not landed yet (issue 7)")
    from lorafleet.human_review.settings import ReviewSettings

    used = flags(compose_services()["review"]["command"])
    for doc in yaml.safe_load_all((K8S / "base" / "review.yaml").read_text()):
        if doc["kind"] == "Deployment":
            used |= flags(doc["spec"]["template"]["spec"]["containers"][0]["args"])
    assert used >= {"--host", "--port"}
    assert used <= options_of(review.commands["serve"])
    prefix = ReviewSettings.model_config["env_prefix"]
    fields = {f"{prefix}{name}".upper() for name in ReviewSettings.model_fields}
    env = review_env_names()
    assert {"LORAFLEET_REVIEW_DATABASE_URL", "LORAFLEET_REVIEW_SECRET_KEY"} <= env
    assert env - fields == set()


def test_review_health_checks_hit_a_real_public_route() -> None:
    review = click_command("review")
    if "serve" not in getattr(review, "commands", {}):
        pytest.skip("`lorafleet review serve` has not landed yet (issue 7)")
    from lorafleet.human_review.routes import auth

    public = {route.path for route in auth.router.routes if "GET" in getattr(route, "methods", set())}
    paths = {compose_services()["review"]["environment"]["HEALTHCHECK_URL"].split(":8001")[1]}
    for doc in yaml.safe_load_all((K8S / "base" / "review.yaml").read_text()):
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            paths |= {container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")}
    assert paths and paths <= public


def test_cpu_image_prepares_the_base_with_a_real_cli_option() -> None:
    text = (DEPLOY / "docker" / "Dockerfile.cpu").read_text()
    used = flags(re.search(r"lorafleet base prepare[^\n]*", text).group(0).split())
    assert used <= options_of(click_command("base", "prepare"))
    assert Path(DEPLOY / "docker" / "Dockerfile.cpu").exists()


def test_gateway_probes_hit_real_routes() -> None:
    from lorafleet.serve.routes import ops

    routes = {route.path for route in ops.router.routes}
    gateway = compose_services()["gateway"]
    paths = {re.search(r":8000(/\w+)", " ".join(gateway["healthcheck"]["test"])).group(1)}
    for doc in yaml.safe_load_all((K8S / "base" / "gateway.yaml").read_text()):
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            paths |= {container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")}
    assert paths == {"/ready", "/health"}
    assert paths | {"/metrics"} <= routes
