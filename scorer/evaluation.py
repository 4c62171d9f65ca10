"""Rolling Azure "Evaluate Model" metrics over joined (prediction, label) rows, with update/revert.

Pure core: imports ``scorer.errors`` and numpy only; no Kafka, Prometheus, clocks or threads. The sidecar
feeds joined rows to :class:`Evaluator` and the metrics collector calls :meth:`Evaluator.snapshot` at
scrape time.

Why hand-written: ``sklearn.metrics`` recomputes from the full set of rows on each call. A rolling window
needs to add one row and remove the oldest on each arrival, so, as in river's ``Rolling`` and
``TimeRolling``, each task has an accumulator with ``update(y_true, y_pred)`` and ``revert(y_true,
y_pred)``, and a window wrapper decides what enters and leaves. Even so, ``sklearn.metrics`` on exactly the
rows in a window is the oracle: every value here must equal it to 1e-9 relative (see
``docs/score-model-semantics.md``).

Exactness, and what each accumulator keeps:

- Sums of floats (log-loss terms, y, y², |y - ŷ|, (y - ŷ)²) are kept *exactly* as Python integers in
  units of 2**-2148, the smallest power of two of which every double and the square of every double is an
  integer multiple. Update and revert are then exact, so long-running windows never drift (a float running
  sum loses small terms after a large value has entered and left), and each reported mean is the correctly
  rounded value of the exact mean. Each add costs a few big-integer operations on a few thousand bits.
- AUC: per window, two hash multisets, score -> count, for the positive and the negative rows. Update and
  revert are O(1). At snapshot time the negative scores are sorted once with numpy and the positives are
  located with ``searchsorted``: O(k log k) vectorised for k distinct scores (a few ms for 100k rows). The
  snapshot runs every ~15 s, and rows arrive thousands of times as often, so this beats keeping a sorted
  structure up to date in pure Python on every row. The result is the Mann-Whitney statistic with ties
  counted as one half. It equals the trapezoidal ROC area that ``roc_auc_score`` computes, ties included,
  and it is computed in exact integer arithmetic.
- RAE needs Σ|y - mean(y)| while the mean moves: a multiset y -> count is kept (O(1) update and revert),
  and at snapshot time one vectorised pass computes Σ count·|y - mean| with the correctly rounded mean.
  This gives exactly what ``np.abs(y - y.mean()).sum()`` gives, up to float rounding, with no approximation.
  RSE and R² use Σ(y - mean)² = Σy² - (Σy)²/n, evaluated exactly on the integer sums.

Undefined values are ``float('nan')``, never 0, so a dashboard can tell "no data" from "bad model":

- An empty window gives nan for every ratio and 0 for counts.
- Binary: precision is nan when nothing is predicted positive, and recall is nan when no positive
  label is in the window. These match sklearn's ``zero_division=np.nan``; sklearn's default warns and
  returns 0. F1 = 2TP / (2TP + FP + FN) is nan only when that denominator is 0. AUC is nan unless both
  classes are present (sklearn warns and returns nan).
- Multiclass: macro averages run over the classes present in the window (as a true or a predicted
  label). A class whose per-class value is undefined (never predicted, for precision) is left out of the
  mean, as sklearn does with ``zero_division=np.nan``. Classes absent from the window are left out, as in
  Azure, where Evaluate Model only sees the scored dataset. The result does not depend on whether the
  oracle passes ``labels=`` with all the model's classes. Average accuracy is the mean over the same
  present classes of (TP + TN) / N.
- Regression: RSE, RAE and R² are nan when every y in the window is equal (including a window of one
  row). sklearn's ``r2_score`` then returns 1.0 or 0.0 by default (``force_finite``).
"""

from __future__ import annotations

import functools
import heapq
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, Literal, Protocol, TypeVar

import numpy as np

from scorer.errors import ConfigError

__all__ = [
    "BinaryMetrics",
    "CountWindow",
    "EvalRow",
    "Evaluator",
    "MulticlassMetrics",
    "RegressionMetrics",
    "RollingMetric",
    "ScoredFacts",
    "Task",
    "TimeWindow",
    "window_name",
]

Task = Literal["binary", "multiclass", "regression"]

