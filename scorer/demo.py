"""``scorer demo``: the whole loop on one laptop in about a minute, then everything stops.

Starts the dev stack on free loopback ports, trains a small classifier on scikit-learn's bundled breast
cancer data (nothing downloaded), bundles it, starts ``scorer run`` as a real process, streams feature
records (plus a few deliberately broken ones) at a fixed rate, reads the predictions and dead letters
back, and prints a sample table, the counters and a few Prometheus series.

The producer helpers here are also what the tests use to write Confluent-framed Avro features.

May import: anything (top layer).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from prometheus_client.parser import text_string_to_metric_families

from scorer import devstack
from scorer.bundle import ModelBundle, build_bundle
from scorer.config import KafkaSettings
from scorer.labels import publish_labels
from scorer.schema import TrainingSchema

__all__ = ["demo_frame", "feature_writer_schema", "produce_features", "run_demo", "train_demo_bundle"]

DEMO_INPUT, DEMO_OUTPUT, DEMO_LABELS = "demo.features", "demo.predictions", "demo.labels"
TEST_CLIENT_CONFIG = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}
"""Short group timeouts: the dev broker's group join takes about half the session timeout."""


def demo_frame() -> pd.DataFrame:
    """scikit-learn's breast cancer data with Avro-safe column names and string labels."""
    from sklearn.datasets import load_breast_cancer  # noqa: PLC0415

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns=lambda c: c.replace(" ", "_"))
    frame["diagnosis"] = np.asarray(data.target_names)[frame.pop("target")]
    return frame


def train_demo_bundle(out: Path, version: str = "1") -> ModelBundle:
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    frame = demo_frame()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(frame.drop(columns="diagnosis"), frame["diagnosis"])
    bundle = build_bundle(model, frame, "diagnosis", "breast-cancer", version)
    bundle.save(out)
    return bundle


