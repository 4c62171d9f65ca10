"""`scorer evaluate` against the real broker and registry: every exported metric equals sklearn on the same rows."""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import pytest
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from prometheus_client.parser import text_string_to_metric_families
from sklearn import metrics as skm

from scorer.devstack import free_port
from scorer.schema import TrainingSchema, label_schema, prediction_schema
from tests.fixtures.process import ScorerProcess

pytestmark = pytest.mark.integration

N = 1500
WINDOW_S = 600
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


def _produce(producer, registry_client, topic: str, schema: dict, records: list[dict]) -> None:
    serializer = AvroSerializer(registry_client, json.dumps(schema))
    context = SerializationContext(topic, MessageField.VALUE)
    for record in records:
        producer.produce(topic, key=record["id"].encode(), value=serializer(record, context))
        producer.poll(0)
    producer.flush(30)


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


def _expected(task: str, rows: list[tuple[dict, dict]]) -> dict[str, float]:
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
        y_pred = p >= 0.5
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
            "threshold": 0.5,
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


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_rolling_metrics_equal_sklearn_on_the_window_rows(
    task, stack, topic_factory, producer, registry_client, tmp_path
):
    rng = np.random.default_rng({"binary": 1, "multiclass": 2, "regression": 3}[task])
    predictions, labels = _records(task, rng)
    label_type = "double" if task == "regression" else "string"
    # at-least-once upstream: some predictions twice; labels late, shuffled, some twice, some conflicting, some missing
    duplicated_predictions = predictions + [predictions[i] for i in range(0, N, 10)]
    order = rng.permutation(N)
    kept = [labels[i] for i in order[: int(N * 0.9)]]
    twice = [dict(labels[i]) for i in order[:50]]
    conflicting = [
        {**labels[i], "label": (labels[i]["label"] + 1.0) if task == "regression" else "no-such"} for i in order[50:60]
    ]
    pred_topic, label_topic = topic_factory("predictions", partitions=3), topic_factory("labels", partitions=3)
    _produce(producer, registry_client, pred_topic, prediction_schema(EMPTY_SCHEMA, label_type), duplicated_predictions)
    _produce(producer, registry_client, label_topic, label_schema(label_type), kept + twice + conflicting)

    sidecar, port = _sidecar(stack, pred_topic, label_topic, tmp_path)
    try:
        values = _wait_until_read(port, len(duplicated_predictions), len(kept) + len(twice) + len(conflicting), sidecar)
    finally:
        sidecar.sigterm()
        assert sidecar.wait(30) == 0, sidecar.output()[-2000:]

    joined = [(predictions[int(label["id"][1:])], label) for label in kept]
    watermark = max(label["event_time"] for _, label in joined)
    in_time_window = [(p, label) for p, label in joined if label["event_time"] > watermark - WINDOW_S * 1000]
    assert 0 < len(in_time_window) < len(joined), "the time window must hold a strict subset"
    for window, rows in (("last_100000", joined), (f"{WINDOW_S // 60}m", in_time_window)):
        labels_key = (("model_name", "m"), ("model_version", "7"), ("window", window))
        assert values[("scorer_evaluation_window_rows", labels_key)] == len(rows)
        for name, expected in _expected(task, rows).items():
            got = values[(f"scorer_evaluation_{name}", labels_key)]
            assert got == pytest.approx(float(expected), rel=1e-9), f"{window} {name}"

    outcome = {dict(k[1])["outcome"]: v for k, v in values.items() if k[0] == "scorer_evaluation_records_total"}
    assert outcome["joined"] == len(joined)
    assert outcome["duplicate_prediction"] == len(range(0, N, 10))
    assert outcome["duplicate_label"] == len(twice)
    assert outcome["conflicting_label"] == len(conflicting), "a later different label is a conflict, the first wins"
    pending = values[("scorer_evaluation_pending", (("side", "prediction"),))]
    assert outcome["joined"] + outcome["expired_prediction"] + outcome["evicted_prediction"] + pending == N


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
