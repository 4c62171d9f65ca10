"""Rolling Azure "Evaluate Model" metrics over joined (prediction, label) rows, with update/revert.

Pure core: imports ``scorer.errors`` and numpy only; no Kafka, Prometheus, clocks or threads. The sidecar
feeds joined rows to :class:`Evaluator` and the metrics collector calls :meth:`Evaluator.snapshot` at
scrape time.

Why hand-written: ``sklearn.metrics`` recomputes from the full set of rows on each call. A rolling window
needs to add rows and remove the oldest on each arrival, so, as in river's ``Rolling`` and
``TimeRolling``, each task has an accumulator with ``update(y_true, y_pred)`` and ``revert(y_true,
y_pred)``, and a window wrapper decides what enters and leaves. Even so, ``sklearn.metrics`` on exactly the
rows in a window is the oracle: every value here must equal it to 1e-9 relative (see
``docs/score-model-semantics.md``).

Batches: the sidecar must keep up with the scorer (tens of thousands of rows a second on two cores), which
per-row Python updates of three windows cannot do. So rows are applied in batches: :class:`Evaluator`
stages up to 1024 valid rows (or takes a whole consumed batch as columns through
:meth:`Evaluator.add_scored`, which is what the sidecar does), and each
window then works out, with numpy, which rows enter and which leave, and hands both sets to its accumulator
in one ``apply(added, removed)`` call. Every accumulator's state depends only on the multiset of rows in its
window, never on the order they came in, and is kept exactly, so a batch gives bit for bit the state that
the same rows one at a time would have given. Anything that reads an evaluator applies the staged rows
first, so readers never see a half-applied batch. Rows are kept as numpy record arrays (a few dozen bytes
a row) rather than as Python tuples in deques and heaps.

Exactness, and what each accumulator keeps:

- Sums of floats (log-loss terms, y, y², |y - ŷ|, (y - ŷ)²) are kept *exactly* as Python integers in
  units of 2**-2148, the smallest power of two of which every double and the square of every double is an
  integer multiple. Update and revert are then exact, so long-running windows never drift (a float running
  sum loses small terms after a large value has entered and left), and each reported mean is the correctly
  rounded value of the exact mean. A batch is summed without a big-integer operation per row: each double
  is an integer mantissa times a power of two (``np.frexp``); mantissas that share an exponent are summed
  in int64, split into pieces small enough that those sums cannot overflow, and only the few distinct
  exponents of a batch cost a big-integer shift and add (see :func:`_exact_sums`).
- AUC: per window, two multisets of scores, for the positive and the negative rows, each kept as sorted
  distinct scores with counts plus the batches added and removed since (:class:`_Multiset`); the pending
  batches are merged in with one numpy sort when they outnumber the merged scores, or when read, so update
  and revert cost amortised O(log n) per row. At snapshot time the positives are located among the sorted
  negatives with ``searchsorted``: O(k log k) vectorised for k distinct scores (a few ms for 100k rows).
  The result is the Mann-Whitney statistic with ties counted as one half. It equals the trapezoidal ROC
  area that ``roc_auc_score`` computes, ties included, and it is computed in exact integer arithmetic.
- RAE needs Σ|y - mean(y)| while the mean moves: a multiset of y is kept (as for AUC), and at snapshot time
  one vectorised pass computes Σ count·|y - mean| with the correctly rounded mean. This gives exactly what
  ``np.abs(y - y.mean()).sum()`` gives, up to float rounding, with no approximation. RSE and R² use
  Σ(y - mean)² = Σy² - (Σy)²/n, evaluated exactly on the integer sums.
- Log-loss terms are computed once per row, when the row is converted, and stored with it, so a revert
  subtracts exactly the term that the update added (see :meth:`BinaryMetrics.rows`).

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
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
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
_STAGED_ROWS = 1024  # Evaluator.add applies staged rows in batches of this many
_SUM_CHUNK = 1 << 24  # most values _exact_sums adds in one pass: keeps its int64 group sums below 2**63

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
    """An accumulator a window can add rows to and take them out of again.

    ``rows`` converts values to the accumulator's record array (``dtype``); windows keep rows in that form
    and hand them back to ``apply`` when they leave. ``update`` and ``revert`` are the one-row forms.
    """

    dtype: np.dtype[Any]

    def rows(self, y_true: Sequence[_YT], y_pred: Sequence[_YP]) -> np.ndarray: ...

    def apply(self, added: np.ndarray, removed: np.ndarray) -> None: ...

    def update(self, y_true: _YT, y_pred: _YP) -> None: ...

    def revert(self, y_true: _YT, y_pred: _YP) -> None: ...

    def get(self) -> dict[str, float]: ...


def _exact_sums(added: np.ndarray, removed: np.ndarray, squares: bool = False) -> tuple[int, int]:
    """``Σ added - Σ removed`` and, if asked, the same for the squares, exactly, in units of 2**-_SHIFT.

    Values must be finite. Why not ``sum(units(x))``: a big-integer conversion and add per row is what made
    regression windows slow. Instead, with ``x = f·2**e`` (``np.frexp``, 0.5 <= |f| < 1), every x is the
    integer ``m = f·2**53`` times ``2**(e - 53)``. Rows are grouped by exponent and, per group, m and the
    limbs of m² are summed in int64 (pieces sized so that up to ``_SUM_CHUNK`` rows cannot overflow). Only
    the group totals, one per distinct exponent (a few dozen in a batch), become Python integers.
    """
    if len(added) + len(removed) > _SUM_CHUNK:
        parts = [(added[i : i + _SUM_CHUNK], removed[:0]) for i in range(0, len(added), _SUM_CHUNK)]
        parts += [(added[:0], removed[i : i + _SUM_CHUNK]) for i in range(0, len(removed), _SUM_CHUNK)]
        sums = [_exact_sums(a, r, squares) for a, r in parts]
        return sum(s for s, _ in sums), sum(q for _, q in sums)
    values = np.concatenate((added, removed)).astype(np.float64, copy=False)
    if not len(values):
        return 0, 0
    fraction, exponent = np.frexp(values)
    mantissa = (fraction * 2.0**53).astype(np.int64)  # exact: |mantissa| < 2**53
    sign = np.ones(len(values), dtype=np.int64)
    sign[len(added) :] = -1
    order = np.argsort(exponent.astype(np.int16), kind="stable")  # |e| <= 1074: a fast radix sort on int16
    exponent, mantissa, sign = exponent[order], mantissa[order], sign[order]
    starts = np.flatnonzero(np.concatenate(([True], exponent[1:] != exponent[:-1])))
    exponents = exponent[starts].tolist()

    def group_sums(pieces: list[np.ndarray]) -> list[list[int]]:
        return [np.add.reduceat(piece, starts).tolist() for piece in pieces]

    # signed mantissa = high·2**26 + low with 0 <= low < 2**26 and |high| <= 2**27.
    signed = sign * mantissa
    high, low = group_sums([signed >> 26, signed & (2**26 - 1)])
    total = 0
    for e, h, lo in zip(exponents, high, low, strict=True):
        total += ((h << 26) + lo) << (e - 53 + _SHIFT)  # e >= -1073, so the shift is never negative
    if not squares:
        return total, 0
    # |m| = a·2**36 + b·2**18 + c with a < 2**17 and b, c < 2**18, so that
    # m² = a²·2**72 + 2ab·2**54 + (2ac + b²)·2**36 + 2bc·2**18 + c², every coefficient below 2**37.
    m = np.abs(mantissa)
    a, b, c = m >> 36, (m >> 18) & (2**18 - 1), m & (2**18 - 1)
    limbs = group_sums([sign * a * a, sign * 2 * a * b, sign * (2 * a * c + b * b), sign * 2 * b * c, sign * c * c])
    total_squares = 0
    for g, e in enumerate(exponents):
        group = sum(limb[g] << shift for limb, shift in zip(limbs, (72, 54, 36, 18, 0), strict=True))
        shift = 2 * e - 106 + _SHIFT
        # Below zero only for the smallest subnormals, whose squares are still whole units: exact.
        total_squares += group << shift if shift >= 0 else group >> -shift
    return total, total_squares


def _mean(units: int, n: int) -> float:
    """Correctly rounded ``units * 2**-_SHIFT / n`` (int / int true division rounds correctly)."""
    return units / (n << _SHIFT) if n else _NAN


def _ratio(num: int, den: int) -> float:
    return num / den if den else _NAN


def _bump(counts: dict[Any, int], key: object, delta: int) -> None:
    """Add ``delta`` to ``counts[key]``, deleting the key at zero so that dict size tracks the window."""
    value = counts.get(key, 0) + delta
    if value:
        counts[key] = value
    else:
        del counts[key]


def _to_float(x: Any) -> float | None:
    if type(x) is float:
        return x
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


class _Multiset:
    """A multiset of floats, changed by batches of added and removed values, read as sorted distinct values.

    Why not a dict value -> count, as before: that costs a Python-level update and about 100 bytes per
    distinct value. Here a batch is one appended array. Pending batches are merged into the sorted arrays
    with one numpy sort when they outnumber the merged values (or when read), which costs amortised
    O(log n) per value, and the merged form takes 16 bytes per distinct value.
    """

    _MIN_MERGE = 4096  # pending values below this never trigger a merge on their own

    def __init__(self) -> None:
        self._values = np.empty(0, dtype=np.float64)  # sorted, distinct
        self._counts = np.empty(0, dtype=np.int64)  # positive
        self._added: list[np.ndarray] = []
        self._removed: list[np.ndarray] = []
        self._pending = 0

    def update(self, added: np.ndarray, removed: np.ndarray) -> None:
        """Add the values in ``added`` and remove those in ``removed`` (which must be present)."""
        if len(added):
            self._added.append(added)
        if len(removed):
            self._removed.append(removed)
        self._pending += len(added) + len(removed)
        if self._pending > max(len(self._values), self._MIN_MERGE):
            self._merge()

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct values in ascending order, and how many times each is present."""
        self._merge()
        return self._values, self._counts

    def _merge(self) -> None:
        if not self._pending:
            return
        # Three sorted runs (merged, added, removed), which a stable sort merges in linear time.
        added = np.sort(np.concatenate(self._added)) if self._added else self._values[:0]
        removed = np.sort(np.concatenate(self._removed)) if self._removed else self._values[:0]
        values = np.concatenate((self._values, added, removed))
        counts = np.concatenate(
            (self._counts, np.ones(len(added), dtype=np.int64), np.full(len(removed), -1, dtype=np.int64))
        )
        self._added, self._removed, self._pending = [], [], 0
        order = np.argsort(values, kind="stable")
        values, counts = values[order], counts[order]
        # -0.0 == 0.0, so they count as one value, as they did as dict keys.
        starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
        counts = np.add.reduceat(counts, starts) if len(values) else counts
        live = counts != 0
        self._values, self._counts = values[starts][live], counts[live]


