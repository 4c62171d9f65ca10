"""Oracle tests of scorer.evaluation: every rolling value equals sklearn.metrics over the same window rows.

Window membership is recomputed here independently: the count window is the last N valid rows, and a
time window holds the rows whose event time lies in (W - span, W], where W is the largest event time so
far. A row late on arrival is older than the window at every later watermark, so that rule also leaves
late rows out.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from sklearn import metrics as skm

from scorer import evaluation
from scorer.errors import ConfigError
from scorer.evaluation import (
    BinaryMetrics,
    CountWindow,
    Evaluator,
    MulticlassMetrics,
    RegressionMetrics,
    TimeWindow,
    window_name,
)
from scorer.join import JoinedRow, PredictionFacts

COUNT = 500
SPANS = (60, 300, 3600)
CHECKPOINTS = (1, 2, 3, 40, 499, 500, 501, 1_777, 3_000, 5_000)
NAN = float("nan")

Oracle = Callable[[list[JoinedRow]], dict[str, float]]


def row(i: int, label: object, scored: object, p: float | None = None, probs: dict[str, float] | None = None,
        event_time_ms: int = 0) -> JoinedRow:  # fmt: skip
    return JoinedRow(PredictionFacts(f"r{i}", "m", "1", scored, p, probs), label, event_time_ms)


def event_times(rng: random.Random, n: int) -> list[int]:
    """About one row per 0.7 s of event time, jittered, with some rows minutes late."""
    times = []
    for i in range(n):
        t = i * 700 + rng.randint(-90_000, 5_000)
        if rng.random() < 0.03:
            t -= rng.randint(200_000, 1_000_000)
        times.append(t)
    return times


def binary_stream(seed: int, n: int, decimals: int | None) -> list[JoinedRow]:
    rng = random.Random(seed)
    rows = []
    for i, t in enumerate(event_times(rng, n)):
        positive = rng.random() < 0.35
        p = 1 / (1 + math.exp(-(rng.gauss(0.8 if positive else -0.8, 1.5))))
        if rng.random() < 0.02:
            p = rng.choice([0.0, 1.0])  # exercises log_loss clipping, often with the wrong label
        if decimals is not None:
            p = round(p, decimals)
        label = "yes" if positive else "no"
        if rng.random() < 0.01:
            rows.append(row(i, label, "yes", None, None, t))  # no probability: invalid
        elif rng.random() < 0.5:
            rows.append(row(i, label, "yes", None, {"no": 1 - p, "yes": p}, t))
        else:
            rows.append(row(i, label, "yes", p, None, t))
    return rows


def multiclass_stream(seed: int, n: int) -> list[JoinedRow]:
    rng = random.Random(seed)
    rows = []
    for i, t in enumerate(event_times(rng, n)):
        actual = rng.choices(["a", "b", "c", "d"], weights=[50, 30, 17, 3])[0]
        # "c" is almost never predicted, so some windows have a class with undefined precision.
        predicted = actual if actual != "c" and rng.random() < 0.6 else rng.choice(["a", "b", "d"])
        if rng.random() < 0.005:
            predicted = "c"
        rows.append(row(i, actual, predicted, None, None, t))
    return rows


def regression_stream(seed: int, n: int) -> list[JoinedRow]:
    rng = random.Random(seed)
    rows = []
    for i, t in enumerate(event_times(rng, n)):
        y = rng.gauss(50, 10)
        if rng.random() < 0.2:
            y = float(round(y))  # repeated y values
        if rng.random() < 0.01:
            y *= 1e9  # huge values must leave the window without a trace
        rows.append(row(i, y, y + rng.gauss(0, 5), None, None, t))
    return rows


def binary_oracle(threshold: float) -> Oracle:
    def oracle(rows: list[JoinedRow]) -> dict[str, float]:
        y = np.array([r.label == "yes" for r in rows], dtype=bool)
        p = np.array([prob(r) for r in rows])
        yp = p >= threshold
        tn, fp, fn, tp = skm.confusion_matrix(y, yp, labels=[False, True]).ravel()
        return {
            "accuracy": skm.accuracy_score(y, yp),
            "precision": skm.precision_score(y, yp, zero_division=np.nan),
            "recall": skm.recall_score(y, yp, zero_division=np.nan),
            "f1": skm.f1_score(y, yp, zero_division=np.nan),
            "auc": skm.roc_auc_score(y, p) if len(set(y)) == 2 else NAN,
            "log_loss": skm.log_loss(y, y_proba=p, labels=[False, True]),
            "threshold": threshold,
            "tn": tn,
            "fp": fp,
            "fn": fn,
            "tp": tp,
        }

    return oracle


def has_probability(r: JoinedRow) -> bool:
    return r.prediction.scored_probabilities is not None or r.prediction.scored_probability is not None


def prob(r: JoinedRow) -> float:
    probs = r.prediction.scored_probabilities
    if probs is not None:
        return probs["yes"]
    assert r.prediction.scored_probability is not None
    return r.prediction.scored_probability


def multiclass_oracle(rows: list[JoinedRow]) -> dict[str, float]:
    y = [str(r.label) for r in rows]
    yp = [str(r.prediction.scored_label) for r in rows]
    mcm = skm.multilabel_confusion_matrix(y, yp)  # classes present in the window
    per_class = [(m[0, 0] + m[1, 1]) / len(y) for m in mcm]
    expected = {
        "overall_accuracy": skm.accuracy_score(y, yp),
        "average_accuracy": float(np.mean(per_class)),
        "micro_precision": skm.precision_score(y, yp, average="micro", zero_division=np.nan),
        "macro_precision": skm.precision_score(y, yp, average="macro", zero_division=np.nan),
        "micro_recall": skm.recall_score(y, yp, average="micro", zero_division=np.nan),
        "macro_recall": skm.recall_score(y, yp, average="macro", zero_division=np.nan),
    }
    # With zero_division=nan the macro means skip classes absent from the window, so passing all the
    # model's classes gives the same numbers: the documented choice does not depend on the oracle's labels.
    for metric in ("precision", "recall"):
        fn = getattr(skm, f"{metric}_score")
        all_classes = fn(y, yp, labels=list("abcd"), average="macro", zero_division=np.nan)
        assert_close(all_classes, expected[f"macro_{metric}"], f"macro_{metric} with labels=")
    return expected


def regression_oracle(rows: list[JoinedRow]) -> dict[str, float]:
    y = np.array([r.label for r in rows], dtype=float)
    yp = np.array([r.prediction.scored_label for r in rows], dtype=float)
    sst = float(np.sum((y - y.mean()) ** 2))
    sat = float(np.sum(np.abs(y - y.mean())))
    expected = {
        "mae": skm.mean_absolute_error(y, yp),
        "rmse": skm.root_mean_squared_error(y, yp),
        "rse": float(np.sum((y - yp) ** 2)) / sst if sst else NAN,
        "rae": float(np.sum(np.abs(y - yp))) / sat if sat else NAN,
        "r2": skm.r2_score(y, yp) if sst else NAN,
    }
    return expected


def assert_close(actual: float, expected: float, what: str) -> None:
    if math.isnan(expected):
        assert math.isnan(actual), f"{what}: expected nan, got {actual}"
    else:
        assert actual == pytest.approx(float(expected), rel=1e-9), what


def expected_windows(valid: list[JoinedRow]) -> dict[str, list[JoinedRow]]:
    windows = {f"last_{COUNT}": valid[-COUNT:]}
    watermark = max(r.event_time_ms for r in valid)
    for seconds in SPANS:
        horizon = watermark - seconds * 1000
        windows[window_name(seconds=seconds)] = [r for r in valid if r.event_time_ms > horizon]
    return windows


def expected_late(valid: list[JoinedRow]) -> dict[str, int]:
    late = dict.fromkeys((window_name(seconds=s) for s in SPANS), 0)
    watermark = -(10**18)
    for r in valid:
        watermark = max(watermark, r.event_time_ms)
        for seconds in SPANS:
            late[window_name(seconds=seconds)] += r.event_time_ms <= watermark - seconds * 1000
    return late


def run_oracle(ev: Evaluator, rows: Sequence[JoinedRow], is_valid: Callable[[JoinedRow], bool],
               oracle: Oracle) -> None:  # fmt: skip
    valid: list[JoinedRow] = []
    for i, r in enumerate(rows, start=1):
        assert ev.add(r) is is_valid(r)
        if is_valid(r):
            valid.append(r)
        if i not in CHECKPOINTS:
            continue
        snapshot = ev.snapshot()
        expected = expected_windows(valid)
        assert sorted(snapshot) == sorted(expected)
        for name, members in expected.items():
            assert snapshot[name]["window_rows"] == len(members), name
            want = oracle(members)
            assert set(snapshot[name]) == set(want) | {"window_rows"}
            for metric, value in want.items():
                assert_close(snapshot[name][metric], value, f"row {i}, {name}, {metric}")
        assert ev.late_rows == expected_late(valid)
    assert sum(ev.late_rows.values()) > 0  # the stream really is out of order


@pytest.mark.parametrize(("decimals", "threshold"), [(None, 0.5), (2, 0.35)])
def test_binary_matches_sklearn(decimals: int | None, threshold: float) -> None:
    rows = binary_stream(seed=1, n=5_000, decimals=decimals)
    ev = Evaluator("binary", ["no", "yes"], threshold=threshold, count_window=COUNT, time_windows_s=SPANS)
    run_oracle(ev, rows, has_probability, binary_oracle(threshold))
    assert ev.invalid_rows == {"missing_probability": sum(not has_probability(r) for r in rows)}
    if decimals is not None:  # ties in scores and probabilities exactly at the threshold
        assert len({prob(r) for r in rows if has_probability(r)}) < 102
        assert any(prob(r) == threshold for r in rows if has_probability(r))


def test_multiclass_matches_sklearn() -> None:
    rows = multiclass_stream(seed=2, n=5_000)
    ev = Evaluator("multiclass", list("abcd"), count_window=COUNT, time_windows_s=SPANS)
    run_oracle(ev, rows, lambda r: True, multiclass_oracle)
    for name, members in expected_windows(rows).items():
        y = [str(r.label) for r in members]
        yp = [str(r.prediction.scored_label) for r in members]
        labels = sorted(set(y) | set(yp))
        matrix = skm.confusion_matrix(y, yp, labels=labels)
        cells = {(a, p): int(matrix[i, j]) for i, a in enumerate(labels) for j, p in enumerate(labels)}
        assert ev.confusion(name) == {k: v for k, v in cells.items() if v}


def test_regression_matches_sklearn() -> None:
    rows = regression_stream(seed=3, n=5_000)
    ev = Evaluator("regression", count_window=COUNT, time_windows_s=SPANS)
    run_oracle(ev, rows, lambda r: True, regression_oracle)


def test_empty_evaluator_is_nan_with_zero_rows() -> None:
    for task, classes, zero_counts in [
        ("binary", ["no", "yes"], ("tn", "fp", "fn", "tp", "window_rows")),
        ("multiclass", None, ("window_rows",)),
        ("regression", None, ("window_rows",)),
    ]:
        snapshot = Evaluator(task, classes).snapshot()  # type: ignore[arg-type]
        assert list(snapshot) == ["last_1000", "5m", "1h"]
        for values in snapshot.values():
            for metric, value in values.items():
                if metric in zero_counts:
                    assert value == 0.0
                elif metric == "threshold":
                    assert value == 0.5
                else:
                    assert math.isnan(value), (task, metric)


def test_binary_one_class_window() -> None:
    ev = Evaluator("binary", ["no", "yes"], count_window=10, time_windows_s=[])
    for i, p in enumerate([0.2, 0.7, 0.4]):
        ev.add(row(i, "no", "no", p))
    s = ev.snapshot()["last_10"]
    assert math.isnan(s["auc"])  # sklearn warns and returns nan too
    assert math.isnan(s["recall"])  # no positive labels
    assert s["precision"] == 0.0  # one predicted positive, wrong
    assert s["f1"] == 0.0
    assert (s["tn"], s["fp"], s["accuracy"]) == (2.0, 1.0, 2 / 3)
    assert s["log_loss"] == pytest.approx(skm.log_loss([0, 0, 0], y_proba=[0.2, 0.7, 0.4], labels=[0, 1]))
    ev2 = Evaluator("binary", positive_class="yes", count_window=10, time_windows_s=[])
    ev2.add(row(0, "no", "no", 0.2))
    s2 = ev2.snapshot()["last_10"]
    assert math.isnan(s2["precision"]) and math.isnan(s2["f1"]) and s2["accuracy"] == 1.0


def test_regression_constant_labels_are_nan_for_relative_errors() -> None:
    ev = Evaluator("regression", count_window=10, time_windows_s=[])
    ev.add(row(0, 3.0, 2.0))
    s = ev.snapshot()["last_10"]
    assert (s["mae"], s["rmse"]) == (1.0, 1.0)
    assert all(math.isnan(s[m]) for m in ("rae", "rse", "r2"))
    ev.add(row(1, 3.0, 3.5))
    s = ev.snapshot()["last_10"]
    assert all(math.isnan(s[m]) for m in ("rae", "rse", "r2"))
    assert s["mae"] == 0.75


def test_revert_is_exact_after_huge_values_leave() -> None:
    m = RegressionMetrics()
    m.update(1e300, -1e300)
    m.update(1.0, 0.5)
    m.update(3.0, 3.25)
    m.revert(1e300, -1e300)
    expected = regression_oracle([row(0, 1.0, 0.5), row(1, 3.0, 3.25)])
    for metric, value in m.get().items():
        assert value == expected[metric], metric  # exactly, not approximately
    b = BinaryMetrics()
    b.update(False, 1.0)  # a clipped, huge log-loss term
    b.update(True, 0.75)
    b.revert(False, 1.0)
    assert b.get()["log_loss"] == -math.log(0.75)


def test_multiclass_revert_forgets_classes() -> None:
    m = MulticlassMetrics()
    m.update("a", "b")
    m.update("b", "b")
    m.revert("a", "b")
    assert m.confusion == {("b", "b"): 1}
    assert m.get()["macro_recall"] == 1.0
    assert m.get()["average_accuracy"] == 1.0


def test_time_window_boundaries() -> None:
    w = TimeWindow(10, BinaryMetrics())
    assert w.update(True, 0.9, 100_000)
    assert w.update(True, 0.9, 90_001)  # inside (90_000, 100_000]
    assert not w.update(True, 0.9, 90_000)  # exactly at the open end: late
    assert w.update(False, 0.1, 100_000)
    assert w.update(False, 0.1, 100_001)  # the watermark moves: 90_001 is now at the open end and leaves
    assert len(w) == 3
    assert w.late_rows == 1
    c = CountWindow(1, BinaryMetrics())
    c.update(True, 0.9, 0)
    c.update(False, 0.9, 0)
    assert (c.metric.tp, c.metric.fp, len(c)) == (0, 1, 1)


def test_probability_map_wins_over_scalar_and_invalid_rows_are_counted() -> None:
    ev = Evaluator("binary", ["no", "yes"], count_window=10, time_windows_s=[])
    assert ev.add(row(0, "yes", "yes", 0.1, {"no": 0.2, "yes": 0.8}))
    assert ev.snapshot()["last_10"]["tp"] == 1.0
    assert not ev.add(row(1, "maybe", "yes", 0.9))
    assert not ev.add(row(2, "yes", "yes", 1.5))
    assert not ev.add(row(3, "yes", "yes", NAN))
    assert not ev.add(row(4, "yes", "yes", None, {"no": 1.0}))
    assert ev.invalid_rows == {"unknown_class": 1, "invalid_probability": 2, "missing_probability": 1}
    mc = Evaluator("multiclass", ["a", "b"], count_window=10, time_windows_s=[])
    assert not mc.add(row(0, "a", "z"))
    reg = Evaluator("regression", count_window=10, time_windows_s=[])
    assert not reg.add(row(0, "x", 1.0))
    assert not reg.add(row(1, 1.0, math.inf))
    assert reg.add(row(2, True, "2.5"))  # numbers are taken as numbers
    assert (mc.invalid_rows, reg.invalid_rows) == ({"unknown_class": 1}, {"invalid_value": 2})
    assert ev.snapshot()["last_10"]["window_rows"] == 1.0


def test_labels_compare_as_strings() -> None:
    ev = Evaluator("binary", classes=[False, True], count_window=10, time_windows_s=[])
    assert ev.positive_class == "True"
    assert ev.add(row(0, True, True, 0.9))
    assert ev.add(row(1, "False", False, 0.2))
    assert ev.snapshot()["last_10"]["accuracy"] == 1.0


def test_window_names() -> None:
    assert window_name(rows=500) == "last_500"
    names = [window_name(seconds=s) for s in (1, 59, 60, 90, 300, 3600, 5400, 7200, 86400, 172800)]
    assert names == ["1s", "59s", "1m", "90s", "5m", "1h", "90m", "2h", "1d", "2d"]
    with pytest.raises(ValueError):
        window_name()
    with pytest.raises(ValueError):
        window_name(rows=1, seconds=1)


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"task": "ranking"}, "task"),
        ({"task": "binary"}, "positive_class"),
        ({"task": "binary", "classes": ["a", "b", "c"]}, "classes"),
        ({"task": "binary", "classes": ["a", "b"], "positive_class": "c"}, "positive_class"),
        ({"task": "binary", "classes": ["a", "b"], "threshold": 1.5}, "threshold"),
        ({"task": "multiclass", "positive_class": "a"}, "positive_class"),
        ({"task": "regression", "classes": ["a"]}, "classes"),
        ({"task": "regression", "count_window": 0}, "count_window"),
        ({"task": "regression", "time_windows_s": [0]}, "time_windows_s"),
        ({"task": "regression", "time_windows_s": [60, 60]}, "time_windows_s"),
        ({"task": "regression", "count_window": None, "time_windows_s": []}, "time_windows_s"),
    ],
)
def test_config_errors_name_the_argument(kwargs: dict[str, object], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        Evaluator(**kwargs)  # type: ignore[arg-type]
    assert info.value.setting == setting


def test_confusion_is_multiclass_only() -> None:
    ev = Evaluator("binary", ["no", "yes"])
    with pytest.raises(ValueError, match="multiclass"):
        ev.confusion("last_1000")
    with pytest.raises(KeyError):
        Evaluator("multiclass").confusion("2h")


# --------------------------------------------------------------------------- batches and exact sums


def units(x: float) -> int:
    """Reference: ``x`` as an exact integer count of 2**-2148, one big-integer conversion per value."""
    num, den = x.as_integer_ratio()
    return num << (2148 + 1 - den.bit_length())


def square_units(x: float) -> int:
    num, den = x.as_integer_ratio()
    return (num * num) << (2148 + 2 - 2 * den.bit_length())


EXTREMES = [
    0.0,
    -0.0,
    5e-324,
    -5e-324,
    2.5e-323,
    2.2250738585072014e-308,
    1e-200,
    1.0,
    -1.5,
    1e300,
    -1.7976931348623157e308,
]


@pytest.mark.parametrize("chunk", [None, 7])
def test_exact_sums_equal_big_integer_sums(monkeypatch: pytest.MonkeyPatch, chunk: int | None) -> None:
    if chunk is not None:
        monkeypatch.setattr(evaluation, "_SUM_CHUNK", chunk)  # the path for batches over 2**24 values
    rng = np.random.default_rng(5)
    added = np.concatenate([rng.normal(0, 1, 300) * 10.0 ** rng.integers(-300, 300, 300), EXTREMES])
    removed = np.concatenate([rng.normal(100, 20, 200), EXTREMES[::2], 2.0 ** rng.integers(-1074, 1023, 50)])
    total, squares = evaluation._exact_sums(added, removed, squares=True)
    assert total == sum(map(units, added.tolist())) - sum(map(units, removed.tolist()))
    assert squares == sum(map(square_units, added.tolist())) - sum(map(square_units, removed.tolist()))
    assert evaluation._exact_sums(added, removed) == (total, 0)
    assert evaluation._exact_sums(added[:0], removed[:0], squares=True) == (0, 0)


def test_multiset_merges_batches_and_forgets_values_at_zero() -> None:
    m = evaluation._Multiset()
    m.update(np.array([0.5, -0.0, 0.25, 0.5]), np.array([]))
    m.update(np.array([0.0, 0.75]), np.array([0.25]))
    values, counts = m.sorted()
    assert (values.tolist(), counts.tolist()) == ([0.0, 0.5, 0.75], [2, 2, 1])  # -0.0 and 0.0 are one value
    m.update(np.array([]), np.array([0.5, 0.5, 0.0, -0.0, 0.75]))
    assert [len(a) for a in m.sorted()] == [0, 0]


def test_time_window_batch_counts_rows_late_against_earlier_rows_of_the_batch() -> None:
    w = TimeWindow(60, RegressionMetrics())
    times = np.array([100_000, 40_000, 130_000, 70_001, 160_000, 100_000], dtype=np.int64)
    rows = w.metric.rows([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.0] * 6)
    # 40_000 is late against 100_000; 70_001 is not late against 130_000, but leaves when 160_000 arrives;
    # the last 100_000 is exactly at the open end (160_000 - 60_000): late.
    assert w.update_many(rows, times) == 4
    assert (w.late_rows, w.watermark_ms, len(w)) == (2, 160_000, 2)
    assert w.metric.get()["mae"] == 4.0  # rows 3.0 at 130_000 and 5.0 at 160_000


def snapshot_state(ev: Evaluator) -> dict[str, object]:
    """Everything an evaluator exposes, with nan made comparable, so two evaluators can be compared exactly."""
    state: dict[str, object] = {
        "snapshot": {w: {k: "nan" if math.isnan(v) else v for k, v in m.items()} for w, m in ev.snapshot().items()},
        "late": ev.late_rows,
        "invalid": dict(ev.invalid_rows),
    }
    for name in ev.window_names:
        metric = ev.metric(name)
        if isinstance(metric, RegressionMetrics):
            state[name] = (metric.sums(), metric._sum_y, metric._sum_y2, metric._sum_abs, metric._sum_sq)
        elif isinstance(metric, BinaryMetrics):
            state[name] = (ev.confusion_cells(name), metric.score_buckets([0.1, 0.5, 0.9]), metric._loss)
        else:
            state[name] = ev.confusion(name)
    return state


STREAMS = {
    "binary": (lambda: binary_stream(seed=4, n=4_000, decimals=2), ["no", "yes"]),
    "multiclass": (lambda: multiclass_stream(seed=5, n=4_000), list("abcd")),
    "regression": (lambda: regression_stream(seed=6, n=4_000), None),
}


@pytest.mark.parametrize("task", sorted(STREAMS))
def test_batches_give_exactly_the_state_of_one_row_at_a_time(task: str) -> None:
    make_rows, classes = STREAMS[task]
    rows = make_rows()

    def new() -> Evaluator:
        return Evaluator(task, classes, count_window=COUNT, time_windows_s=SPANS)  # type: ignore[arg-type]

    one_at_a_time, batched, staged = new(), new(), new()
    rng = random.Random(8)
    start = 0
    while start < len(rows):
        size = rng.choice([1, 2, 17, 500, 1_000, 2_500])
        batch = rows[start : start + size]
        for r in batch:
            one_at_a_time.add_many([r])  # each row applied on its own, as before batching
        assert batched.add_many(batch) == sum(staged.add(r) for r in batch)
        start += size
        if rng.random() < 0.3:
            assert snapshot_state(batched) == snapshot_state(one_at_a_time) == snapshot_state(staged)
    assert snapshot_state(batched) == snapshot_state(one_at_a_time) == snapshot_state(staged)


@pytest.mark.parametrize("task", sorted(STREAMS))
def test_long_running_windows_hold_exactly_the_state_of_their_rows(task: str) -> None:
    """No drift: after thousands of rows entered and left, each window equals a fresh one fed only its rows."""
    make_rows, classes = STREAMS[task]
    rows = make_rows()
    ev = Evaluator(task, classes, count_window=COUNT, time_windows_s=SPANS)  # type: ignore[arg-type]
    for start in range(0, len(rows), 50):  # small batches, so that most rows enter and later leave
        ev.add_many(rows[start : start + 50])
    is_valid = has_probability if task == "binary" else (lambda r: True)
    for name, members in expected_windows([r for r in rows if is_valid(r)]).items():
        assert members, name
        fresh = Evaluator(task, classes, count_window=len(members), time_windows_s=[])  # type: ignore[arg-type]
        fresh.add_many(members)
        mine, theirs = snapshot_state(ev), snapshot_state(fresh)
        assert mine["snapshot"][name] == theirs["snapshot"][fresh.window_names[0]]  # type: ignore[index]
        assert mine[name] == theirs[fresh.window_names[0]]


@pytest.mark.parametrize("task", sorted(STREAMS))
def test_time_windows_sharing_their_rows_equal_windows_on_their_own(task: str) -> None:
    """An evaluator's time windows share one store of rows (the longest window's); each must hold exactly
    what a window with a store of its own holds, whatever order the spans are given in, through event
    times that jump far ahead (everything leaves at once), many rows exactly at a horizon, and rows late
    for some windows only."""
    make_rows, classes = STREAMS[task]
    rows = make_rows()
    rng = random.Random(12)
    jumped = []
    shift = 0
    for r in rows:
        if rng.random() < 0.002:
            shift += rng.choice([400_000, 4_000_000])  # past the 5-minute window, or past all of them
        coarse = (r.event_time_ms + shift) // 10_000 * 10_000  # ties, at the windows' horizons too
        jumped.append(JoinedRow(r.prediction, r.label, coarse))
    spans = (300, 3600, 60)
    shared = Evaluator(task, classes, count_window=None, time_windows_s=spans)  # type: ignore[arg-type]
    alone = {s: Evaluator(task, classes, count_window=None, time_windows_s=[s]) for s in spans}  # type: ignore[arg-type]
    start = 0
    while start < len(jumped):
        batch = jumped[start : start + rng.choice([1, 3, 50, 400])]
        start += len(batch)
        shared.add_many(batch)
        for ev in alone.values():
            ev.add_many(batch)
        if rng.random() < 0.2 or start >= len(jumped):
            state = snapshot_state(shared)
            for seconds, ev in alone.items():
                name = window_name(seconds=seconds)
                theirs = snapshot_state(ev)
                assert state["snapshot"][name] == theirs["snapshot"][name]  # type: ignore[index]
                assert state[name] == theirs[name]
                assert state["late"][name] == theirs["late"][name]  # type: ignore[index]
    assert shared.late_rows["1m"] > shared.late_rows["5m"] > 0  # rows late for the short windows only
    assert len(shared._windows["1m"]) < len(shared._windows["5m"]) < len(shared._windows["1h"])
