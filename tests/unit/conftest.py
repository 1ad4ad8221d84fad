"""Unit tests see only the LORAFLEET_* variables they set themselves: pydantic-settings reads the environment, so a
developer's or a CI machine's own (`make test LORAFLEET_ENGINE=gpu`, LORAFLEET_DATA_DIR, ...) changed what they test."""

from __future__ import annotations

import os

import pytest

KEEP = {"LORAFLEET_TEST_CACHE", "LORAFLEET_SCREENSHOTS"}  # the tests' own controls (tests/fixtures, tests/browser)


@pytest.fixture(autouse=True)
def _no_ambient_lorafleet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("LORAFLEET_") and n not in KEEP]:
        monkeypatch.delenv(name)
