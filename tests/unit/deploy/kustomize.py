"""Render kustomize overlays with a real kustomize: a `kustomize` binary or `kubectl kustomize`.

The overlays use `components` and the `labels` transformer, so kustomize v4.1+ is needed; older
kubectl builds (Debian's 1.20 embeds kustomize v2) cannot render them and are not used.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import yaml

MIN_MAJOR = 4


@cache
def renderer() -> tuple[list[str], str] | None:
    """The command prefix that renders a kustomization folder and its version, or None."""
    if exe := shutil.which("kustomize"):
        out = _run([exe, "version"])
        if (major := _major(out)) is not None and major >= MIN_MAJOR:
            return [exe, "build"], out.strip()
    if exe := shutil.which("kubectl"):
        out = _run([exe, "version", "--client"])
        found = re.search(r"Kustomize Version:\s*(v[\d.]+)", out)
        if found and (major := _major(found.group(1))) is not None and major >= MIN_MAJOR:
            return [exe, "kustomize"], found.group(1)
    return None


def render(folder: Path) -> list[dict]:
    """The resources an overlay renders to, as dicts; raises with kustomize's stderr on failure."""
    found = renderer()
    assert found is not None, "no kustomize >= v4 on PATH"
    done = subprocess.run([*found[0], str(folder)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"kustomize failed on {folder}:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _run(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr


def _major(version: str) -> int | None:
    found = re.search(r"v?(\d+)\.\d+", version)
    return int(found.group(1)) if found else None
