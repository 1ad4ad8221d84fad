"""Fixtures shared by every part's tests: settings, a temp registry, the tiny and embedded models."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorafleet.config import Settings
from lorafleet.registry import Registry
from tests.fixtures import models


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    """Settings pointing at a fresh temp data dir (env vars do not leak in)."""
    return Settings(data_dir=data_dir, base=None)


@pytest.fixture
def registry(settings: Settings) -> Registry:
    return Registry(settings.registry_dir)


@pytest.fixture(scope="session")
def embedded_base() -> Path:
    """The real embedded base model folder (prepared once, cached under .cache/tests)."""
    return models.embedded_base_dir()


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """A tiny random Llama with SmolLM2's tokenizer, for fast training/serving tests."""
    return models.tiny_model_dir()


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT LoRA folder (r8 on q/v) for the tiny model."""
    return models.make_tiny_adapter(tiny_model, tmp_path_factory.mktemp("adapter") / "lora")