def _auc(pos: _Multiset, neg: _Multiset) -> float:
    """Exact ROC AUC from score multisets: P(score+ > score-) + P(tie) / 2."""
    neg_scores, neg_counts = neg.sorted()
    pos_scores, pos_counts = pos.sorted()
    if not len(pos_scores) or not len(neg_scores):
        return _NAN
    cumulative = np.concatenate(([0], np.cumsum(neg_counts)))
    below = cumulative[np.searchsorted(neg_scores, pos_scores, side="left")]
    through = cumulative[np.searchsorted(neg_scores, pos_scores, side="right")]
    twice_u = int(np.dot(pos_counts, below + through))  # 2·below + ties; int64 is exact below ~3e9 rows
    return twice_u / (2 * int(cumulative[-1]) * int(pos_counts.sum()))


def _one_row(metric: RollingMetric[Any, Any], y_true: object, y_pred: object) -> np.ndarray:
    return metric.rows([y_true], [y_pred])


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

    dtype = np.dtype([("positive", np.bool_), ("p", np.float64), ("loss", np.float64)])

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.tn = self.fp = self.fn = self.tp = 0
        self._loss = 0  # Σ log-loss terms, exact units
        self._pos = _Multiset()  # scores of the positive rows
        self._neg = _Multiset()

    def rows(self, y_true: Sequence[bool], y_pred: Sequence[float]) -> np.ndarray:
        """Records for :meth:`apply`: is the label positive, P(positive), and the row's log-loss term.

        The term is sklearn's ``log_loss`` for one row: clip the probability of the true class to
        [eps, 1 - eps], then -log. It is stored with the row so that a revert subtracts exactly what the
        update added.
        """
        rows = np.empty(len(y_true), dtype=self.dtype)
        rows["positive"] = y_true
        rows["p"] = y_pred
        p = rows["p"]
        rows["loss"] = -np.log(np.clip(np.where(rows["positive"], p, 1.0 - p), _EPS, 1.0 - _EPS))
        return rows

    def update(self, y_true: bool, y_pred: float) -> None:
        """Add a row; ``y_pred`` is the probability of the positive class, in [0, 1]."""
        self.apply(_one_row(self, y_true, y_pred), _one_row(self, y_true, y_pred)[:0])

    def revert(self, y_true: bool, y_pred: float) -> None:
        """Remove a row previously added with :meth:`update`."""
        self.apply(_one_row(self, y_true, y_pred)[:0], _one_row(self, y_true, y_pred))

    def apply(self, added: np.ndarray, removed: np.ndarray) -> None:
        """Add the ``added`` rows and remove the ``removed`` ones (records from :meth:`rows`)."""
        for rows, sign in ((added, 1), (removed, -1)):
            if not len(rows):
                continue
            positive = rows["positive"]
            predicted = rows["p"] >= self.threshold
            tp = int(np.count_nonzero(positive & predicted))
            positives = int(np.count_nonzero(positive))
            predicted_positives = int(np.count_nonzero(predicted))
            self.tp += sign * tp
            self.fn += sign * (positives - tp)
            self.fp += sign * (predicted_positives - tp)
            self.tn += sign * (len(rows) - positives - predicted_positives + tp)
        self._loss += _exact_sums(added["loss"], removed["loss"])[0]
        self._pos.update(added["p"][added["positive"]], removed["p"][removed["positive"]])
        self._neg.update(added["p"][~added["positive"]], removed["p"][~removed["positive"]])

    def score_buckets(self, bounds: Sequence[float]) -> dict[bool, tuple[list[int], float]]:
        """Per true class: cumulative counts of scores <= each bound, and the sum of scores.

        Additive across replicas, so PromQL can approximate a fleet-wide ROC curve and AUC from them.
        """
        edges = np.asarray(bounds, dtype=np.float64)
        result = {}
        for positive, multiset in ((True, self._pos), (False, self._neg)):
            scores, counts = multiset.sorted()
            cumulative = np.concatenate([[0], np.cumsum(counts)])
            below = np.searchsorted(scores, edges, side="right")
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


