"""Unit tests of scorer.batching: when a micro-batch is due, and which offsets it lets the pipeline commit."""

from __future__ import annotations

import pytest

from scorer.batching import IDLE_POLL_S, BatchWindow, next_offsets
from scorer.types import SourceRef


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_an_empty_window_is_never_due_and_polls_at_the_idle_timeout(clock: Clock) -> None:
    window = BatchWindow(max_records=3, max_wait_s=0.05, clock=clock)
    window.opened(0)
    clock.now += 3600
    assert window.is_due(0) is False
    assert window.poll_timeout(0) == IDLE_POLL_S


def test_deadline_starts_at_the_first_record_not_at_construction(clock: Clock) -> None:
    window = BatchWindow(max_records=100, max_wait_s=0.05, clock=clock)
    clock.now += 10.0  # idle time before the first record does not count
    window.opened(1)
    assert window.is_due(1) is False
    assert window.poll_timeout(1) == pytest.approx(0.05)
    clock.now += 0.03
    window.opened(5)  # later polls do not push the deadline back
    assert window.poll_timeout(5) == pytest.approx(0.02)
    assert window.is_due(5) is False
    clock.now += 0.02
    assert window.is_due(5) is True
    clock.now += 1.0
    assert window.poll_timeout(5) == 0.0  # never negative


def test_size_bound_makes_the_batch_due_at_once(clock: Clock) -> None:
    window = BatchWindow(max_records=3, max_wait_s=60.0, clock=clock)
    window.opened(2)
    assert window.is_due(2) is False
    window.opened(3)
    assert window.is_due(3) is True
    assert window.is_due(4) is True


def test_reset_starts_the_next_batch_afresh(clock: Clock) -> None:
    window = BatchWindow(max_records=10, max_wait_s=1.0, clock=clock)
    window.opened(1)
    clock.now += 1.0
    assert window.is_due(1) is True
    window.reset()
    assert window.poll_timeout(0) == IDLE_POLL_S
    clock.now += 5.0
    window.opened(1)
    assert window.is_due(1) is False
    assert window.poll_timeout(1) == pytest.approx(1.0)


def test_zero_wait_is_due_as_soon_as_a_record_arrives(clock: Clock) -> None:
    window = BatchWindow(max_records=1000, max_wait_s=0.0, clock=clock)
    window.opened(1)
    assert window.is_due(1) is True


def test_next_offsets_are_one_past_the_highest_per_partition() -> None:
    refs = [
        SourceRef("in", 0, 7),
        SourceRef("in", 0, 5),  # out of order: the highest still wins
        SourceRef("in", 1, 0),
        SourceRef("other", 0, 41),
    ]
    assert next_offsets(refs) == {("in", 0): 8, ("in", 1): 1, ("other", 0): 42}
    assert next_offsets([]) == {}
