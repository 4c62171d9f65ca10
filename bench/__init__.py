"""The benchmark suite of scorer (issue 4): scorer against the loops users could write themselves.

``make bench`` runs ``python -m bench.run``; it writes docs/performance.md and two plots. Never part of
``make test``: timings are reported as ratios measured in the same run, never asserted.
"""

from __future__ import annotations