class _ClassCodes:
    """Class names <-> small integer codes, so that multiclass rows fit in a record array.

    One instance is shared by the windows of an :class:`Evaluator`, so that a row means the same in each.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self._codes: dict[str, int] = {}

    def codes(self, names: Iterable[str]) -> list[int]:
        known = self._codes
        result = []
        for name in names:
            code = known.get(name)
            if code is None:
                code = known[name] = len(self.names)
                self.names.append(name)
            result.append(code)
        return result


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

    dtype = np.dtype([("actual", np.int32), ("predicted", np.int32)])

    def __init__(self, class_codes: _ClassCodes | None = None) -> None:
        self.n = 0
        self._class_codes = class_codes if class_codes is not None else _ClassCodes()
        self._confusion: dict[tuple[str, str], int] = {}
        self._true: dict[str, int] = {}
        self._pred: dict[str, int] = {}
        self._tp: dict[str, int] = {}

    def rows(self, y_true: Sequence[str], y_pred: Sequence[str]) -> np.ndarray:
        """Records for :meth:`apply`: the actual and predicted classes as codes."""
        rows = np.empty(len(y_true), dtype=self.dtype)
        rows["actual"] = self._class_codes.codes(y_true)
        rows["predicted"] = self._class_codes.codes(y_pred)
        return rows

    def update(self, y_true: str, y_pred: str) -> None:
        """Add a row."""
        self._bump_cell(y_true, y_pred, 1)

    def revert(self, y_true: str, y_pred: str) -> None:
        """Remove a row previously added with :meth:`update`."""
        self._bump_cell(y_true, y_pred, -1)

    def apply(self, added: np.ndarray, removed: np.ndarray) -> None:
        """Add the ``added`` rows and remove the ``removed`` ones: one dict update per distinct cell."""
        names = self._class_codes.names
        for rows, sign in ((added, 1), (removed, -1)):
            if not len(rows):
                continue
            k = len(names)
            cells = rows["actual"].astype(np.int64) * k + rows["predicted"]
            if k * k <= 1 << 16:  # bincount is ~20x faster than unique, but allocates every cell
                counts = np.bincount(cells, minlength=k * k)
                distinct = np.flatnonzero(counts)
                counts = counts[distinct]
            else:
                distinct, counts = np.unique(cells, return_counts=True)
            for cell, count in zip(distinct.tolist(), counts.tolist(), strict=True):
                self._bump_cell(names[cell // k], names[cell % k], sign * count)

    def _bump_cell(self, actual: str, predicted: str, delta: int) -> None:
        self.n += delta
        _bump(self._confusion, (actual, predicted), delta)
        _bump(self._true, actual, delta)
        _bump(self._pred, predicted, delta)
        if actual == predicted:
            _bump(self._tp, actual, delta)

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

    dtype = np.dtype([("y", np.float64), ("y_hat", np.float64)])

    def __init__(self) -> None:
        self.n = 0
        self._sum_y = 0  # all sums in exact units of 2**-_SHIFT
        self._sum_y2 = 0
        self._sum_abs = 0
        self._sum_sq = 0
        self._ys = _Multiset()  # for Σ|y - mean|

    def rows(self, y_true: Sequence[float], y_pred: Sequence[float]) -> np.ndarray:
        """Records for :meth:`apply`."""
        rows = np.empty(len(y_true), dtype=self.dtype)
        rows["y"] = y_true
        rows["y_hat"] = y_pred
        return rows

    def update(self, y_true: float, y_pred: float) -> None:
        """Add a row."""
        self.apply(_one_row(self, y_true, y_pred), _one_row(self, y_true, y_pred)[:0])

    def revert(self, y_true: float, y_pred: float) -> None:
        """Remove a row previously added with :meth:`update`."""
        self.apply(_one_row(self, y_true, y_pred)[:0], _one_row(self, y_true, y_pred))

    def apply(self, added: np.ndarray, removed: np.ndarray) -> None:
        """Add the ``added`` rows and remove the ``removed`` ones (records from :meth:`rows`)."""
        self.n += len(added) - len(removed)
        sum_y, sum_y2 = _exact_sums(added["y"], removed["y"], squares=True)
        # |y - ŷ| rounded like sklearn's ``y_true - y_pred``; its square is (y - ŷ)².
        sum_abs, sum_sq = _exact_sums(
            np.abs(added["y"] - added["y_hat"]), np.abs(removed["y"] - removed["y_hat"]), squares=True
        )
        self._sum_y += sum_y
        self._sum_y2 += sum_y2
        self._sum_abs += sum_abs
        self._sum_sq += sum_sq
        self._ys.update(added["y"], removed["y"])

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
        ys, counts = self._ys.sorted()
        sat = float(np.dot(counts.astype(np.float64), np.abs(ys - mean)))
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


def _concat(parts: list[np.ndarray], dtype: np.dtype[Any]) -> np.ndarray:
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


class CountWindow(Generic[_T, _P]):
    """The last ``size`` rows in arrival order; the oldest are reverted when new rows arrive.

    Rows are kept as the record arrays of the batches they came in, oldest first.

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
        self._batches: deque[np.ndarray] = deque()
        self._len = 0

    def update(self, y_true: _T, y_pred: _P, event_time_ms: int) -> bool:
        """Add a row (``event_time_ms`` is unused here); always returns True (the row was added)."""
        self.update_many(_one_row(self.metric, y_true, y_pred), np.array([event_time_ms], dtype=np.int64))
        return True

    def update_many(self, rows: np.ndarray, event_times_ms: np.ndarray) -> int:
        """Add rows (records of ``metric``) in arrival order; returns how many were added (all of them).

        Only the last ``size`` of the batch can stay, so the others are never applied: adding and then
        reverting them would leave the exact accumulator as it was.
        """
        entering = rows[-self.size :]
        excess = self._len + len(entering) - self.size
        leaving = []
        while excess > 0:
            oldest = self._batches[0]
            if len(oldest) <= excess:
                leaving.append(self._batches.popleft())
            else:
                leaving.append(oldest[:excess])
                self._batches[0] = oldest[excess:]
            excess -= len(leaving[-1])
        self.metric.apply(entering, _concat(leaving, rows.dtype))
        if len(entering):
            self._batches.append(entering)
        self._len += len(entering) - sum(len(part) for part in leaving)
        return len(rows)

    def __len__(self) -> int:
        return self._len


