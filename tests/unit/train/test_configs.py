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


def test_demo_trains_clauses_and_summaries_with_qlora() -> None:
    # both served on their matched nf4 base (serve/variants.py); support-intents stays plain LoRA
    assert len(CONFIGS) == 3
    assert {p.stem for p in CONFIGS if load_config(p).qlora} == {"contract-clauses", "ticket-summaries"}


def test_cli_flags_override_yaml() -> None:
    config = load_config(CONFIGS[0], {"max_steps": 7, "lr": None})
    assert config.max_steps == 7 and config.lr == load_config(CONFIGS[0]).lr
