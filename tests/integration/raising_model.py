"""A binary classifier that raises on any batch holding a row with ``x3 > 100`` (a model bug on odd inputs).

Pickled into a bundle by ``test_prediction_records.py`` and unpickled by the ``scorer run`` subprocess, which
imports it as ``tests.integration.raising_model`` because it runs from the repository root.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.fixtures.wrapped_model import WrappedClassifier

MARKER_FEATURE = "x3"


class RaisingModel(WrappedClassifier):
    """Wraps a fitted binary classifier; ``predict`` and ``predict_proba`` raise if any row has x3 > 100."""

    def _check(self, X: Any) -> None:  # noqa: N803
        if (X[MARKER_FEATURE] > 100).any():
            raise ValueError(f"{MARKER_FEATURE} out of the range this model was validated on")

    def predict(self, X: Any) -> np.ndarray:  # noqa: N803
        self._check(X)
        return self.inner.predict(X)

    def predict_proba(self, X: Any) -> np.ndarray:  # noqa: N803
        self._check(X)
        return self.inner.predict_proba(X)
