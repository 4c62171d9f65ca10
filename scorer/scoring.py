"""Score Model: decoded rows to a DataFrame in training order, one model call per batch, prediction records.

This is the code that Kafka, files and HTTP share. It knows nothing of where rows come from: it takes
records (dicts in the reader schema's shape), validates them column by column, makes **one**
``predict_proba`` (or ``predict``) call for the whole batch, and returns prediction records plus the
rejections, each carrying the row's position so that the caller can find its source.

If the model raises on a batch, the batch is split in halves until the rows that make it fail are
found: one bad row costs O(log n) extra calls and rejects only itself (``model_error``).

May import: errors, types, schema, bundle. Third-party: numpy, pandas.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from scorer.bundle import ModelBundle
from scorer.errors import RejectReason
from scorer.types import Rejection

__all__ = ["ScoreResult", "Scorer"]

UnknownCategoryPolicy = Literal["reject", "score"]


@dataclass
class ScoreResult:
    """Prediction records for the accepted rows (``indices`` says which) and rejections for the others."""

    predictions: list[dict[str, Any]] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


class Scorer:
    """Scores batches of decoded rows with a loaded bundle.

    Args:
        bundle: a loaded ``ModelBundle``.
        id_field: the input field that becomes the prediction ``id``.
        unknown_categories: ``reject`` (dead-letter rows whose string feature has a level never seen in
            training) or ``score`` (let the model handle it, e.g. ``OneHotEncoder(handle_unknown="ignore")``).
        include_features: append the input features to each prediction record.
        clock: wall clock in seconds, for ``scored_at``.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        id_field: str = "id",
        unknown_categories: UnknownCategoryPolicy = "reject",
        include_features: bool = False,
        clock: Any = time.time,
    ) -> None:
        self.bundle = bundle
        self._id_field = id_field
        self._unknown = unknown_categories
        self._include_features = include_features
        self._clock = clock
        self._columns = bundle.schema.feature_names
        self._classes = np.asarray(bundle.classes) if bundle.classes is not None else None
        self._class_keys = [str(c) for c in bundle.classes] if bundle.classes is not None else []
        self._positive_column = (
            self._class_keys.index(str(bundle.positive_class)) if bundle.positive_class is not None else None
        )

    def score(self, rows: Sequence[dict[str, Any]], indices: Sequence[int] | None = None) -> ScoreResult:
        """Validate, score and describe ``rows``. ``indices`` are their batch positions (default 0..n-1)."""
        positions = np.asarray(indices if indices is not None else range(len(rows)), dtype=np.int64)
        result = ScoreResult()
        if not rows:
            return result
        # dict.fromkeys: the id may itself be a feature, and a duplicate column would break the checks
        frame = pd.DataFrame.from_records(rows, columns=list(dict.fromkeys([*self._columns, self._id_field])))
        ok = self._validate(frame, positions, result.rejections)
        frame, positions = frame[ok], positions[ok]
        labels, probabilities, failed = self._predict_isolating(frame[self._columns])
        for row in np.flatnonzero(failed):
            result.rejections.append(
                Rejection(int(positions[row]), RejectReason.MODEL_ERROR, failed_reason(failed[row]))
            )
        keep = failed == None  # noqa: E711 - elementwise on an object array
        frame, positions = frame[keep], positions[keep]
        labels = labels[keep]
        probabilities = probabilities[keep] if probabilities is not None else None
        result.predictions = self._records(frame, labels, probabilities, rows)
        result.indices = positions.tolist()
        result.rejections.sort(key=lambda r: r.index)
        return result

    def _validate(self, frame: pd.DataFrame, positions: np.ndarray, rejections: list[Rejection]) -> np.ndarray:
        """Column-wise checks Avro cannot express; returns the mask of rows that pass."""
        ok = np.ones(len(frame), dtype=bool)

        def reject(mask: np.ndarray, reason: RejectReason, detail: str) -> None:
            for row in np.flatnonzero(mask & ok):
                rejections.append(Rejection(int(positions[row]), reason, detail))
            ok[mask] = False

        reject(
            frame[self._id_field].isna().to_numpy(), RejectReason.MISSING_ID, f"the record has no {self._id_field!r}"
        )
        for feature in self.bundle.schema.features:
            column = frame[feature.name]
            if feature.type == "double" and not feature.nullable:
                values = column.to_numpy(dtype=np.float64, na_value=np.nan)
                reject(~np.isfinite(values), RejectReason.INVALID_VALUE, f"{feature.name} is NaN or infinite")
            if feature.categories is not None and self._unknown == "reject":
                unknown = ~column.isin(feature.categories).to_numpy() & column.notna().to_numpy()
                if unknown.any():
                    for row in np.flatnonzero(unknown & ok):
                        rejections.append(
                            Rejection(
                                int(positions[row]),
                                RejectReason.UNKNOWN_CATEGORY,
                                f"{feature.name}={column.iloc[row]!r} was not seen in training",
                            )
                        )
                    ok[unknown] = False
        return ok

    def _predict_isolating(self, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """One model call for the batch; on failure, bisect to find the failing rows."""
        failed = np.full(len(features), None, dtype=object)
        if len(features) == 0:  # every row was rejected: no model call, and nothing to bisect
            return np.empty(0, dtype=object), self._empty_probabilities(0), failed
        try:
            labels, probabilities = self._predict(features)
            return labels, probabilities, failed
        except Exception as exc:  # noqa: BLE001 - any model failure is isolated and reported per row
            if len(features) == 1:
                failed[0] = f"{type(exc).__name__}: {exc}"
                return np.empty(1, dtype=object), self._empty_probabilities(1), failed
        half = len(features) // 2
        left = self._predict_isolating(features.iloc[:half])
        right = self._predict_isolating(features.iloc[half:])
        labels = np.concatenate([left[0], right[0]])
        probabilities = None if left[1] is None or right[1] is None else np.concatenate([left[1], right[1]])
        return labels, probabilities, np.concatenate([left[2], right[2]])

    def _empty_probabilities(self, n: int) -> np.ndarray | None:
        return None if self._classes is None else np.zeros((n, len(self._classes)))

    def _predict(self, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        estimator = self.bundle.estimator
        if self._classes is None:
            return np.asarray(estimator.predict(features), dtype=np.float64), None
        source = self.bundle.probability_source
        if source == "predict_proba":
            probabilities = np.asarray(estimator.predict_proba(features), dtype=np.float64)
            if self.bundle.label_from_proba:
                return self._classes[np.argmax(probabilities, axis=1)], probabilities
            return np.asarray(estimator.predict(features)), probabilities
        labels = np.asarray(estimator.predict(features))
        if source == "decision_function":
            return labels, _decision_to_probabilities(np.asarray(estimator.decision_function(features)))
        return labels, None

    def _records(
        self,
        frame: pd.DataFrame,
        labels: np.ndarray,
        probabilities: np.ndarray | None,
        source_rows: Sequence[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        n = len(frame)
        scored_at = int(self._clock() * 1000)
        # from the rows: in the frame, one missing id turns the long ids of the batch into floats ("7.0")
        ids = [str(source_rows[row].get(self._id_field)) for row in frame.index]
        plain_labels = labels.tolist()
        if self.bundle.task == "regression":
            plain_labels = [float(v) for v in plain_labels]
        label_probability: list[float | None] = [None] * n
        positive: list[float | None] = [None] * n
        maps: list[dict[str, float] | None] = [None] * n
        if probabilities is not None:
            rows = probabilities.tolist()
            maps = [dict(zip(self._class_keys, row, strict=True)) for row in rows]
            label_probability = probabilities.max(axis=1).tolist() if self.bundle.label_from_proba else None
            if label_probability is None:
                lookup = {key: i for i, key in enumerate(self._class_keys)}
                label_probability = [row[lookup[str(label)]] for row, label in zip(rows, plain_labels, strict=True)]
            if self._positive_column is not None:
                positive = probabilities[:, self._positive_column].tolist()
        name, version = self.bundle.name, self.bundle.version
        records = [
            {
                "id": ids[i],
                "scored_label": plain_labels[i],
                "scored_probability": positive[i],
                "scored_label_probability": label_probability[i],
                "scored_probabilities": maps[i],
                "model_name": name,
                "model_version": version,
                "scored_at": scored_at,
            }
            for i in range(n)
        ]
        if self._include_features:
            # from the rows as decoded (the frame keeps their positions as its index), not from the frame:
            # pandas turns a null long into NaN (and 3 into 3.0), which the Avro ["null", "long"] cannot carry
            for record, row in zip(records, frame.index, strict=True):
                record["features"] = {name: source_rows[row].get(name) for name in self._columns}
        return records


def failed_reason(reason: Any) -> str:
    return f"the model failed on this row: {reason}"


def _decision_to_probabilities(decision: np.ndarray) -> np.ndarray:
    """Sigmoid (binary) or softmax (multiclass) of decision scores, for models without ``predict_proba``."""
    if decision.ndim == 1:
        positive = 1.0 / (1.0 + np.exp(-decision))
        return np.column_stack([1.0 - positive, positive])
    shifted = np.exp(decision - decision.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
