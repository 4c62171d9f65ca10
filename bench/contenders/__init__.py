"""The hand-written contenders scorer is measured against: the tutorial loop and a competent batched loop.

Each runs as its own process: ``python -m bench.contenders.naive ...`` / ``python -m bench.contenders.batched ...``.
"""

from __future__ import annotations
