"""Process-level tuning for the long-running services: the garbage collector.

CPython's cyclic collector runs a young-generation pass every 700 container allocations and, every so
often, a full pass over every tracked object. A scoring loop allocates a few small containers per record
(source refs, output records, header lists) that stay alive until their batch is committed, so with the
default thresholds it triggers dozens of passes per batch, and the full ones walk the hundreds of
thousands of objects that pandas, scikit-learn, polars and the model created at start-up. Measured on the
loop's own allocation pattern with those libraries imported (bench/analysis.md): 3.8 µs per record and
pauses up to 130 ms with the defaults, 0.8 µs and 6 ms after ``settle_heap``.

Nothing is turned off: what start-up created is frozen (moved to a generation the collector never
scans; it lives as long as the process anyway), and young objects are collected less often.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
"""Container allocations between young-generation passes (CPython's default: 700)."""


def settle_heap() -> None:
    """Call once, after start-up has loaded the model and created its clients, before the first record."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
