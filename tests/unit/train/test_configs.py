"""Every shipped training YAML still matches TrainConfig, and its data files exist."""

from __future__ import annotations

from pathlib import Path

import pytest
from lorafleet.train.config import load_config

from tests.unit.train.helpers import REPO

CONFIGS = sorted((REPO / "examples" / "train").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_loads(path: Path) -> None:
    config = load_config(path)
    assert config.name == path.stem and config.rank in (8, 16)
    assert config.train.is_file() and config.val is not None and config.val.is_file()


def test_demo_has_one_qlora_adapter() -> None:
    assert len(CONFIGS) == 3 and sum(load_config(p).qlora for p in CONFIGS) == 1


def test_cli_flags_override_yaml() -> None:
    config = load_config(CONFIGS[0], {"max_steps": 7, "lr": None})
    assert config.max_steps == 7 and config.lr == load_config(CONFIGS[0]).lr