def _tail(array: np.ndarray, start: int) -> np.ndarray:
    """``array[start:]``, copied once it is less than half of the buffer it views.

    So a run whose rows are leaving does not keep its whole buffer alive: memory stays within twice the rows
    held, for O(1) amortised copying per row.
    """
    tail = array[start:]
    buffer = tail.base  # numpy points every slice of a slice at the array that owns the memory
    return tail.copy() if isinstance(buffer, np.ndarray) and 2 * len(tail) < len(buffer) else tail


class _EventTimeRuns:
    """Rows with their event times, as a few runs each sorted by event time, so the oldest can leave cheaply.

    Why not a heap of rows (as before): a heap costs two Python-level operations and about 150 bytes per
    row. A batch comes in as one sorted run. While the previous run is at most twice as long as the new one,
    the two are merged (with numpy's stable sort, which merges two sorted runs in linear time), so run
    lengths fall geometrically: there are O(log n) runs, and each row is merged O(log n) times. Expiring
    cuts the prefix at or below the horizon off each run with ``searchsorted``. Rows arriving out of
    event-time order cost no more than rows in order.
    """

    def __init__(self, dtype: np.dtype[Any]) -> None:
        self._dtype = dtype
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []  # (event times ascending, rows), oldest run first
        self.size = 0

    def add(self, event_times_ms: np.ndarray, rows: np.ndarray) -> None:
        if not len(rows):
            return
        self.size += len(rows)
        order = np.argsort(event_times_ms, kind="stable")
        times, rows = event_times_ms[order], rows[order]
        while self._runs and len(self._runs[-1][0]) <= 2 * len(times):
            older_times, older_rows = self._runs.pop()
            times = np.concatenate((older_times, times))
            order = np.argsort(times, kind="stable")
            times, rows = times[order], np.concatenate((older_rows, rows))[order]
        self._runs.append((times, rows))

    def between(self, after_ms: int, through_ms: int) -> np.ndarray:
        """The rows whose event time is in ``(after_ms, through_ms]``, left in place."""
        parts = []
        for times, rows in self._runs:
            start, stop = np.searchsorted(times, (after_ms, through_ms), side="right").tolist()
            if stop > start:
                parts.append(rows[start:stop])
        return _concat(parts, self._dtype)

    def remove_through(self, horizon_ms: int) -> np.ndarray:
        """Remove and return the rows whose event time is at or before ``horizon_ms``."""
        leaving = []
        kept = []
        for times, rows in self._runs:
            cut = int(np.searchsorted(times, horizon_ms, side="right"))
            if cut:
                leaving.append(rows[:cut])
                times, rows = _tail(times, cut), _tail(rows, cut)
            if len(times):
                kept.append((times, rows))
        self._runs = kept
        removed = _concat(leaving, self._dtype)
        self.size -= len(removed)
        return removed