_NAN = float("nan")
_SHIFT = 2148  # every double, and the square of every double, is an integer multiple of 2**-2148
_EPS = float(np.finfo(np.float64).eps)  # sklearn's log_loss clips to [eps, 1 - eps] for float64 input

_YT = TypeVar("_YT", contravariant=True)
_YP = TypeVar("_YP", contravariant=True)
_T = TypeVar("_T")
_P = TypeVar("_P")


class ScoredFacts(Protocol):
    """What evaluation reads from a prediction (``scorer.join.PredictionFacts`` satisfies it)."""

    @property
    def scored_label(self) -> object: ...

    @property
    def scored_probability(self) -> float | None: ...

    @property
    def scored_probabilities(self) -> Mapping[str, float] | None: ...


class EvalRow(Protocol):
    """A prediction joined with its true label (``scorer.join.JoinedRow`` satisfies it).

    Defined here, by the consumer, so that evaluation does not import the join module.
    """

    @property
    def prediction(self) -> ScoredFacts: ...

    @property
    def label(self) -> object: ...

    @property
    def event_time_ms(self) -> int: ...


class RollingMetric(Protocol[_YT, _YP]):
    """An accumulator a window can add rows to and take them out of again."""

    def update(self, y_true: _YT, y_pred: _YP) -> None: ...

    def revert(self, y_true: _YT, y_pred: _YP) -> None: ...

    def get(self) -> dict[str, float]: ...


def _units(x: float) -> int:
    """``x`` as an exact integer count of 2**-_SHIFT (``x`` must be finite)."""
    num, den = x.as_integer_ratio()
    return num << (_SHIFT + 1 - den.bit_length())


def _square_units(x: float) -> int:
    """``x * x``, computed exactly, as an integer count of 2**-_SHIFT."""
    num, den = x.as_integer_ratio()
    return (num * num) << (_SHIFT + 2 - 2 * den.bit_length())


def _mean(units: int, n: int) -> float:
    """Correctly rounded ``units * 2**-_SHIFT / n`` (int / int true division rounds correctly)."""
    return units / (n << _SHIFT) if n else _NAN


def _ratio(num: int, den: int) -> float:
    return num / den if den else _NAN


def _bump(counts: dict[Any, int], key: object, sign: int) -> None:
    """Add ``sign`` to ``counts[key]``, deleting the key at zero so that dict size tracks the window."""
    value = counts.get(key, 0) + sign
    if value:
        counts[key] = value
    else:
        del counts[key]