def feature_writer_schema(schema: TrainingSchema, id_field: str = "id") -> dict[str, Any]:
    """What an upstream producer registers: an id, the features, and an event time."""
    record = schema.to_avro()
    record["fields"] = [
        {"name": id_field, "type": "string"},
        *record["fields"],
        {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ]
    return record


def produce_features(
    producer: Producer,
    serializer: AvroSerializer,
    topic: str,
    frame: pd.DataFrame,
    ids: list[str],
    rate: float | None = None,
) -> None:
    """Produce ``frame`` rows as Confluent-framed Avro, keyed by id, optionally paced at ``rate`` per second."""
    context = SerializationContext(topic, MessageField.VALUE)
    started = time.monotonic()
    for n, (record_id, row) in enumerate(zip(ids, frame.to_dict("records"), strict=True)):
        value = serializer({"id": record_id, **row, "event_time": int(time.time() * 1000)}, context)
        while True:
            try:
                producer.produce(topic, key=record_id.encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
        if rate:
            ahead = started + (n + 1) / rate - time.monotonic()
            if ahead > 0:
                producer.poll(0)
                time.sleep(ahead)
    producer.flush(30)


def broken_records(schema_id: int) -> list[tuple[str, bytes | None, str]]:
    """A few records a careless producer might send: (key, value, what is wrong)."""
    return [
        ("broken-1", b"", "empty value"),
        ("broken-2", b"\x01\x00\x00\x00\x01garbage", "wrong magic byte"),
        ("broken-3", b"\x00\x00\x00", "truncated frame"),
        ("broken-4", b"\x00\x00\x00\x7f\xff" + b"\x02", "unknown schema id"),
        ("broken-5", b"\x00" + schema_id.to_bytes(4, "big") + b"\x06abc", "truncated Avro body"),
    ]


def _consume_all(consumer: Consumer, expected: int, timeout_s: float) -> Iterator[Any]:
    deadline, seen = time.monotonic() + timeout_s, 0
    while seen < expected and time.monotonic() < deadline:
        for message in consumer.consume(num_messages=1000, timeout=0.5):
            if message.error() is None:
                seen += 1
                yield message


def run_demo(records: int = 3000, rate: float = 1000.0, keep_state: Path | None = None) -> int:
    state = keep_state or Path(tempfile.mkdtemp(prefix="scorer-demo-"))
    print(f"scorer demo: state in {state}")
    stack = devstack.up(state / "stack", broker_port=9092, registry_port=8081)
    services: list[subprocess.Popen[bytes]] = []
    try:
        print(f"dev stack: broker {stack.bootstrap_servers}, registry {stack.registry_url}")
        bundle = train_demo_bundle(state / "bundle")
        print(f"model: {bundle.name} v{bundle.version}, {bundle.task}, classes {list(bundle.classes or [])}")
        _create_topics(stack.bootstrap_servers)

        registry = SchemaRegistryClient({"url": stack.registry_url})
        serializer = AvroSerializer(registry, json.dumps(feature_writer_schema(bundle.schema)))
        sample = demo_frame().sample(n=records, replace=True, random_state=7).reset_index(drop=True)
        ids = [f"patient-{i:05d}" for i in range(records)]
        producer = Producer({"bootstrap.servers": stack.bootstrap_servers, "log_level": 2})
        produce_features(producer, serializer, DEMO_INPUT, sample.iloc[:1, :-1], ["warm-up"])  # registers the schema
        schema_id = registry.get_latest_version(f"{DEMO_INPUT}-value").schema_id

        scorer_port, evaluate_port = devstack.free_port(9400), devstack.free_port(9401)
        services.append(_start_service("run", _scorer_env(stack, state / "bundle"), scorer_port, state / "scorer.log"))
        services.append(_start_service("evaluate", _evaluate_env(stack), evaluate_port, state / "evaluate.log"))
        print(f"scorer run: pid {services[0].pid}, metrics http://127.0.0.1:{scorer_port}/metrics")
        print(f"scorer evaluate: pid {services[1].pid}, metrics http://127.0.0.1:{evaluate_port}/metrics")

        started = time.monotonic()
        broken = broken_records(schema_id)
        for key, value, _what in broken:
            producer.produce(DEMO_INPUT, key=key.encode(), value=value)
        labels = _late_labels(stack, sample.assign(id=ids), delay_s=2.0, rate=rate)
        produce_features(producer, serializer, DEMO_INPUT, sample.drop(columns="diagnosis"), ids, rate=rate)
        print(f"produced {records + 1} feature records at {rate:.0f}/s and {len(broken)} broken ones")

        predictions = _read_predictions(stack, records + 1, registry)
        elapsed = time.monotonic() - started
        dead = _read_dead_letters(stack.bootstrap_servers, len(broken))
        labels.join()
        _print_sample(predictions)
        _print_dead_letters(dead)
        print(
            f"\nsummary: {records + 1 + len(dead)} in, {len(predictions)} predictions, {len(dead)} dead letters, "
            f"{elapsed:.1f} s, {len(predictions) / elapsed:,.0f} predictions/s (input paced at {rate:,.0f}/s)"
        )
        _print_scorer_metrics(_scrape(scorer_port))
        evaluation = _wait_for_joins(evaluate_port, expected=labels.count)
        _print_evaluation(evaluation)
        ok = len(predictions) == records + 1 and len(dead) == len(broken)
        return 0 if ok else 1
    finally:
        for service in services:
            devstack.terminate(service.pid, timeout_s=30)
            print(f"{' '.join(str(a) for a in service.args[-1:])} stopped (exit code {service.wait()})")
        devstack.stop(state / "stack")
        print("dev stack stopped")


class _LabelStream(threading.Thread):
    """Publishes the true diagnosis of 95% of the records, ``delay_s`` after the features start."""

    def __init__(self, stack: devstack.DevStack, frame: pd.DataFrame, delay_s: float, rate: float) -> None:
        super().__init__(daemon=True)
        self.frame = frame.sample(frac=0.95, random_state=3)[["id", "diagnosis"]]
        self.count = len(self.frame)
        self._settings = KafkaSettings(
            bootstrap_servers=stack.bootstrap_servers, schema_registry_url=stack.registry_url
        )
        self._delay_s, self._rate = delay_s, rate

    def run(self) -> None:
        time.sleep(self._delay_s)
        publish_labels(self._settings, self.frame, DEMO_LABELS, label_column="diagnosis", rate=self._rate * 1.2)


def _late_labels(stack: devstack.DevStack, frame: pd.DataFrame, delay_s: float, rate: float) -> _LabelStream:
    stream = _LabelStream(stack, frame, delay_s, rate)
    stream.start()
    return stream


def _create_topics(bootstrap: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic  # noqa: PLC0415

    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [DEMO_INPUT, DEMO_OUTPUT, f"{DEMO_INPUT}.dlq", DEMO_LABELS]
    for future in admin.create_topics([NewTopic(t, num_partitions=3, replication_factor=-1) for t in topics]).values():
        future.result(timeout=15)


def _scorer_env(stack: devstack.DevStack, bundle: Path) -> dict[str, str]:
    return {
        "SCORER_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
        "SCORER_SCHEMA_REGISTRY_URL": stack.registry_url,
        "SCORER_INPUT_TOPIC": DEMO_INPUT,
        "SCORER_OUTPUT_TOPIC": DEMO_OUTPUT,
        "SCORER_MODEL": str(bundle),
        "SCORER_GROUP_ID": "demo-scorer",
    }


def _evaluate_env(stack: devstack.DevStack) -> dict[str, str]:
    return {
        "SCORER_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
        "SCORER_SCHEMA_REGISTRY_URL": stack.registry_url,
        "SCORER_PREDICTIONS_TOPIC": DEMO_OUTPUT,
        "SCORER_LABELS_TOPIC": DEMO_LABELS,
        "SCORER_GROUP_ID": "demo-evaluate",
        "SCORER_COUNT_WINDOW": "500",
        "SCORER_TIME_WINDOWS": "1m,1h",
    }


def _start_service(
    command: str, settings: dict[str, str], metrics_port: int, log_path: Path
) -> subprocess.Popen[bytes]:
    """``scorer run`` or ``scorer evaluate`` as its own process, configured through the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    env.update(settings)
    env.update(
        {
            "SCORER_METRICS_PORT": str(metrics_port),
            "SCORER_METRICS_HOST": "127.0.0.1",
            "SCORER_KAFKA_SESSION_TIMEOUT_MS": TEST_CLIENT_CONFIG["session.timeout.ms"],
            "SCORER_KAFKA_HEARTBEAT_INTERVAL_MS": TEST_CLIENT_CONFIG["heartbeat.interval.ms"],
        }
    )
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "scorer", command], env=env, stdout=log, stderr=subprocess.STDOUT
        )


def _read_predictions(stack: devstack.DevStack, expected: int, registry: SchemaRegistryClient) -> list[dict[str, Any]]:
    deserializer = AvroDeserializer(registry)
    consumer = Consumer(
        {
            "bootstrap.servers": stack.bootstrap_servers,
            "group.id": "demo-reader",
            "auto.offset.reset": "earliest",
            **TEST_CLIENT_CONFIG,
        }
    )
    consumer.subscribe([DEMO_OUTPUT])
    try:
        context = SerializationContext(DEMO_OUTPUT, MessageField.VALUE)
        return [deserializer(m.value(), context) for m in _consume_all(consumer, expected, timeout_s=90)]
    finally:
        consumer.close()


def _read_dead_letters(bootstrap: str, expected: int) -> list[dict[str, str]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "demo-dlq-reader",
            "auto.offset.reset": "earliest",
            **TEST_CLIENT_CONFIG,
        }
    )
    consumer.subscribe([f"{DEMO_INPUT}.dlq"])
    try:
        letters = []
        for message in _consume_all(consumer, expected, timeout_s=30):
            headers = {k: (v or b"").decode() for k, v in message.headers() or []}
            letters.append({"key": (message.key() or b"").decode(), **headers})
        return letters
    finally:
        consumer.close()


def _print_sample(predictions: list[dict[str, Any]], rows: int = 10) -> None:
    print(f"\nsample of {min(rows, len(predictions))} scored records (of {len(predictions)}):")
    print(f"{'id':<14} {'scored_label':<12} {'P(positive)':>11}  model")
    for record in predictions[-rows:]:
        probability = record["scored_probability"]
        shown = f"{probability:.4f}" if probability is not None else "-"
        print(
            f"{record['id']:<14} {record['scored_label']!s:<12} {shown:>11}  {record['model_name']} v{record['model_version']}"
        )


def _print_dead_letters(letters: list[dict[str, str]]) -> None:
    print(f"\ndead letters ({len(letters)}):")
    for letter in letters:
        print(f"  {letter['key']:<10} {letter.get('scorer.reason', '?'):<18} {letter.get('scorer.detail', '')}")


def _scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name from a metrics endpoint (empty if it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310 - loopback
            text = response.read().decode()
    except OSError:
        return {}
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _print_scorer_metrics(samples: dict[str, list[tuple[dict[str, str], float]]]) -> None:
    print("\nscorer counters (Prometheus):")
    for name in ("scorer_records_consumed_total", "scorer_records_scored_total", "scorer_records_rejected_total"):
        for labels, value in samples.get(name, []):
            if value:
                shown = ",".join(f"{k}={v}" for k, v in labels.items())
                print(f"  {name}{{{shown}}} {value:.0f}")


def _wait_for_joins(port: int, expected: int, timeout_s: float = 60) -> dict[str, list[tuple[dict[str, str], float]]]:
    deadline = time.monotonic() + timeout_s
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    while time.monotonic() < deadline:
        samples = _scrape(port)
        joined = sum(
            v for labels, v in samples.get("scorer_evaluation_records_total", []) if labels["outcome"] == "joined"
        )
        if joined >= expected:
            break
        time.sleep(0.5)
    return samples


def _print_evaluation(samples: dict[str, list[tuple[dict[str, str], float]]]) -> None:
    outcomes = {labels["outcome"]: v for labels, v in samples.get("scorer_evaluation_records_total", [])}
    print(f"\nrolling evaluation (labels arrived late; {outcomes.get('joined', 0):.0f} joined with their predictions):")
    columns = ("window_rows", "accuracy", "precision", "recall", "f1", "auc", "log_loss")
    print(f"  {'model':<20} {'window':<9}" + "".join(f"{c:>12}" for c in columns))
    windows: dict[tuple[str, str], dict[str, float]] = {}
    for column in columns:
        for labels, value in samples.get(f"scorer_evaluation_{column}", []):
            key = (f"{labels['model_name']} v{labels['model_version']}", labels["window"])
            windows.setdefault(key, {})[column] = value
    for (model, window), values in sorted(windows.items()):
        cells = [f"{values.get(c, float('nan')):>12.{0 if c == 'window_rows' else 4}f}" for c in columns]
        print(f"  {model:<20} {window:<9}" + "".join(cells))
