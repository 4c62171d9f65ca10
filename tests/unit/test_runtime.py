"""Unit test of scorer.runtime: start-up objects are frozen and young passes run less often."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from scorer.runtime import YOUNG_THRESHOLD, settle_heap


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_settle_heap_freezes_what_exists_and_raises_the_young_threshold(restored_collector: None) -> None:
    survivor = [object() for _ in range(10)]  # a start-up object: must not be scanned by later passes
    settle_heap()
    assert gc.get_freeze_count() > 0
    assert gc.is_tracked(survivor)
    assert all(survivor is not obj for obj in gc.get_objects()), "frozen objects are not in any generation"
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    assert gc.isenabled(), "the collector still runs: cycles created later are still freed"