def _to_float(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _log_loss_term(y_true: bool, p: float) -> float:
    """One row of ``sklearn.metrics.log_loss`` for binary input: clip the class probability, then -log."""
    q = p if y_true else 1.0 - p
    return -math.log(min(max(q, _EPS), 1.0 - _EPS))


def _auc(pos: dict[float, int], neg: dict[float, int]) -> float:
    """Exact ROC AUC from score multisets: P(score+ > score-) + P(tie) / 2."""
    if not pos or not neg:
        return _NAN
    neg_scores = np.fromiter(neg.keys(), dtype=np.float64, count=len(neg))
    neg_counts = np.fromiter(neg.values(), dtype=np.int64, count=len(neg))
    order = np.argsort(neg_scores)
    neg_scores = neg_scores[order]
    cumulative = np.concatenate(([0], np.cumsum(neg_counts[order])))
    pos_scores = np.fromiter(pos.keys(), dtype=np.float64, count=len(pos))
    pos_counts = np.fromiter(pos.values(), dtype=np.int64, count=len(pos))
    below = cumulative[np.searchsorted(neg_scores, pos_scores, side="left")]
    through = cumulative[np.searchsorted(neg_scores, pos_scores, side="right")]
    twice_u = int(np.dot(pos_counts, below + through))  # 2·below + ties; int64 is exact below ~3e9 rows
    return twice_u / (2 * int(cumulative[-1]) * int(pos_counts.sum()))


class BinaryMetrics:
    """Binary classification metrics from ``(y_true, p)``: is the label positive, P(positive class).

    A row is *predicted positive* when ``p >= threshold``. That is Azure's rule for the threshold it
    reports. The model's own scored label is not used, so the confusion counts follow the threshold.

    Args:
        threshold: Decision threshold on the positive-class probability.

    Example:
        >>> m = BinaryMetrics(threshold=0.5)
        >>> for y, p in [(True, 0.9), (False, 0.6), (True, 0.4), (False, 0.1)]:
        ...     m.update(y, p)
        >>> r = m.get()
        >>> (r["tp"], r["fp"], r["fn"], r["tn"], r["precision"], r["auc"])
        (1.0, 1.0, 1.0, 1.0, 0.5, 0.75)
        >>> m.revert(False, 0.6)
        >>> m.get()["precision"]
        1.0
    """

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.tn = self.fp = self.fn = self.tp = 0
        self._loss = 0  # Σ log-loss terms, exact units
        self._pos: dict[float, int] = {}  # score -> count, positive rows
        self._neg: dict[float, int] = {}

    def update(self, y_true: bool, y_pred: float) -> None:
        """Add a row; ``y_pred`` is the probability of the positive class, in [0, 1]."""
        self._apply(y_true, y_pred, 1)

    def revert(self, y_true: bool, y_pred: float) -> None:
        """Remove a row previously added with :meth:`update`."""
        self._apply(y_true, y_pred, -1)

    def _apply(self, y_true: bool, p: float, sign: int) -> None:
        if p >= self.threshold:
            if y_true:
                self.tp += sign
            else:
                self.fp += sign
        elif y_true:
            self.fn += sign
        else:
            self.tn += sign
        self._loss += sign * _units(_log_loss_term(y_true, p))
        _bump(self._pos if y_true else self._neg, p, sign)

    def score_buckets(self, bounds: Sequence[float]) -> dict[bool, tuple[list[int], float]]:
        """Per true class: cumulative counts of scores <= each bound, and the sum of scores.

        Additive across replicas, so PromQL can approximate a fleet-wide ROC curve and AUC from them.
        """
        edges = np.asarray(bounds, dtype=np.float64)
        result = {}
        for positive, multiset in ((True, self._pos), (False, self._neg)):
            scores = np.fromiter(multiset.keys(), dtype=np.float64, count=len(multiset))
            counts = np.fromiter(multiset.values(), dtype=np.int64, count=len(multiset))
            order = np.argsort(scores)
            cumulative = np.concatenate([[0], np.cumsum(counts[order])])
            below = np.searchsorted(scores[order], edges, side="right")
            result[positive] = (cumulative[below].tolist(), float(np.dot(scores, counts)))
        return result

    def get(self) -> dict[str, float]:
        """The binary Evaluate Model set; see the module docstring for the nan rules."""
        tn, fp, fn, tp = self.tn, self.fp, self.fn, self.tp
        n = tn + fp + fn + tp
        return {
            "accuracy": _ratio(tp + tn, n),
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "auc": _auc(self._pos, self._neg),
            "log_loss": _mean(self._loss, n),
            "threshold": float(self.threshold),
            "tn": float(tn),
            "fp": float(fp),
            "fn": float(fn),
            "tp": float(tp),
        }


class MulticlassMetrics:
    """Multiclass metrics from ``(actual, predicted)`` class names; keeps the confusion matrix.

    Example:
        >>> m = MulticlassMetrics()
        >>> for a, p in [("cat", "cat"), ("dog", "cat"), ("dog", "dog"), ("bird", "dog")]:
        ...     m.update(a, p)
        >>> r = m.get()
        >>> (r["overall_accuracy"], r["average_accuracy"], r["macro_recall"])
        (0.5, 0.6666666666666666, 0.5)
        >>> m.confusion[("dog", "cat")]
        1
    """

    def __init__(self) -> None:
        self.n = 0
        self._confusion: dict[tuple[str, str], int] = {}
        self._true: dict[str, int] = {}
        self._pred: dict[str, int] = {}
        self._tp: dict[str, int] = {}

    def update(self, y_true: str, y_pred: str) -> None:
        """Add a row."""
        self._apply(y_true, y_pred, 1)

    def revert(self, y_true: str, y_pred: str) -> None:
        """Remove a row previously added with :meth:`update`."""
        self._apply(y_true, y_pred, -1)

    def _apply(self, actual: str, predicted: str, sign: int) -> None:
        self.n += sign
        _bump(self._confusion, (actual, predicted), sign)
        _bump(self._true, actual, sign)
        _bump(self._pred, predicted, sign)
        if actual == predicted:
            _bump(self._tp, actual, sign)

    @property
    def confusion(self) -> dict[tuple[str, str], int]:
        """Non-zero cells of the confusion matrix, keyed ``(actual, predicted)``."""
        return dict(self._confusion)

    def get(self) -> dict[str, float]:
        """The multiclass Evaluate Model set; see the module docstring for classes and nan."""
        n = self.n
        correct = sum(self._tp.values())
        present = self._true.keys() | self._pred.keys()
        per_class_accuracy = [
            (n - self._true.get(c, 0) - self._pred.get(c, 0) + 2 * self._tp.get(c, 0)) / n for c in present
        ]
        precisions = [self._tp.get(c, 0) / count for c, count in self._pred.items()]
        recalls = [self._tp.get(c, 0) / count for c, count in self._true.items()]
        return {
            "overall_accuracy": _ratio(correct, n),
            "average_accuracy": math.fsum(per_class_accuracy) / len(present) if present else _NAN,
            "micro_precision": _ratio(correct, sum(self._pred.values())),
            "macro_precision": math.fsum(precisions) / len(precisions) if precisions else _NAN,
            "micro_recall": _ratio(correct, sum(self._true.values())),
            "macro_recall": math.fsum(recalls) / len(recalls) if recalls else _NAN,
        }


class RegressionMetrics:
    """Regression metrics from ``(y, ŷ)`` floats (finite).

    Example:
        >>> m = RegressionMetrics()
        >>> for y, yhat in [(1.0, 1.5), (2.0, 2.0), (3.0, 2.5), (4.0, 5.0)]:
        ...     m.update(y, yhat)
        >>> r = m.get()
        >>> (r["mae"], r["rae"], r["rse"], r["r2"])
        (0.5, 0.5, 0.3, 0.7)
    """

    def __init__(self) -> None:
        self.n = 0
        self._sum_y = 0  # all sums in exact units of 2**-_SHIFT
        self._sum_y2 = 0
        self._sum_abs = 0
        self._sum_sq = 0
        self._ys: dict[float, int] = {}  # multiset of y, for Σ|y - mean|

    def update(self, y_true: float, y_pred: float) -> None:
        """Add a row."""
        self._apply(y_true, y_pred, 1)

    def revert(self, y_true: float, y_pred: float) -> None:
        """Remove a row previously added with :meth:`update`."""
        self._apply(y_true, y_pred, -1)

    def _apply(self, y: float, y_hat: float, sign: int) -> None:
        error = y - y_hat  # rounded like sklearn's ``y_true - y_pred``
        self.n += sign
        self._sum_y += sign * _units(y)
        self._sum_y2 += sign * _square_units(y)
        self._sum_abs += sign * _units(abs(error))
        self._sum_sq += sign * _square_units(error)
        _bump(self._ys, y, sign)

    def sums(self) -> dict[str, float]:
        """Window sums that add up across replicas: fleet MAE = Σ abs_error_sum / Σ rows, and so on."""
        return {
            "abs_error_sum": _mean(self._sum_abs, 1),
            "squared_error_sum": _mean(self._sum_sq, 1),
            "label_sum": _mean(self._sum_y, 1),
            "label_squared_sum": _mean(self._sum_y2, 1),
        }

    def get(self) -> dict[str, float]:
        """The regression Evaluate Model set; see the module docstring for the nan rules."""
        n = self.n
        if not n:
            return dict.fromkeys(("mae", "rmse", "rae", "rse", "r2"), _NAN)
        # Σ(y - mean)² · n · 2**(2·_SHIFT), exactly: n·Σy² - (Σy)².
        scaled_sst = (self._sum_y2 * n << _SHIFT) - self._sum_y * self._sum_y
        rse = _ratio(self._sum_sq * n << _SHIFT, scaled_sst)
        mean = _mean(self._sum_y, n)
        ys = np.fromiter(self._ys.keys(), dtype=np.float64, count=len(self._ys))
        counts = np.fromiter(self._ys.values(), dtype=np.float64, count=len(self._ys))
        sat = float(np.dot(counts, np.abs(ys - mean)))
        sum_abs = self._sum_abs / (1 << _SHIFT)
        return {
            "mae": _mean(self._sum_abs, n),
            "rmse": math.sqrt(_mean(self._sum_sq, n)),
            "rae": sum_abs / sat if sat else _NAN,
            "rse": rse,
            "r2": 1.0 - rse,
        }


def window_name(*, rows: int | None = None, seconds: int | None = None) -> str:
    """Name a window for metric labels: ``last_<rows>``, or its span in the largest whole unit.

    Example:
        >>> window_name(rows=1000), window_name(seconds=300), window_name(seconds=3600), window_name(seconds=90)
        ('last_1000', '5m', '1h', '90s')
    """
    if rows is not None and seconds is None:
        return f"last_{rows}"
    if seconds is None or rows is not None:
        raise ValueError("give exactly one of rows and seconds")
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class CountWindow(Generic[_T, _P]):
    """The last ``size`` rows in arrival order; the oldest is reverted when a new row arrives.

    Args:
        size: How many rows the window holds.
        metric: The accumulator rows go into and are taken out of.

    Example:
        >>> w = CountWindow(2, RegressionMetrics())
        >>> for i, y in enumerate([10.0, 1.0, 3.0]):
        ...     _ = w.update(y, 2.0, event_time_ms=i)
        >>> len(w), w.metric.get()["mae"]
        (2, 1.0)
    """

    def __init__(self, size: int, metric: RollingMetric[_T, _P]) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.size = size
        self.metric = metric
        self.name = window_name(rows=size)
        self._rows: deque[tuple[_T, _P]] = deque()

    def update(self, y_true: _T, y_pred: _P, event_time_ms: int) -> bool:
        """Add a row (``event_time_ms`` is unused here); always returns True (the row was added)."""
        if len(self._rows) == self.size:
            self.metric.revert(*self._rows.popleft())
        self._rows.append((y_true, y_pred))
        self.metric.update(y_true, y_pred)
        return True

    def __len__(self) -> int:
        return len(self._rows)


class TimeWindow(Generic[_T, _P]):
    """Rows whose event time lies in ``(watermark - seconds, watermark]``, watermark = max event time seen.

    Rows may arrive out of event-time order. A heap ordered by event time finds the rows that leave when the
    watermark advances, in O(log n) per row. A row that is already older than the window when it arrives is
    not added. It is counted in ``late_rows``.

    Args:
        seconds: Span of the window in event time.
        metric: The accumulator rows go into and are taken out of.

    Example:
        >>> w = TimeWindow(60, RegressionMetrics())
        >>> [w.update(1.0, 0.0, t) for t in (100_000, 130_000, 50_000, 170_000)]
        [True, True, False, True]
        >>> len(w), w.late_rows, w.watermark_ms
        (2, 1, 170000)
    """

    def __init__(self, seconds: int, metric: RollingMetric[_T, _P]) -> None:
        if seconds < 1:
            raise ValueError(f"seconds must be at least 1, got {seconds}")
        self.seconds = seconds
        self.metric = metric
        self.name = window_name(seconds=seconds)
        self.watermark_ms: int | None = None
        self.late_rows = 0
        self._span_ms = seconds * 1000
        self._seq = 0  # tie-breaker so the heap never compares labels
        self._heap: list[tuple[int, int, _T, _P]] = []

    def update(self, y_true: _T, y_pred: _P, event_time_ms: int) -> bool:
        """Advance the watermark if needed, then add the row unless it is late; True if it was added."""
        if self.watermark_ms is None or event_time_ms > self.watermark_ms:
            self.watermark_ms = event_time_ms
            horizon = event_time_ms - self._span_ms
            while self._heap and self._heap[0][0] <= horizon:
                _, _, old_true, old_pred = heapq.heappop(self._heap)
                self.metric.revert(old_true, old_pred)
        if event_time_ms <= self.watermark_ms - self._span_ms:
            self.late_rows += 1
            return False
        self._seq += 1
        heapq.heappush(self._heap, (event_time_ms, self._seq, y_true, y_pred))
        self.metric.update(y_true, y_pred)
        return True

    def __len__(self) -> int:
        return len(self._heap)


class Evaluator:
    """Rolling Evaluate Model metrics for one model, over a count window and several time windows.

    Labels and classes are compared as strings (``str(label)``) for classifiers, so ``True``, ``"True"``
    and a class ``True`` all agree, but ``1.0`` and ``1`` do not. A row that cannot be scored is counted in
    :attr:`invalid_rows` by reason and goes into no window. The reasons are: ``unknown_class``, meaning a
    label or predicted class is not one of ``classes``; ``missing_probability``, meaning a binary row
    carries no probability for the positive class; ``invalid_probability``, meaning that probability is
    not in [0, 1]; and ``invalid_value``, meaning a regression label or prediction is not a finite number.

    For binary rows the probability of ``positive_class`` is read from ``scored_probabilities`` when it
    holds that class, else from ``scored_probability``, which is taken to be P(positive class).

    Args:
        task: ``"binary"``, ``"multiclass"`` or ``"regression"``.
        classes: The model's classes. Binary: two classes; optional if ``positive_class`` is given.
            Multiclass: optional; without it every label is accepted. Regression: must be ``None``.
        positive_class: Binary only; defaults to ``classes[-1]`` (the last entry of sklearn's ``classes_``).
        threshold: Binary only: predicted positive when P(positive) >= threshold.
        count_window: Rows in the count window, or ``None`` for no count window.
        time_windows_s: Spans of the event-time windows, in seconds.

    Raises:
        ConfigError: If the arguments are inconsistent; ``setting`` names the argument.

    Example:
        >>> from scorer.join import JoinedRow, PredictionFacts
        >>> ev = Evaluator("binary", classes=["no", "yes"], count_window=3, time_windows_s=[60])
        >>> for i, (label, p) in enumerate([("yes", 0.8), ("no", 0.3), ("no", 0.7), ("yes", 0.2)]):
        ...     pred = PredictionFacts(str(i), "churn", "1", "yes" if p >= 0.5 else "no", p, None)
        ...     _ = ev.add(JoinedRow(pred, label, event_time_ms=1_000 * i))
        >>> snap = ev.snapshot()
        >>> sorted(snap), snap["last_3"]["window_rows"], snap["1m"]["window_rows"]
        (['1m', 'last_3'], 3.0, 4.0)
        >>> snap["last_3"]["accuracy"], snap["1m"]["auc"]
        (0.3333333333333333, 0.5)
    """

    def __init__(
        self,
        task: Task,
        classes: Sequence[object] | None = None,
        positive_class: object | None = None,
        threshold: float = 0.5,
        count_window: int | None = 1000,
        time_windows_s: Sequence[int] = (300, 3600),
    ) -> None:
        self.task = task
        self.classes = [str(c) for c in classes] if classes is not None else None
        self.positive_class = str(positive_class) if positive_class is not None else None
        self.threshold = threshold
        self.invalid_rows: dict[str, int] = {}
        self._class_set = frozenset(self.classes) if self.classes is not None else None
        self._positive = ""  # set by _validate for binary
        self._validate()
        make: Callable[[], RollingMetric[Any, Any]]
        if task == "binary":
            self._convert = self._binary_row
            make = functools.partial(BinaryMetrics, threshold)
        elif task == "multiclass":
            self._convert = self._multiclass_row
            make = MulticlassMetrics
        else:
            self._convert = self._regression_row
            make = RegressionMetrics
        windows: list[CountWindow[Any, Any] | TimeWindow[Any, Any]] = []
        if count_window is not None:
            if count_window < 1:
                raise ConfigError("count_window", f"must be at least 1 or None, got {count_window}")
            windows.append(CountWindow(count_window, make()))
        for seconds in time_windows_s:
            if seconds < 1:
                raise ConfigError("time_windows_s", f"spans must be at least 1 second, got {seconds}")
            windows.append(TimeWindow(seconds, make()))
        if not windows:
            raise ConfigError("time_windows_s", "no windows: give count_window or time_windows_s")
        self._windows = {w.name: w for w in windows}
        if len(self._windows) != len(windows):
            raise ConfigError("time_windows_s", f"window names collide: {[w.name for w in windows]}")

    def _validate(self) -> None:
        if self.task not in ("binary", "multiclass", "regression"):
            raise ConfigError("task", f"must be binary, multiclass or regression, got {self.task!r}")
        if self.task == "regression":
            if self.classes is not None or self.positive_class is not None:
                raise ConfigError("classes", "regression takes no classes or positive_class")
            return
        if self.task == "multiclass":
            if self.positive_class is not None:
                raise ConfigError("positive_class", "only binary evaluation has a positive class")
            return
        if not (0.0 <= self.threshold <= 1.0):
            raise ConfigError("threshold", f"must be within [0, 1], got {self.threshold}")
        if self.classes is not None and len(set(self.classes)) != 2:
            raise ConfigError("classes", f"binary needs exactly two classes, got {self.classes}")
        if self.positive_class is None:
            if self.classes is None:
                raise ConfigError("positive_class", "binary needs positive_class or classes")
            self.positive_class = self.classes[-1]
        elif self.classes is not None and self.positive_class not in self.classes:
            raise ConfigError("positive_class", f"{self.positive_class!r} is not one of {self.classes}")
        self._positive = self.positive_class

    @property
    def window_names(self) -> list[str]:
        """Window names in construction order: the count window first, then the time windows."""
        return list(self._windows)

    @property
    def late_rows(self) -> dict[str, int]:
        """Per time window, rows that were older than the window when they arrived."""
        return {name: w.late_rows for name, w in self._windows.items() if isinstance(w, TimeWindow)}

    def add(self, row: EvalRow) -> bool:
        """Add a joined row to every window; False if the row was invalid (and counted)."""
        converted = self._convert(row)
        if isinstance(converted, str):
            self.invalid_rows[converted] = self.invalid_rows.get(converted, 0) + 1
            return False
        for window in self._windows.values():
            window.update(converted[0], converted[1], row.event_time_ms)
        return True

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Metrics per window name, plus ``window_rows``: the number of rows in the window."""
        return {name: {**w.metric.get(), "window_rows": float(len(w))} for name, w in self._windows.items()}

    def metric(self, window: str) -> BinaryMetrics | MulticlassMetrics | RegressionMetrics:
        """The accumulator of one window, for the additive series (confusion cells, sums, score buckets)."""
        return self._windows[window].metric  # type: ignore[return-value]

    def confusion_cells(self, window: str) -> dict[tuple[str, str], int]:
        """Confusion cells ``(actual, predicted) -> count`` for classifiers; binary cells use class names."""
        metric = self.metric(window)
        if isinstance(metric, MulticlassMetrics):
            return metric.confusion
        if isinstance(metric, BinaryMetrics):
            positive = self._positive
            negative = next((c for c in self.classes or [] if c != positive), f"not {positive}")
            return {
                (positive, positive): metric.tp,
                (negative, positive): metric.fp,
                (positive, negative): metric.fn,
                (negative, negative): metric.tn,
            }
        raise ValueError("regression has no confusion matrix")

    def confusion(self, window: str) -> dict[tuple[str, str], int]:
        """Multiclass only: the window's non-zero confusion cells keyed ``(actual, predicted)``.

        Raises:
            ValueError: For binary and regression evaluators (binary counts are in the snapshot).
            KeyError: If ``window`` is not one of :attr:`window_names`.
        """
        metric = self._windows[window].metric
        if not isinstance(metric, MulticlassMetrics):
            raise ValueError(f"confusion() is for multiclass evaluation, this one is {self.task}")
        return metric.confusion

    def _binary_row(self, row: EvalRow) -> tuple[bool, float] | str:
        label = str(row.label)
        if self._class_set is not None and label not in self._class_set:
            return "unknown_class"
        p: Any = None
        probabilities = row.prediction.scored_probabilities
        if probabilities is not None:
            p = probabilities.get(self._positive)
        if p is None:
            p = row.prediction.scored_probability
        if p is None:
            return "missing_probability"
        probability = _to_float(p)
        if probability is None or not 0.0 <= probability <= 1.0:  # the comparison also rejects nan
            return "invalid_probability"
        return label == self._positive, probability

    def _multiclass_row(self, row: EvalRow) -> tuple[str, str] | str:
        actual, predicted = str(row.label), str(row.prediction.scored_label)
        if self._class_set is not None and (actual not in self._class_set or predicted not in self._class_set):
            return "unknown_class"
        return actual, predicted

    @staticmethod
    def _regression_row(row: EvalRow) -> tuple[float, float] | str:
        y, y_hat = _to_float(row.label), _to_float(row.prediction.scored_label)
        if y is None or y_hat is None or not (math.isfinite(y) and math.isfinite(y_hat)):
            return "invalid_value"
        return y, y_hat
