"""One background task that runs a round now and then every few seconds: the start/stop that the gateway's
watchers (canary, drift, review grades) and the review app's card writer share; each keeps its own round."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Round = Callable[[], Awaitable[bool | None]]


class Periodic:
    """Runs `round` at once, then `interval` seconds after each round ends, on the running event loop.

    A round that raises is logged (as `what` failed) and the next one runs on time: background work must
    survive anything, never silently. A round that returns False ends the task (nothing left to do). An
    interval of 0 or less never starts it (the setting's "off"). `rounds` counts the rounds that ended.
    """

    def __init__(self, round: Round, interval: float, *, what: str, logger: logging.Logger | None = None) -> None:
        self.round = round
        self.interval = interval
        self.what = what
        self.log = logger or log
        self.rounds = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"{self.what}: started twice without a stop")
        if self.interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.what)

    async def stop(self) -> None:
        """Cancel the task (a round in progress is cancelled at its next await) and wait for it to end."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        while True:
            try:
                more = await self.round() is not False
            except Exception:  # noqa: BLE001 - logged with its traceback; the next round may succeed
                self.log.exception("%s failed; next round in %g s", self.what, self.interval)
                more = True
            self.rounds += 1
            if not more:
                return
            await asyncio.sleep(self.interval)
