"""The test session survives absl's handler (tests/conftest.py): closing it, as logging.shutdown does on every
in-process uvicorn start, must not close the stream pytest captures into (the session died: 'lost sys.stderr')."""

from __future__ import annotations

import io
import sys

import pytest


def test_repro_closing_absls_handler_leaves_the_captured_stream_open(monkeypatch: pytest.MonkeyPatch) -> None:
    from absl import logging as absl_logging

    handler = absl_logging.get_absl_handler().python_handler
    stream = handler.stream
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # as when pytest has swapped its capture since
    monkeypatch.setattr(handler, "stream", stream)
    handler.close()
    assert not stream.closed
