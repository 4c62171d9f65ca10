"""A classifier that takes a long time on one batch: the batch holding a marker value.

Pickled into a bundle by the slow-model fault test and unpickled by the ``scorer run`` subprocess, which
imports it as ``tests.faults.slow_model`` because it runs from the repository root. It sleeps on every
batch that holds the marker: a batch replayed after a rebalance would sleep again, so the log shows
whether the batch was scored once.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tests.fixtures.wrapped_model import WrappedClassifier

MARKER_FEATURE = "x3"
MARKER_VALUE = 999.0


class SlowModel(WrappedClassifier):
    """Wraps a fitted classifier; ``predict_proba`` sleeps ``sleep_s`` when a row has ``x3 == 999``."""

    def __init__(self, inner: Any = None, sleep_s: float = 12.0) -> None:
        self.inner = inner
        self.sleep_s = sleep_s

    def predict_proba(self, X: Any) -> np.ndarray:  # noqa: N803
        if (np.asarray(X[MARKER_FEATURE], dtype=float) == MARKER_VALUE).any():
            print(f"slow model: sleeping {self.sleep_s} s on a batch of {len(X)}", flush=True)
            time.sleep(self.sleep_s)
        return self.inner.predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:  # noqa: N803
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
