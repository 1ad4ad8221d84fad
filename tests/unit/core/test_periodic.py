"""The shared background rounds: run at once and again each interval, survive a failing round (logged),
end when a round says so or on stop (a round in progress is cancelled); interval 0 is off."""

from __future__ import annotations

import asyncio
import logging

import pytest

from lorafleet.periodic import Periodic

DEADLINE = 60.0  # generous: a loaded CI machine runs these rounds late, never wrongly


async def test_rounds_repeat_until_stopped() -> None:
    third = asyncio.Event()
    calls = []

    async def round_() -> None:
        calls.append(len(calls))
        if len(calls) == 3:
            third.set()

    rounds = Periodic(round_, 0.001, what="t")
    rounds.start()
    assert rounds.running
    await asyncio.wait_for(third.wait(), DEADLINE)
    await rounds.stop()
    assert not rounds.running
    seen = len(calls)
    await asyncio.sleep(0.01)
    assert len(calls) == seen >= 3  # no round after stop


async def test_a_failing_round_is_logged_and_the_next_one_runs(caplog: pytest.LogCaptureFixture) -> None:
    second = asyncio.Event()
    calls = 0

    async def round_() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk on fire")
        second.set()

    rounds = Periodic(round_, 0.001, what="flushing the spool", logger=logging.getLogger("t"))
    with caplog.at_level(logging.ERROR, logger="t"):
        rounds.start()
        await asyncio.wait_for(second.wait(), DEADLINE)
        await rounds.stop()
    assert "flushing the spool failed; next round in 0.001 s" in caplog.text and "disk on fire" in caplog.text


async def test_a_round_returning_false_ends_the_task() -> None:
    calls = 0

    async def round_() -> bool:
        nonlocal calls
        calls += 1
        return calls < 2

    rounds = Periodic(round_, 0.001, what="t")
    rounds.start()
    assert rounds._task is not None
    await asyncio.wait_for(rounds._task, DEADLINE)
    assert calls == 2 and rounds.rounds == 2 and not rounds.running
    await rounds.stop()  # stopping a finished task is fine


async def test_stop_cancels_a_round_in_progress() -> None:
    entered, cancelled = asyncio.Event(), asyncio.Event()

    async def round_() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()  # never set: only a cancel ends it
        except asyncio.CancelledError:
            cancelled.set()
            raise

    rounds = Periodic(round_, 3600, what="t")
    rounds.start()
    await asyncio.wait_for(entered.wait(), DEADLINE)
    await asyncio.wait_for(rounds.stop(), DEADLINE)
    assert cancelled.is_set() and not rounds.running


async def test_interval_zero_is_off_and_stop_without_start_is_a_no_op() -> None:
    async def round_() -> None:
        raise AssertionError("never called")

    rounds = Periodic(round_, 0, what="t")
    rounds.start()
    assert not rounds.running
    await rounds.stop()
    await Periodic(round_, 1, what="t").stop()


async def test_started_twice_is_refused_but_a_stopped_one_starts_again() -> None:
    async def round_() -> None:
        return None

    rounds = Periodic(round_, 3600, what="the canary watcher")
    rounds.start()
    with pytest.raises(RuntimeError, match="the canary watcher: started twice"):
        rounds.start()
    await rounds.stop()
    rounds.start()
    assert rounds.running
    await rounds.stop()
