"""`scorer evaluate` against the real broker and registry: every exported metric equals sklearn on the same rows.

"Every exported metric" is checked literally: for each window, the set of ``scorer_evaluation_*`` series the
sidecar exports (per-window gauges, confusion cells, regression sums, score buckets) must equal the set
worked out here from the joined rows, and each value must equal sklearn / numpy on exactly the rows of that
window. The join counters are checked per side against the README's identity.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request

import numpy as np
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from prometheus_client.parser import text_string_to_metric_families
from sklearn import metrics as skm

from scorer.devstack import free_port
from scorer.metrics import SCORE_BOUNDS
from scorer.schema import TrainingSchema, label_schema, prediction_schema
from tests.fixtures.process import ScorerProcess
from tests.fixtures.stack import QUIET

pytestmark = pytest.mark.integration

N = 1500
WINDOW_S = 600
TIME_WINDOWS = {"10m": 600, "20m": 1200}
"""Two event-time windows: with event times spread over 30 minutes, each holds a different strict subset."""
CLASSES = {"binary": ["no", "yes"], "multiclass": ["a", "b", "c"], "regression": None}
EMPTY_SCHEMA = TrainingSchema(features=(), label="y", label_type="string")


def _records(task: str, rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """Predictions (one per id) and labels (one per id) for ``N`` ids, with event times over 30 minutes."""
    now_ms = int(time.time() * 1000)
    predictions, labels = [], []
    for i in range(N):
        base = {"id": f"r{i}", "model_name": "m", "model_version": "7", "scored_at": now_ms}
        event_time = now_ms - int(rng.integers(0, 30 * 60_000))
        if task == "regression":
            y = float(rng.normal(100, 20))
            predictions.append(
                {
                    **base,
                    "scored_label": y + float(rng.normal(0, 10)),
                    "scored_probability": None,
                    "scored_label_probability": None,
                    "scored_probabilities": None,
                }
            )
            labels.append({"id": f"r{i}", "label": y, "event_time": event_time})
            continue
        classes = CLASSES[task]
        probabilities = rng.dirichlet(np.ones(len(classes)))
        probabilities = np.round(probabilities, 2) if i % 3 == 0 else probabilities  # ties for AUC
        best = int(np.argmax(probabilities))
        truth = classes[best] if rng.random() < 0.7 else str(rng.choice(classes))
        predictions.append(
            {
                **base,
                "scored_label": classes[best],
                "scored_probability": float(probabilities[-1]) if task == "binary" else None,
                "scored_label_probability": float(probabilities[best]),
                "scored_probabilities": dict(zip(classes, map(float, probabilities), strict=True)),
            }
        )
        labels.append({"id": f"r{i}", "label": truth, "event_time": event_time})
    return predictions, labels


def _produce(
    producer, registry_client, topic: str, schema: dict, records: list[dict], timestamp_ms: int | None = None
) -> None:
    """Produce ``records`` keyed by id; ``timestamp_ms`` sets the record timestamp, which is the sidecar's clock."""
    serializer = AvroSerializer(registry_client, json.dumps(schema))
    context = SerializationContext(topic, MessageField.VALUE)
    extra = {} if timestamp_ms is None else {"timestamp": timestamp_ms}
    for record in records:
        producer.produce(topic, key=record["id"].encode(), value=serializer(record, context), **extra)
        producer.poll(0)
    assert producer.flush(30) == 0


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def _wait_until_read(port: int, predictions: int, labels: int, sidecar: ScorerProcess, timeout_s: float = 90) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            values = _scrape(port)
        except OSError:
            values = {}
        seen = (
            values.get(("scorer_evaluation_seen_total", (("side", "prediction"),))),
            values.get(("scorer_evaluation_seen_total", (("side", "label"),))),
        )
        if seen == (predictions, labels):
            return values
        assert sidecar.process.poll() is None, sidecar.output()[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"sidecar did not read everything: {seen}\n{sidecar.output()[-3000:]}")


