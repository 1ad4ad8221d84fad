"""Waiting for background work in tests: poll a condition with a generous deadline, never sleep a guess.

A fixed sleep ("the probe runs within 0.2 s") passes on a quiet laptop and fails on a loaded CI machine;
a deadline of a minute only matters when the work never happens, and then the test fails as it should.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

DEADLINE_S = 60.0
STEP_S = 0.02


async def until(condition: Callable[[], Any], what: str = "the condition", timeout: float = DEADLINE_S) -> Any:
    """Await until `condition()` (sync or async) is truthy; returns its value, or fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout:g} s")
        await asyncio.sleep(STEP_S)


def until_sync(condition: Callable[[], Any], what: str = "the condition", timeout: float = DEADLINE_S) -> Any:
    """`until` for code outside an event loop (a gateway on loopback in a thread)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout:g} s")
        time.sleep(STEP_S)
    return value
