"""When is a micro-batch due, and which offsets does it let us commit.

A batch closes when it holds ``max_records`` or when ``max_wait_s`` has passed since its *first* record
(an idle stream does not produce empty batches, and a trickle is never held longer than the wait).
Pure: the caller passes the clock and does the polling.

May import: types. Third-party: none.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from scorer.types import SourceRef

__all__ = ["BatchWindow", "next_offsets"]

IDLE_POLL_S = 0.1
"""How long one poll waits while no batch is open. The poll returns at the first record
(``kafka.consume_available``), so this only bounds how soon an idle loop notices a stop request."""


class BatchWindow:
    """Tracks one micro-batch's deadline.

    >>> now = [0.0]
    >>> window = BatchWindow(max_records=3, max_wait_s=0.1, clock=lambda: now[0])
    >>> window.poll_timeout(0), window.is_due(0)
    (0.1, False)
    >>> window.opened(1); now[0] = 0.04; round(window.poll_timeout(1), 2), window.is_due(1)
    (0.06, False)
    >>> now[0] = 0.2; window.is_due(1), window.is_due(3)
    (True, True)
    """

    def __init__(self, max_records: int, max_wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_records = max_records
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._deadline: float | None = None

    def opened(self, count: int) -> None:
        """Call after each poll: starts the deadline at the first record of the batch."""
        if count and self._deadline is None:
            self._deadline = self._clock() + self.max_wait_s

    def poll_timeout(self, count: int) -> float:
        if count == 0 or self._deadline is None:
            return IDLE_POLL_S
        return max(0.0, self._deadline - self._clock())

    def is_due(self, count: int) -> bool:
        if count >= self.max_records:
            return True
        return count > 0 and self._deadline is not None and self._clock() >= self._deadline

    def reset(self) -> None:
        self._deadline = None


def next_offsets(refs: Iterable[SourceRef]) -> dict[tuple[str, int], int]:
    """The offset to commit per topic-partition: one past the highest offset seen.

    >>> next_offsets([SourceRef("t", 0, 5), SourceRef("t", 0, 7), SourceRef("t", 1, 2)])
    {('t', 0): 8, ('t', 1): 3}
    """
    offsets: dict[tuple[str, int], int] = {}
    for ref in refs:
        key = (ref.topic, ref.partition)
        offsets[key] = max(offsets.get(key, -1), ref.offset + 1)
    return offsets