def _sidecar(stack, predictions_topic: str, labels_topic: str, tmp_path, **extra: str) -> tuple[ScorerProcess, int]:
    port = free_port()
    env = {
        "SCORER_BOOTSTRAP_SERVERS": stack.bootstrap,
        "SCORER_SCHEMA_REGISTRY_URL": stack.registry_url,
        "SCORER_PREDICTIONS_TOPIC": predictions_topic,
        "SCORER_LABELS_TOPIC": labels_topic,
        "SCORER_GROUP_ID": f"eval-{predictions_topic}",
        "SCORER_METRICS_HOST": "127.0.0.1",
        "SCORER_COUNT_WINDOW": "100000",
        "SCORER_TIME_WINDOWS": f"{WINDOW_S}s",
        **extra,
        "SCORER_METRICS_PORT": str(port),
    }
    process = ScorerProcess(env, tmp_path / "evaluate.log", command="evaluate")
    process.process  # noqa: B018 - started
    return process, port


def _expected(task: str, rows: list[tuple[dict, dict]], threshold: float = 0.5) -> dict[str, float]:
    """The window's Evaluate Model set, from sklearn on exactly these rows."""
    if task == "regression":
        y = np.array([label["label"] for _, label in rows])
        y_hat = np.array([p["scored_label"] for p, _ in rows])
        return {
            "mae": skm.mean_absolute_error(y, y_hat),
            "rmse": float(np.sqrt(skm.mean_squared_error(y, y_hat))),
            "rae": float(np.abs(y - y_hat).sum() / np.abs(y - y.mean()).sum()),
            "rse": float(((y - y_hat) ** 2).sum() / ((y - y.mean()) ** 2).sum()),
            "r2": skm.r2_score(y, y_hat),
        }
    truth = [label["label"] for _, label in rows]
    if task == "binary":
        y_true = np.array([t == "yes" for t in truth])
        p = np.array([prediction["scored_probability"] for prediction, _ in rows])
        y_pred = p >= threshold
        tn, fp, fn, tp = skm.confusion_matrix(y_true, y_pred, labels=[False, True]).ravel()
        return {
            "accuracy": skm.accuracy_score(y_true, y_pred),
            "precision": skm.precision_score(y_true, y_pred, zero_division=np.nan),
            "recall": skm.recall_score(y_true, y_pred, zero_division=np.nan),
            "f1": skm.f1_score(y_true, y_pred, zero_division=np.nan),
            "auc": skm.roc_auc_score(y_true, p),
            "log_loss": skm.log_loss(y_true, p, labels=[False, True]),
            "tn": tn,
            "fp": fp,
            "fn": fn,
            "tp": tp,
            "threshold": threshold,
        }
    predicted = [prediction["scored_label"] for prediction, _ in rows]
    matrix = skm.multilabel_confusion_matrix(truth, predicted, labels=sorted(set(truth) | set(predicted)))
    return {
        "overall_accuracy": skm.accuracy_score(truth, predicted),
        "average_accuracy": float(np.mean([(m[0, 0] + m[1, 1]) / m.sum() for m in matrix])),
        "micro_precision": skm.precision_score(truth, predicted, average="micro", zero_division=np.nan),
        "macro_precision": skm.precision_score(truth, predicted, average="macro", zero_division=np.nan),
        "micro_recall": skm.recall_score(truth, predicted, average="micro", zero_division=np.nan),
        "macro_recall": skm.recall_score(truth, predicted, average="macro", zero_division=np.nan),
    }


def _series_key(name: str, window: str, **labels: str) -> tuple[str, tuple]:
    return name, tuple(sorted({"window": window, "model_name": "m", "model_version": "7", **labels}.items()))


