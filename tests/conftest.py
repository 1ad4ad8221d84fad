"""Fixtures shared by every part's tests: settings, a temp registry, the tiny and embedded models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lorafleet.config import Settings
from lorafleet.registry import Registry
from tests.fixtures import models


def _absl_never_closes_a_capture() -> None:
    """absl (rouge_score imports it) binds its handler to the sys.stderr of that moment, and its close(), which
    logging.shutdown runs on every handler whenever dictConfig is called (each in-process uvicorn start), closes
    that stream once it is no longer sys.stderr: pytest's capture file, and the session died ('I/O operation on
    closed file', 'lost sys.stderr') depending on which test first imported lorafleet.evaluate."""
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__  # never closed: user-managed


_absl_never_closes_a_capture()


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
