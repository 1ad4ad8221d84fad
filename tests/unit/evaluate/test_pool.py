"""The one worker pool: bounded concurrency, every job run, first failure cancels the rest."""

from __future__ import annotations

import asyncio

import pytest
from lorafleet.evaluate.pool import run_pool


def test_runs_every_job_with_bounded_concurrency() -> None:
    done, in_flight, peak = [], 0, 0

    async def work(job: int) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        done.append(job)

    asyncio.run(run_pool(range(20), work, 3))
    assert sorted(done) == list(range(20)) and peak == 3


def test_first_failure_cancels_the_other_workers() -> None:
    started, cancelled = [], []

    async def work(job: int) -> None:
        started.append(job)
        if job == 0:
            raise RuntimeError("boom")
        try:
            await asyncio.Event().wait()  # never set: only the cancel ends it
        except asyncio.CancelledError:
            cancelled.append(job)
            raise

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(asyncio.wait_for(run_pool(range(10), work, 4), timeout=60))  # a hang fails, never a slow CI
    assert sorted(cancelled) == [1, 2, 3] and len(started) == 4


def test_no_jobs_is_a_no_op() -> None:
    async def work(job: int) -> None:
        raise AssertionError("never called")

    asyncio.run(run_pool([], work, 4))