def _window_series(task: str, window: str, rows: list[tuple[dict, dict]], threshold: float = 0.5) -> dict:
    """Every series the sidecar should export for one window of model m/7, valued from sklearn and numpy.

    Besides the Evaluate Model gauges: the additive series for fleet-wide PromQL. Confusion cells (binary: all
    four, with the predicted class decided by the threshold; multiclass: the non-zero cells), the regression
    sums, and the binary score histogram per true class (cumulative counts per bound, count and sum).
    """

    def key(name: str, **labels: str) -> tuple[str, tuple]:
        return _series_key(f"scorer_evaluation_{name}", window, **labels)

    series = {key("window_rows"): len(rows)}
    series.update({key(name): value for name, value in _expected(task, rows, threshold).items()})
    if task == "regression":
        y = np.array([label["label"] for _, label in rows])
        y_hat = np.array([p["scored_label"] for p, _ in rows])
        series[key("abs_error_sum")] = math.fsum(np.abs(y - y_hat))
        series[key("squared_error_sum")] = math.fsum((y - y_hat) ** 2)
        series[key("label_sum")] = math.fsum(y)
        series[key("label_squared_sum")] = math.fsum(y**2)
        return series
    classes = CLASSES[task]
    truth = np.array([label["label"] for _, label in rows])
    if task == "binary":
        p = np.array([prediction["scored_probability"] for prediction, _ in rows])
        predicted = np.where(p >= threshold, "yes", "no")
    else:
        predicted = np.array([prediction["scored_label"] for prediction, _ in rows])
    matrix = skm.confusion_matrix(truth, predicted, labels=classes)
    for i, actual in enumerate(classes):
        for j, guess in enumerate(classes):
            if task == "binary" or matrix[i, j]:
                series[key("confusion", actual=actual, predicted=guess)] = matrix[i, j]
    if task == "binary":
        for side, scores in (("positive", p[truth == "yes"]), ("negative", p[truth != "yes"])):
            for bound in SCORE_BOUNDS:
                series[key("score_bucket", actual=side, le=str(bound))] = np.count_nonzero(scores <= bound)
            series[key("score_bucket", actual=side, le="+Inf")] = len(scores)
            series[key("score_gcount", actual=side)] = len(scores)
            series[key("score_gsum", actual=side)] = math.fsum(scores)
    return series


def _assert_window(
    values: dict,
    task: str,
    window: str,
    rows: list[tuple[dict, dict]],
    threshold: float = 0.5,
    late_rows: int | None = None,
) -> None:
    """The window's exported series are exactly the expected ones, each equal to sklearn / numpy to 1e-9.

    ``late_rows``: the expected ``scorer_evaluation_late_rows_total`` of a time window, when the test knows the
    order the sidecar joined the rows in (otherwise that counter is left out of the comparison).
    """
    expected = _window_series(task, window, rows, threshold)
    late_key = _series_key("scorer_evaluation_late_rows_total", window)
    if late_rows is not None:
        expected[late_key] = late_rows
    got = {
        key: value
        for key, value in values.items()
        if ("window", window) in key[1] and key[0].startswith("scorer_evaluation_") and key != late_key
    }
    if late_rows is not None:
        got[late_key] = values.get(late_key)
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    assert not missing, f"{window}: not exported: {missing}"
    assert not extra, f"{window}: exported but not expected: {extra}"
    for key, value in expected.items():
        assert got[key] == pytest.approx(float(value), rel=1e-9, nan_ok=True), f"{window} {key}"


def _in_time_window(joined: list[tuple[dict, dict]], seconds: int) -> list[tuple[dict, dict]]:
    """Rows whose label event time is within ``seconds`` before the newest event time joined."""
    watermark = max(label["event_time"] for _, label in joined)
    return [(p, label) for p, label in joined if label["event_time"] > watermark - seconds * 1000]


def _late_rows(joined_in_order: list[tuple[dict, dict]], seconds: int) -> int:
    """Rows already older than the window (against the newest event time so far) when they were joined."""
    watermark, late = None, 0
    for _, label in joined_in_order:
        watermark = label["event_time"] if watermark is None else max(watermark, label["event_time"])
        late += label["event_time"] <= watermark - seconds * 1000
    return late


def _counters(values: dict) -> dict[str, float]:
    """Join outcomes, plus ``seen_*`` and ``pending_*`` per side."""
    counts = {dict(k[1])["outcome"]: v for k, v in values.items() if k[0] == "scorer_evaluation_records_total"}
    for side in ("prediction", "label"):
        counts[f"seen_{side}"] = values[("scorer_evaluation_seen_total", (("side", side),))]
        counts[f"pending_{side}"] = values[("scorer_evaluation_pending", (("side", side),))]
    return counts


