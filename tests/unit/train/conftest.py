"""Training tests run `lorafleet train` on a tiny model: its forgetting step would start a vLLM engine, so it is
off here (LORAFLEET_FORGETTING_CHECK); tests/unit/evaluate/test_forgetting_train.py covers it with a fake."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_forgetting_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLEET_FORGETTING_CHECK", "false")
