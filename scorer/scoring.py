"""Score Model: decoded rows to a DataFrame in training order, one model call per batch, prediction records.

This is the code that Kafka, files and HTTP share. It knows nothing of where rows come from: it takes
records (dicts in the reader schema's shape), validates them column by column, makes **one**
``predict_proba`` (or ``predict``) call for the whole batch, and returns prediction records plus the
rejections, each carrying the row's position so that the caller can find its source.

If the model raises on a batch, the batch is split in halves until the rows that make it fail are
found: one bad row costs O(log n) extra calls and rejects only itself (``model_error``).

May import: errors, types, schema, bundle. Third-party: numpy, pandas, threadpoolctl.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from scorer.bundle import ModelBundle
from scorer.errors import RejectReason
from scorer.schema import pandas_column
from scorer.types import Rejection

__all__ = ["ScoreResult", "Scorer", "limit_model_threads"]

UnknownCategoryPolicy = Literal["reject", "score"]


@dataclass
class ScoreResult:
    """What a batch scored to, as columns (one entry per accepted row), plus the rejections.

    Columns rather than records: the encoder packs them directly, and ``predictions`` builds the
    documented prediction records (``schemas/prediction.avsc``) for callers that want dicts.
    """

    indices: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    labels: list[Any] = field(default_factory=list)
    probabilities: np.ndarray | None = None
    class_keys: list[str] = field(default_factory=list)
    positive_column: int | None = None
    label_probability: list[float] | None = None
    model_name: str = ""
    model_version: str = ""
    scored_at: int = 0
    features: list[dict[str, Any]] | None = None
    rejections: list[Rejection] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def predictions(self) -> list[dict[str, Any]]:
        """The prediction records, one per accepted row, in ``indices`` order."""
        n = len(self.indices)
        positive: list[float | None] = [None] * n
        label_probability: list[float | None] = list(self.label_probability) if self.label_probability else [None] * n
        maps: list[dict[str, float] | None] = [None] * n
        if self.probabilities is not None:
            maps = [dict(zip(self.class_keys, row, strict=True)) for row in self.probabilities.tolist()]
            if self.positive_column is not None:
                positive = self.probabilities[:, self.positive_column].tolist()
        records = [
            {
                "id": self.ids[i],
                "scored_label": self.labels[i],
                "scored_probability": positive[i],
                "scored_label_probability": label_probability[i],
                "scored_probabilities": maps[i],
                "model_name": self.model_name,
                "model_version": self.model_version,
                "scored_at": self.scored_at,
            }
            for i in range(n)
        ]
        if self.features is not None:
            for record, features in zip(records, self.features, strict=True):
                record["features"] = features
        return records


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
        self._include_features = include_features
        self._clock = clock
        self._columns = bundle.schema.feature_names
        features = bundle.schema.features
        self._finite_columns = [f.name for f in features if f.type == "double" and not f.nullable]
        self._categories = (
            {f.name: list(f.categories) for f in features if f.categories is not None}
            if unknown_categories == "reject"
            else {}
        )
        self._classes = np.asarray(bundle.classes) if bundle.classes is not None else None
        self._class_keys = [str(c) for c in bundle.classes] if bundle.classes is not None else []
        self._positive_column = (
            self._class_keys.index(str(bundle.positive_class)) if bundle.positive_class is not None else None
        )

    def score(self, rows: pd.DataFrame | Sequence[dict[str, Any]], indices: Sequence[int] | None = None) -> ScoreResult:
        """Validate, score and describe a batch.

        Args:
            rows: a frame with the feature columns and the id column, indexed by batch position (what
                ``codec.FeatureDecoder`` returns), or records as dicts.
            indices: batch positions of dict records (default 0..n-1).
        """
        frame = rows if isinstance(rows, pd.DataFrame) else self._frame(rows, indices)
        result = ScoreResult(
            class_keys=self._class_keys,
            positive_column=self._positive_column,
            model_name=self.bundle.name,
            model_version=self.bundle.version,
        )
        if not len(frame):
            return result
        positions = frame.index.to_numpy(dtype=np.int64)
        ok = self._validate(frame, positions, result.rejections)
        if not ok.all():
            frame, positions = frame[ok], positions[ok]
        features = frame[self._columns]
        nullable_ints = [c for c in self._columns if isinstance(features[c].dtype, pd.Int64Dtype)]
        if nullable_ints:  # the model sees NaN for a null, as it did in training (pandas reads nulls so)
            features = features.astype(dict.fromkeys(nullable_ints, np.float64))
        labels, probabilities, failed = self._predict_isolating(features)
        if probabilities is not None and not self.bundle.label_from_proba:
            self._fail_unlisted_labels(labels, failed)
        for row in np.flatnonzero(failed):
            result.rejections.append(
                Rejection(int(positions[row]), RejectReason.MODEL_ERROR, failed_reason(failed[row]))
            )
        keep = failed == None  # noqa: E711 - elementwise on an object array
        if not keep.all():
            frame, positions, labels = frame[keep], positions[keep], labels[keep]
            probabilities = probabilities[keep] if probabilities is not None else None
        self._fill(result, frame, labels, probabilities)
        result.indices = positions.tolist()
        result.rejections.sort(key=lambda r: r.index)
        return result

    def _frame(self, rows: Sequence[dict[str, Any]], indices: Sequence[int] | None) -> pd.DataFrame:
        """Records as dicts to the frame the decoder would give (same column types, positions as index)."""
        index = pd.Index(indices if indices is not None else range(len(rows)), dtype=np.int64)
        kinds = {f.name: f.type for f in self.bundle.schema.features}
        columns = list(dict.fromkeys([*self._columns, self._id_field]))  # the id may itself be a feature
        data = {name: pandas_column([row.get(name) for row in rows], kinds.get(name), index) for name in columns}
        return pd.DataFrame(data, index=index, copy=False)

    def _validate(self, frame: pd.DataFrame, positions: np.ndarray, rejections: list[Rejection]) -> np.ndarray:
        """Checks Avro cannot express, a few vectorised passes per batch; returns the mask of rows that pass.

        Each rejected row gets the first reason found, in the order: missing id, NaN or infinity, unknown
        category.
        """
        ok = frame[self._id_field].notna().to_numpy().copy()
        for row in np.flatnonzero(~ok):
            rejections.append(
                Rejection(int(positions[row]), RejectReason.MISSING_ID, f"the record has no {self._id_field!r}")
            )
        if self._finite_columns:
            values = frame[self._finite_columns].to_numpy(dtype=np.float64, na_value=np.nan)
            bad = ~np.isfinite(values)
            for row in np.flatnonzero(bad.any(axis=1) & ok):
                name = self._finite_columns[int(np.argmax(bad[row]))]
                rejections.append(
                    Rejection(int(positions[row]), RejectReason.INVALID_VALUE, f"{name} is NaN or infinite")
                )
                ok[row] = False
        for name, known in self._categories.items():
            column = frame[name]
            unknown = ~column.isin(known).to_numpy() & column.notna().to_numpy() & ok
            for row in np.flatnonzero(unknown):
                detail = f"{name}={column.iloc[row]!r} was not seen in training"
                rejections.append(Rejection(int(positions[row]), RejectReason.UNKNOWN_CATEGORY, detail))
            ok &= ~unknown
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

    def _fail_unlisted_labels(self, labels: np.ndarray, failed: np.ndarray) -> None:
        """A label from ``predict`` that is not among the classes has no probability to report: that row's
        model error, never the batch's (which would stop the partition on every retry)."""
        known = set(self._class_keys)
        for row, label in enumerate(labels.tolist()):
            if failed[row] is None and str(label) not in known:
                failed[row] = f"it predicted {label!r}, which is not one of its classes {self._class_keys}"

    def _empty_probabilities(self, n: int) -> np.ndarray | None:
        return None if self._classes is None else np.zeros((n, len(self._classes)))

    def _predict(self, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        """One model call; outputs of the wrong shape raise here, inside the isolation of model errors."""
        labels, probabilities = self._call_model(features)
        n, width = len(features), len(self._class_keys)
        if labels.shape != (n,) or probabilities is not None and probabilities.shape != (n, width):
            shape = None if probabilities is None else probabilities.shape
            raise ValueError(
                f"the model returned labels of shape {labels.shape} and probabilities of shape {shape} "
                f"for {n} rows and {width} classes"
            )
        return labels, probabilities

    def _call_model(self, features: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
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

    def _fill(
        self, result: ScoreResult, frame: pd.DataFrame, labels: np.ndarray, probabilities: np.ndarray | None
    ) -> None:
        """Put the batch's outputs into ``result`` as columns of plain Python values."""
        result.scored_at = int(self._clock() * 1000)
        result.ids = _id_strings(frame[self._id_field])
        plain_labels = labels.tolist()
        if self.bundle.task == "regression":
            plain_labels = [float(v) for v in plain_labels]
        result.labels = plain_labels
        result.probabilities = probabilities
        if probabilities is not None:
            if self.bundle.label_from_proba:
                result.label_probability = probabilities.max(axis=1).tolist()
            else:
                lookup = {key: i for i, key in enumerate(self._class_keys)}
                columns = np.fromiter(
                    (lookup[str(label)] for label in plain_labels), dtype=np.int64, count=len(plain_labels)
                )
                result.label_probability = probabilities[np.arange(len(columns)), columns].tolist()
        if self._include_features:
            result.features = self._feature_records(frame)

    def _feature_records(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        """The input features as Avro-ready values: pandas' NaN for a null long becomes None, 3.0 becomes 3."""
        columns: dict[str, list[Any]] = {}
        for feature in self.bundle.schema.features:
            convert = _PYTHON_TYPES[feature.type]
            columns[feature.name] = [None if _is_null(v) else convert(v) for v in frame[feature.name].tolist()]
        return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def limit_model_threads(threads: int) -> None:
    """Cap the OpenMP and BLAS pools for models called from *this* thread (0: leave the libraries' default).

    OpenMP's thread count is per calling thread, so the scoring thread calls this for itself. Through
    threadpoolctl (scikit-learn's own dependency) rather than environment variables, which are read only
    once, at import. Why cap at all: HistGradientBoosting and friends start one OpenMP thread per core and
    spin-wait between parallel regions; beside a busy main thread (or a broker on the same machine) a
    descheduled OpenMP thread stalls every region (measured here: a batch 10x slower under load).
    """
    if threads > 0:
        threadpool_limits(limits=threads)


def _id_strings(column: pd.Series) -> list[str]:
    """Ids as text. Integer ids stay integers in the frame (nullable ``Int64``), so 7 is "7", never "7.0"."""
    return [str(v) for v in column.tolist()]


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value is pd.NA


_PYTHON_TYPES: dict[str, Any] = {"double": float, "long": int, "boolean": bool, "string": str}


def failed_reason(reason: Any) -> str:
    return f"the model failed on this row: {reason}"


def _decision_to_probabilities(decision: np.ndarray) -> np.ndarray:
    """Sigmoid (binary) or softmax (multiclass) of decision scores, for models without ``predict_proba``."""
    if decision.ndim == 1:
        positive = 1.0 / (1.0 + np.exp(-decision))
        return np.column_stack([1.0 - positive, positive])
    shifted = np.exp(decision - decision.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