class TimeWindow(Generic[_T, _P]):
    """Rows whose event time lies in ``(watermark - seconds, watermark]``, watermark = max event time seen.

    Rows may arrive out of event-time order. A row that is already older than the window when it arrives
    (against the watermark at its arrival, even within a batch) is not added. It is counted in
    ``late_rows``. Rows are kept in a few runs sorted by event time (:class:`_EventTimeRuns`), so the rows
    that leave when the watermark advances are found in amortised O(log n) per row.

    Several time windows over the same rows can share one store of them (``shared``, kept by the
    :class:`Evaluator`): it holds the rows of the longest window, and a shorter window's rows are exactly
    the stored rows after its own horizon, so the rows leaving it are a slice of the store between its old
    and new horizons. The owner of a shared store adds each batch to it, and drops what left the longest
    window, once, after every window has taken the batch. This halves the sorting and merging with the
    default 5m and 1h windows.

    Args:
        seconds: Span of the window in event time.
        metric: The accumulator rows go into and are taken out of.
        shared: A store of rows kept by the caller for several windows, or ``None`` for a store of its own.

    Example:
        >>> w = TimeWindow(60, RegressionMetrics())
        >>> [w.update(1.0, 0.0, t) for t in (100_000, 130_000, 50_000, 170_000)]
        [True, True, False, True]
        >>> len(w), w.late_rows, w.watermark_ms
        (2, 1, 170000)
    """

    def __init__(self, seconds: int, metric: RollingMetric[_T, _P], shared: _EventTimeRuns | None = None) -> None:
        if seconds < 1:
            raise ValueError(f"seconds must be at least 1, got {seconds}")
        self.seconds = seconds
        self.metric = metric
        self.name = window_name(seconds=seconds)
        self.watermark_ms: int | None = None
        self.late_rows = 0
        self._span_ms = seconds * 1000
        self._owns_rows = shared is None
        self._rows = _EventTimeRuns(metric.dtype) if shared is None else shared
        self._size = 0

    @property
    def horizon_ms(self) -> int | None:
        """Rows at or before this event time are out of the window (``None`` before the first row)."""
        return None if self.watermark_ms is None else self.watermark_ms - self._span_ms

    def update(self, y_true: _T, y_pred: _P, event_time_ms: int) -> bool:
        """Advance the watermark if needed, then add the row unless it is late; True if it was added."""
        return bool(self.update_many(_one_row(self.metric, y_true, y_pred), np.array([event_time_ms], np.int64)))

    def update_many(self, rows: np.ndarray, event_times_ms: np.ndarray) -> int:
        """Add rows (records of ``metric``) in arrival order; returns how many were not late.

        The same as adding them one at a time: a row is late against the running maximum of the event times
        before it, and a row that would have entered and left within the batch is never applied.
        """
        if not len(rows):
            return 0
        old_horizon = self.horizon_ms
        watermarks = np.maximum.accumulate(event_times_ms)
        if self.watermark_ms is not None:
            watermarks = np.maximum(watermarks, self.watermark_ms)
        late = int(np.count_nonzero(event_times_ms <= watermarks - self._span_ms))
        self.late_rows += late
        self.watermark_ms = int(watermarks[-1])
        horizon = self.watermark_ms - self._span_ms
        if self._owns_rows:
            leaving = self._rows.remove_through(horizon)
        elif old_horizon is not None and horizon > old_horizon:
            leaving = self._rows.between(old_horizon, horizon)
        else:
            leaving = rows[:0]
        stays = event_times_ms > horizon  # false for every late row too: their times are <= an earlier horizon
        entering = rows[stays]
        self.metric.apply(entering, leaving)
        if self._owns_rows:
            self._rows.add(event_times_ms[stays], entering)
        self._size += len(entering) - len(leaving)
        return len(rows) - late

    def __len__(self) -> int:
        return self._size


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

    Valid rows are staged and applied to the windows in batches (see the module docstring): :meth:`add`
    applies them every 1024 rows, :meth:`add_many` at the end of each call, and every reader (snapshot,
    metric, confusion, late rows) applies what is staged first, so what it reads is as if each row had been
    applied on arrival.

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
        self.rows_seen = 0  # valid and invalid: a model whose predictions have had no label yet has none
        self._class_set = frozenset(self.classes) if self.classes is not None else None
        self._positive = ""  # set by _validate for binary
        self._validate()
        make: Callable[[], RollingMetric[Any, Any]]
        if task == "binary":
            self._convert = self._binary_row
            make = functools.partial(BinaryMetrics, threshold)
        elif task == "multiclass":
            self._convert = self._multiclass_row
            make = functools.partial(MulticlassMetrics, _ClassCodes())  # one code table for every window
        else:
            self._convert = self._regression_row
            make = RegressionMetrics
        windows: list[CountWindow[Any, Any] | TimeWindow[Any, Any]] = []
        if count_window is not None:
            if count_window < 1:
                raise ConfigError("count_window", f"must be at least 1 or None, got {count_window}")
            windows.append(CountWindow(count_window, make()))
        if any(seconds < 1 for seconds in time_windows_s):
            raise ConfigError("time_windows_s", f"spans must be at least 1 second, got {list(time_windows_s)}")
        self._time_rows: _EventTimeRuns | None = None  # shared by the time windows when there are several
        self._longest: TimeWindow[Any, Any] | None = None
        if len(time_windows_s) > 1:
            first = make()
            self._time_rows = _EventTimeRuns(first.dtype)
            for k, seconds in enumerate(time_windows_s):
                windows.append(TimeWindow(seconds, first if k == 0 else make(), shared=self._time_rows))
            self._longest = max((w for w in windows if isinstance(w, TimeWindow)), key=lambda w: w.seconds)
        else:
            windows.extend(TimeWindow(seconds, make()) for seconds in time_windows_s)
        if not windows:
            raise ConfigError("time_windows_s", "no windows: give count_window or time_windows_s")
        self._windows = {w.name: w for w in windows}
        if len(self._windows) != len(windows):
            raise ConfigError("time_windows_s", f"window names collide: {[w.name for w in windows]}")
        self._rows = windows[0].metric.rows  # converts staged values to records; the same for every window
        self._staged_true: list[Any] = []  # valid rows not yet applied to the windows
        self._staged_pred: list[Any] = []
        self._staged_times: list[int] = []

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
        self._apply_staged()
        return {name: w.late_rows for name, w in self._windows.items() if isinstance(w, TimeWindow)}

    def add(self, row: EvalRow) -> bool:
        """Add a joined row to every window; False if the row was invalid (and counted)."""
        valid = self._stage((row.label,), (self.score_of(row.prediction),), (row.event_time_ms,)) == 1
        if len(self._staged_times) >= _STAGED_ROWS:
            self._apply_staged()
        return valid

    def add_many(self, rows: Iterable[EvalRow]) -> int:
        """Add joined rows, in arrival order, to every window in one batch; returns how many were valid.

        The same as :meth:`add` on each row, but faster.
        """
        rows = list(rows)
        score = self.score_of
        return self.add_scored(
            [r.label for r in rows], [score(r.prediction) for r in rows], [r.event_time_ms for r in rows]
        )

    def add_scored(self, labels: Sequence[object], scores: Sequence[object], event_times_ms: Sequence[int]) -> int:
        """Add rows given as columns, in arrival order, in one batch; returns how many were valid.

        ``scores`` are what :meth:`score_of` reads from each row's prediction; the sidecar computes them for
        a whole decoded batch at once. The same as :meth:`add` on each row.
        """
        valid = self._stage(labels, scores, event_times_ms)
        self._apply_staged()
        return valid

    def score_of(self, prediction: ScoredFacts) -> object:
        """What evaluation reads of a prediction: binary, P(positive class); otherwise the scored label.

        P(positive class) comes from ``scored_probabilities`` when that holds the positive class, else
        from ``scored_probability``; None when neither has it (the row is then ``missing_probability``).
        """
        if self.task != "binary":
            return prediction.scored_label
        probabilities = prediction.scored_probabilities
        p = probabilities.get(self._positive) if probabilities is not None else None
        return prediction.scored_probability if p is None else p

    def _stage(self, labels: Sequence[object], scores: Sequence[object], event_times_ms: Sequence[int]) -> int:
        self.rows_seen += len(labels)
        convert, invalid = self._convert, self.invalid_rows
        stage_true, stage_pred = self._staged_true.append, self._staged_pred.append
        stage_time = self._staged_times.append
        valid = 0
        for label, score, event_time_ms in zip(labels, scores, event_times_ms, strict=True):
            values = convert(label, score)
            if type(values) is str:
                invalid[values] = invalid.get(values, 0) + 1
            else:
                stage_true(values[0])
                stage_pred(values[1])
                stage_time(event_time_ms)
                valid += 1
        return valid

    def _apply_staged(self) -> None:
        if not self._staged_times:
            return
        rows = self._rows(self._staged_true, self._staged_pred)
        times = np.array(self._staged_times, dtype=np.int64)
        self._staged_true, self._staged_pred, self._staged_times = [], [], []
        for window in self._windows.values():
            window.update_many(rows, times)
        horizon = self._longest.horizon_ms if self._longest is not None else None
        if self._time_rows is not None and horizon is not None:  # see TimeWindow: rows shared by windows
            self._time_rows.remove_through(horizon)
            stays = times > horizon
            self._time_rows.add(times[stays], rows[stays])

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Metrics per window name, plus ``window_rows``: the number of rows in the window."""
        self._apply_staged()
        return {name: {**w.metric.get(), "window_rows": float(len(w))} for name, w in self._windows.items()}

    def metric(self, window: str) -> BinaryMetrics | MulticlassMetrics | RegressionMetrics:
        """The accumulator of one window, for the additive series (confusion cells, sums, score buckets)."""
        self._apply_staged()
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
        self._apply_staged()
        return metric.confusion

    def _binary_row(self, label: object, p: object) -> tuple[bool, float] | str:
        label = str(label)
        if self._class_set is not None and label not in self._class_set:
            return "unknown_class"
        if p is None:
            return "missing_probability"
        probability = _to_float(p)
        if probability is None or not 0.0 <= probability <= 1.0:  # the comparison also rejects nan
            return "invalid_probability"
        return label == self._positive, probability

    def _multiclass_row(self, label: object, scored_label: object) -> tuple[str, str] | str:
        actual, predicted = str(label), str(scored_label)
        if self._class_set is not None and (actual not in self._class_set or predicted not in self._class_set):
            return "unknown_class"
        return actual, predicted

    @staticmethod
    def _regression_row(label: object, scored_label: object) -> tuple[float, float] | str:
        y, y_hat = _to_float(label), _to_float(scored_label)
        if y is None or y_hat is None or not (math.isfinite(y) and math.isfinite(y_hat)):
            return "invalid_value"
        return y, y_hat
