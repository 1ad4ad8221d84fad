"""The dependency rules of docs/architecture.md (parts and their boundaries), enforced."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PARTS = {"train": "train", "serve": "serve", "evaluate": "evaluate", "human_review": "human_review"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("part", sorted(PARTS))
def test_parts_do_not_import_each_other(part: str) -> None:
    others = {f"lorafleet.{p}" for p in PARTS if p != part}
    offenders = []
    for path in (REPO / PARTS[part]).rglob("*.py"):
        for module in _imports(path):
            if any(module == o or module.startswith(o + ".") for o in others):
                offenders.append(f"{path.relative_to(REPO)} imports {module}")
    assert not offenders, "parts meet through files, HTTP and the database:\n" + "\n".join(offenders)


def test_core_does_not_import_parts_outside_the_cli() -> None:
    parts = {f"lorafleet.{p}" for p in PARTS}
    offenders = []
    for path in (REPO / "lorafleet").rglob("*.py"):
        if "cli" in path.relative_to(REPO / "lorafleet").parts:
            continue
        for module in _imports(path):
            if any(module == p or module.startswith(p + ".") for p in parts):
                offenders.append(f"{path.relative_to(REPO)} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_no_top_level_evaluate_module_installed() -> None:
    assert not (REPO / "evaluate" / "__init__.py").read_text().startswith("import evaluate")
    out = subprocess.run([sys.executable, "-c", "import lorafleet.evaluate as e; print(e.__name__)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "lorafleet.evaluate"


@pytest.mark.parametrize("part", ["serve", "evaluate", "human_review"])
def test_light_parts_import_without_torch(part: str) -> None:
    code = (
        "import sys, importlib, pkgutil\n"
        f"pkg = importlib.import_module('lorafleet.{part}')\n"
        "for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "    if '.tests' in m.name or m.name.endswith('lora_plugin') or '.lora_plugin.' in m.name: continue\n"
        "    importlib.import_module(m.name)\n"
        "import lorafleet.cli.main\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'vllm') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"importing lorafleet.{part} loaded {out.stdout.strip()}"
