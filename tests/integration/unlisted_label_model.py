"""A thresholded binary classifier whose ``predict`` answers "unsure", a label not in ``classes_``, on odd rows.

Pickled into a bundle by ``test_web_service.py`` and unpickled by the ``scorer serve`` subprocess, which
imports it as ``tests.integration.unlisted_label_model`` because it runs from the repository root.

Why it is a useful test model: its labels come from a 0.7 threshold, so they differ from the most probable
class on some training rows, and the bundle records that labels must come from ``predict``. On a row with
``x3 > 100`` that label is "unsure", which has no class probability: the ``Scorer`` must reject that row as
a model error and score the others (it once failed the whole batch, a 500 here and a stuck partition in
``scorer run``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.fixtures.wrapped_model import WrappedClassifier

MARKER_FEATURE = "x3"
UNLISTED_LABEL = "unsure"


class UnlistedLabelModel(WrappedClassifier):
    """Wraps a fitted binary classifier: positive when P(positive) >= ``threshold``, "unsure" for x3 > 100."""

    def __init__(self, inner: Any = None, threshold: float = 0.7) -> None:
        self.inner = inner
        self.threshold = threshold

    def predict(self, X: Any) -> np.ndarray:  # noqa: N803
        positive = self.predict_proba(X)[:, 1] >= self.threshold
        labels = np.where(positive, self.classes_[1], self.classes_[0]).astype(object)
        labels[np.asarray(X[MARKER_FEATURE], dtype=float) > 100] = UNLISTED_LABEL
        return labels