def _assert_counters(values: dict, **expected: int) -> None:
    """Outcomes not named are expected to be 0; then the README's identity holds for each side."""
    counts = _counters(values)
    outcomes = (
        "joined",
        "expired_prediction",
        "expired_label",
        "evicted_prediction",
        "evicted_label",
        "duplicate_prediction",
        "duplicate_label",
        "conflicting_label",
        "pending_prediction",
        "pending_label",
    )
    assert {name: counts[name] for name in outcomes} == {name: expected.get(name, 0) for name in outcomes}
    assert counts["seen_prediction"] == (
        counts["joined"]
        + counts["expired_prediction"]
        + counts["evicted_prediction"]
        + counts["duplicate_prediction"]
        + counts["pending_prediction"]
    )
    assert counts["seen_label"] == (
        counts["joined"]
        + counts["expired_label"]
        + counts["evicted_label"]
        + counts["duplicate_label"]
        + counts["conflicting_label"]
        + counts["pending_label"]
    )
    invalid = {k: v for k, v in values.items() if k[0] == "scorer_evaluation_invalid_records_total"}
    assert not invalid, f"records counted as invalid: {invalid}"


def _exported_windows(values: dict) -> set[str]:
    return {dict(k[1])["window"] for k in values if k[0].startswith("scorer_evaluation_") and "window" in dict(k[1])}


def _conflicting(task: str, label: dict) -> dict:
    return {**label, "label": (label["label"] + 1.0) if task == "regression" else "no-such"}


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_rolling_metrics_equal_sklearn_on_the_window_rows(
    task, stack, topic_factory, producer, registry_client, tmp_path
):
    """Everything produced before the sidecar starts, on three partitions: the join order is the sidecar's.

    So the count window is larger than the rows (which rows are the last N depends on that order; the
    late-labels test below has a smaller one), and late rows are not compared here.
    """
    rng = np.random.default_rng({"binary": 1, "multiclass": 2, "regression": 3}[task])
    predictions, labels = _records(task, rng)
    label_type = "double" if task == "regression" else "string"
    # at-least-once upstream: some predictions twice; labels late, shuffled, some twice, some conflicting, some missing
    duplicated_predictions = predictions + [predictions[i] for i in range(0, N, 10)]
    order = rng.permutation(N)
    kept = [labels[i] for i in order[: int(N * 0.9)]]
    twice = [dict(labels[i]) for i in order[:50]]
    conflicting = [_conflicting(task, labels[i]) for i in order[50:60]]
    pred_topic, label_topic = topic_factory("predictions", partitions=3), topic_factory("labels", partitions=3)
    _produce(producer, registry_client, pred_topic, prediction_schema(EMPTY_SCHEMA, label_type), duplicated_predictions)
    _produce(producer, registry_client, label_topic, label_schema(label_type), kept + twice + conflicting)

    threshold = 0.4  # not the default, so a sidecar that ignored --threshold would fail the binary case
    sidecar, port = _sidecar(
        stack,
        pred_topic,
        label_topic,
        tmp_path,
        SCORER_TIME_WINDOWS=",".join(TIME_WINDOWS),
        SCORER_THRESHOLD=str(threshold),
    )
    try:
        values = _wait_until_read(port, len(duplicated_predictions), len(kept) + len(twice) + len(conflicting), sidecar)
    finally:
        sidecar.sigterm()
        assert sidecar.wait(30) == 0, sidecar.output()[-2000:]

    joined = [(predictions[int(label["id"][1:])], label) for label in kept]
    windows = {"last_100000": joined, **{name: _in_time_window(joined, span) for name, span in TIME_WINDOWS.items()}}
    assert 0 < len(windows["10m"]) < len(windows["20m"]) < len(joined), "each time window must hold a strict subset"
    assert _exported_windows(values) == set(windows)
    for window, rows in windows.items():
        _assert_window(values, task, window, rows, threshold if task == "binary" else 0.5)

    _assert_counters(
        values,
        joined=len(joined),
        duplicate_prediction=len(range(0, N, 10)),
        duplicate_label=len(twice),
        conflicting_label=len(conflicting),  # a later different label is a conflict: the first wins
        pending_prediction=N - len(joined),
    )


COUNT_WINDOW = 400


