"""One bounded worker pool for the endpoint calls (generation and reference log-probs)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

J = TypeVar("J")


async def run_pool(jobs: Iterable[J], work: Callable[[J], Awaitable[None]], concurrency: int) -> None:
    """Run `work` on every job in order with at most `concurrency` in flight.

    The first failure cancels the other workers (no request keeps running behind an error) and is raised.
    """
    queue = deque(jobs)

    async def worker() -> None:
        while queue:
            await work(queue.popleft())

    workers = [asyncio.create_task(worker()) for _ in range(min(max(1, concurrency), len(queue)))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
