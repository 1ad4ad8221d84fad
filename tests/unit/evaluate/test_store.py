"""Run ids: they sort in the order the runs were made, even within one second."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from lorafleet.evaluate import store


class _Clock:
    def __init__(self, *moments: datetime) -> None:
        self.moments = list(moments)

    def now(self, tz=None) -> datetime:
        return self.moments.pop(0)


def test_repro_run_ids_in_the_same_second_sort_by_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # judge scoring picks a suite's newest run by sorting its ids; with one-second ids and a random suffix
    # two runs started in the same second sorted by chance
    early = datetime(2026, 12, 2, 4, 0, 0, 1_000, tzinfo=UTC)
    late = datetime(2026, 12, 2, 4, 0, 0, 998_000, tzinfo=UTC)
    for _ in range(20):
        monkeypatch.setattr(store, "datetime", _Clock(early, late))
        first, second = store.new_run_id("intents"), store.new_run_id("intents")
        assert first.startswith("intents-20261202-040000001-") and sorted([second, first]) == [first, second]