def _join_in_order(labels: list[dict], predictions_by_id: dict[str, dict]) -> tuple[list, dict[str, int]]:
    """What the sidecar joins, in order, when every prediction was read before the labels (first label wins)."""
    first: dict[str, dict] = {}
    joined, outcomes = [], {"duplicate_label": 0, "conflicting_label": 0, "pending_label": 0}
    for label in labels:
        earlier = first.get(label["id"])
        if earlier is not None:
            outcomes["duplicate_label" if earlier["label"] == label["label"] else "conflicting_label"] += 1
            continue
        first[label["id"]] = label
        if label["id"] in predictions_by_id:
            joined.append((predictions_by_id[label["id"]], label))
        else:
            outcomes["pending_label"] += 1
    return joined, outcomes


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_labels_produced_after_the_sidecar_read_the_predictions(
    task, stack, topic_factory, producer, registry_client, tmp_path
):
    """True late labels: the sidecar is running and has read every prediction before any label is produced.

    Labels then come in two bursts on a one-partition topic, so the sidecar joins them in the order they were
    produced: the count window (400 rows, fewer than joined) and each time window's late rows are known
    exactly. Both bursts are checked, so rows are seen leaving the count window and the time windows.
    """
    rng = np.random.default_rng({"binary": 21, "multiclass": 22, "regression": 23}[task])
    predictions, labels = _records(task, rng)
    label_type = "double" if task == "regression" else "string"
    pred_topic, label_topic = topic_factory("predictions", partitions=3), topic_factory("labels", partitions=1)
    label_avro = label_schema(label_type)
    _produce(producer, registry_client, pred_topic, prediction_schema(EMPTY_SCHEMA, label_type), predictions)
    # The labels topic is still empty when the sidecar starts: it must read every label produced afterwards
    # (an empty partition starts at its end offset read at assignment, not at the logical end).

    order = rng.permutation(N)
    kept = [labels[i] for i in order[: int(N * 0.9)]]
    bursts = [
        kept[:700] + [dict(label) for label in kept[:30]],  # then 30 redelivered
        kept[700:] + [_conflicting(task, label) for label in kept[30:40]],  # then 10 contradicted
    ]
    threshold = 0.6
    sidecar, port = _sidecar(
        stack,
        pred_topic,
        label_topic,
        tmp_path,
        SCORER_COUNT_WINDOW=str(COUNT_WINDOW),
        SCORER_TIME_WINDOWS=",".join(TIME_WINDOWS),
        SCORER_THRESHOLD=str(threshold),
    )
    in_order = Producer({"bootstrap.servers": stack.bootstrap, "enable.idempotence": True, **QUIET})
    sent, checkpoints = [], []
    try:
        before = _wait_until_read(port, N, 0, sidecar)
        _assert_counters(before, pending_prediction=N, pending_label=0)
        assert not _exported_windows(before), "nothing is evaluated before a label arrives"
        for burst in bursts:
            _produce(in_order, registry_client, label_topic, label_avro, burst)
            sent = sent + burst
            checkpoints.append((_wait_until_read(port, N, len(sent), sidecar), sent))
    finally:
        sidecar.sigterm()
        assert sidecar.wait(30) == 0, sidecar.output()[-2000:]

    by_id = {prediction["id"]: prediction for prediction in predictions}
    for values, labels_sent in checkpoints:
        joined, outcomes = _join_in_order(labels_sent, by_id)
        assert len(joined) > COUNT_WINDOW, "rows must have left the count window"
        windows = {f"last_{COUNT_WINDOW}": joined[-COUNT_WINDOW:]}
        windows.update({name: _in_time_window(joined, span) for name, span in TIME_WINDOWS.items()})
        assert _exported_windows(values) == set(windows)
        _assert_window(values, task, f"last_{COUNT_WINDOW}", windows[f"last_{COUNT_WINDOW}"], threshold)
        for name, span in TIME_WINDOWS.items():
            late = _late_rows(joined, span)
            _assert_window(values, task, name, windows[name], threshold, late_rows=late)
        _assert_counters(values, joined=len(joined), pending_prediction=N - len(joined), **outcomes)
    late_10m = _late_rows(_join_in_order(checkpoints[-1][1], by_id)[0], TIME_WINDOWS["10m"])
    assert late_10m > 0, "shuffled event times over 30 minutes must make some rows late for the 10m window"


