"""yamllint over every YAML file in deploy/ (rules in deploy/.yamllint.yaml)."""

from __future__ import annotations

from pathlib import Path

from yamllint import config, linter

from tests.unit.deploy.paths import DEPLOY

CONFIG = DEPLOY / ".yamllint.yaml"


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


def problems(text: str, path: Path) -> list[str]:
    conf = config.YamlLintConfig(file=str(CONFIG))
    return [f"{path}:{p.line}:{p.column} {p.level} {p.desc} ({p.rule})" for p in linter.run(text, conf, str(path))]


def test_every_deploy_yaml_is_clean() -> None:
    files = yaml_files()
    assert len(files) >= 15, files
    found = [line for path in files for line in problems(path.read_text(), path)]
    assert found == []


def test_yamllint_catches_bad_yaml() -> None:
    text = "services:\n   vllm:\n      image: x\n  image: y\nkey: yes\n"
    found = problems(text, Path("bad.yaml"))
    assert any("indentation" in line or "syntax" in line for line in found)