def test_unmatched_records_expire_by_record_time_and_excess_labels_are_evicted(
    stack, topic_factory, producer, registry_client, tmp_path
):
    """A 5 s TTL and at most 100 pending records per side, driven by record timestamps (the sidecar's clock).

    Phase 1 (before the sidecar starts): 80 predictions at t, labels for 40 of them at t + 1 s: 40 join.
    Phase 2: 150 labels without predictions at t + 20 s: the 40 waiting predictions have expired, and 50 of
    the labels do not fit in the 100 pending places (evicted, oldest first). Phase 3: one prediction at
    t + 40 s: the 100 waiting labels expire. Each phase is read completely before the next is produced.
    """
    rng = np.random.default_rng(11)
    predictions, labels = _records("binary", rng)
    t = int(time.time() * 1000) - 120_000  # well inside the rebuild span (TTL + the 10-minute window)
    pred_topic, label_topic = topic_factory("predictions"), topic_factory("labels")
    pred_avro, label_avro = prediction_schema(EMPTY_SCHEMA, "string"), label_schema("string")
    _produce(producer, registry_client, pred_topic, pred_avro, predictions[:80], timestamp_ms=t)
    _produce(producer, registry_client, label_topic, label_avro, labels[:40], timestamp_ms=t + 1_000)
    orphans = [{"id": f"orphan-{i}", "label": "yes", "event_time": t} for i in range(150)]

    sidecar, port = _sidecar(stack, pred_topic, label_topic, tmp_path, SCORER_LABEL_TTL_S="5", SCORER_MAX_PENDING="100")
    try:
        phase1 = _wait_until_read(port, 80, 40, sidecar)
        _produce(producer, registry_client, label_topic, label_avro, orphans, timestamp_ms=t + 20_000)
        phase2 = _wait_until_read(port, 80, 190, sidecar)
        _produce(producer, registry_client, pred_topic, pred_avro, predictions[80:81], timestamp_ms=t + 40_000)
        phase3 = _wait_until_read(port, 81, 190, sidecar)
    finally:
        sidecar.sigterm()
        assert sidecar.wait(30) == 0, sidecar.output()[-2000:]

    _assert_counters(phase1, joined=40, pending_prediction=40)
    _assert_counters(phase2, joined=40, expired_prediction=40, evicted_label=50, pending_label=100)
    _assert_counters(
        phase3, joined=40, expired_prediction=40, evicted_label=50, expired_label=100, pending_prediction=1
    )
    joined = list(zip(predictions[:40], labels[:40], strict=True))
    for values in (phase1, phase3):  # expiry and eviction take nothing out of the windows
        _assert_window(values, "binary", "last_100000", joined)
        _assert_window(values, "binary", "10m", _in_time_window(joined, WINDOW_S))


def test_memory_bound_holds_and_counters_add_up(stack, topic_factory, producer, registry_client, tmp_path):
    rng = np.random.default_rng(5)
    predictions, labels = _records("binary", rng)
    pred_topic, label_topic = topic_factory("predictions"), topic_factory("labels")
    _produce(producer, registry_client, pred_topic, prediction_schema(EMPTY_SCHEMA, "string"), predictions)
    _produce(producer, registry_client, label_topic, label_schema("string"), labels[:100])

    sidecar, port = _sidecar(stack, pred_topic, label_topic, tmp_path, SCORER_MAX_PENDING="200")
    try:
        values = _wait_until_read(port, N, 100, sidecar)
    finally:
        sidecar.sigterm()
        assert sidecar.wait(30) == 0
    outcome = {dict(k[1])["outcome"]: v for k, v in values.items() if k[0] == "scorer_evaluation_records_total"}
    pending = values[("scorer_evaluation_pending", (("side", "prediction"),))]
    assert pending <= 200, "unmatched predictions are bounded by --max-pending"
    assert outcome["evicted_prediction"] > 0, "what does not fit is evicted and counted"
    unmatched_labels = values[("scorer_evaluation_pending", (("side", "label"),))]
    assert outcome["joined"] + outcome["expired_prediction"] + outcome["evicted_prediction"] + pending == N
    assert outcome["joined"] + outcome["expired_label"] + outcome["evicted_label"] + unmatched_labels == 100
