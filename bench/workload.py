"""The benchmark workload: a seeded synthetic tabular stream and the two models trained on it.

Rows: 20 numeric features ``f00``..``f19`` (normal, each with its own mean and scale), 4 categorical string
features ``c0``..``c3`` with 5, 8, 12 and 20 levels (uneven level frequencies), and a binary ``label``
drawn from a logistic model with an interaction and a non-linear term (so the two models differ).

The stream is Confluent-framed Avro written with the schema a producer would register
(``scorer.demo.feature_writer_schema``: ``id``, the features, ``event_time`` timestamp-millis). Bodies are
encoded once with fastavro and produced from a list, so that producing 200,000 records takes seconds.
``event_time`` inside the body is synthetic; latency is always measured from Kafka record timestamps.
"""

from __future__ import annotations

import io
import json
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pandas as pd
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from scorer.bundle import build_bundle
from scorer.demo import feature_writer_schema
from scorer.schema import TrainingSchema

NUMERIC = [f"f{i:02d}" for i in range(20)]
CATEGORICAL = {"c0": 5, "c1": 8, "c2": 12, "c3": 20}
FEATURES = NUMERIC + list(CATEGORICAL)
LABEL = "label"
TRAIN_ROWS = 50_000
MODELS = ("linear", "gb")
MODEL_TITLES = {
    "linear": "LogisticRegression (scaled + one-hot)",
    "gb": "HistGradientBoosting(max_iter=100) (scaled + one-hot)",
}
QUIET = {"log_level": 2}


class Distribution:
    """The fixed generating process; ``sample(n, seed)`` draws rows from it."""

    def __init__(self, seed: int = 20240) -> None:
        rng = np.random.default_rng(seed)
        self.means = rng.normal(0, 3, size=len(NUMERIC))
        self.scales = rng.uniform(0.5, 4.0, size=len(NUMERIC))
        self.weights = rng.normal(0, 1, size=len(NUMERIC)) * (rng.random(len(NUMERIC)) < 0.6)
        self.levels = {name: [f"{name}_{k:02d}" for k in range(n)] for name, n in CATEGORICAL.items()}
        # uneven but never rare: every level appears many times in 50,000 training rows
        self.level_p = {name: _normalise(rng.uniform(0.3, 1.0, size=n)) for name, n in CATEGORICAL.items()}
        self.level_effect = {name: rng.normal(0, 0.8, size=n) for name, n in CATEGORICAL.items()}

    def sample(self, n: int, seed: int) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        z = rng.normal(size=(n, len(NUMERIC)))
        frame = pd.DataFrame(z * self.scales + self.means, columns=NUMERIC)
        logit = (z @ self.weights) * 0.5 + 0.8 * np.sin(2 * z[:, 3]) * z[:, 4] - 0.5 * np.abs(z[:, 7])
        for name, levels in self.levels.items():
            codes = rng.choice(len(levels), size=n, p=self.level_p[name])
            frame[name] = np.asarray(levels, dtype=object)[codes]
            logit += self.level_effect[name][codes]
        frame[LABEL] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
        return frame


def _normalise(weights: np.ndarray) -> np.ndarray:
    return weights / weights.sum()


def make_model(kind: str) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), NUMERIC),
            ("cat", OneHotEncoder(handle_unknown="ignore"), list(CATEGORICAL)),
        ]
    )
    if kind == "linear":
        head: Any = LogisticRegression(max_iter=1000)
    elif kind == "gb":
        head = HistGradientBoostingClassifier(max_iter=100, random_state=0)
    else:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {MODELS}")
    return Pipeline([("pre", pre), ("model", head)])


def train_bundles(out: Path, distribution: Distribution, seed: int) -> dict[str, Path]:
    """Fit both models on 50,000 rows and save them as scorer bundles; returns kind -> bundle directory."""
    frame = distribution.sample(TRAIN_ROWS, seed=seed + 1)
    paths = {}
    for kind in MODELS:
        model = make_model(kind).fit(frame[FEATURES], frame[LABEL])
        bundle = build_bundle(model, frame, label=LABEL, name=f"bench-{kind}", version="1")
        paths[kind] = bundle.save(out / kind)
    return paths


def writer_schema(training: TrainingSchema) -> str:
    return json.dumps(feature_writer_schema(training))


_HEADER = struct.Struct(">bI")


def encode_bodies(
    frame: pd.DataFrame, schema_text: str, schema_id: int, base_ms: int
) -> tuple[list[bytes], list[bytes]]:
    """Confluent-framed Avro values and their keys (the ids), encoded once with fastavro."""
    parsed = fastavro.parse_schema(json.loads(schema_text))
    prefix = _HEADER.pack(0, schema_id)
    records = frame[FEATURES].to_dict("records")
    values, keys = [], []
    stream = io.BytesIO()
    for n, record in enumerate(records):
        record_id = f"r{n:07d}"
        record["id"] = record_id
        record["event_time"] = base_ms + n
        stream.seek(0)
        stream.truncate()
        stream.write(prefix)
        fastavro.schemaless_writer(stream, parsed, record)
        values.append(stream.getvalue())
        keys.append(record_id.encode())
    return values, keys


def register(registry_url: str, subject: str, schema_text: str) -> int:
    client = SchemaRegistryClient({"url": registry_url})
    try:
        return int(client.register_schema(subject, Schema(schema_text, "AVRO")))
    finally:
        client.__exit__()


def create_topics(bootstrap: str, topics: list[str], partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, **QUIET})
    futures = admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=-1) for t in topics])
    for future in futures.values():
        try:
            future.result(timeout=15)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def bulk_producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            **QUIET,
        }
    )


def produce_all(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes], count: int | None = None) -> float:
    """Produce ``count`` records (cycling through ``values``; keys stay unique) as fast as possible.

    Returns the seconds it took, flush included.
    """
    count = len(values) if count is None else count
    producer = bulk_producer(bootstrap)
    started = time.perf_counter()
    produce = producer.produce
    n_values = len(values)
    for n in range(count):
        index = n % n_values
        key = keys[index] if n < n_values else b"%s-%d" % (keys[index], n // n_values)
        while True:
            try:
                produce(topic, value=values[index], key=key)
                break
            except BufferError:
                producer.poll(0.05)
    remaining = producer.flush(120)
    if remaining:
        raise RuntimeError(f"{remaining} input records not acknowledged by the broker")
    return time.perf_counter() - started


@dataclass
class Workload:
    """Everything a run needs: addresses, bundles, the encoded stream and its schema."""

    bootstrap: str
    registry_url: str
    bundles: dict[str, Path]
    schema_text: str
    schema_id: int
    values: list[bytes]
    keys: list[bytes]
    input_topic: str
    distribution: Distribution
    seed: int


def build(bootstrap: str, registry_url: str, state: Path, records: int, seed: int, input_topic: str) -> Workload:
    """Train the models, encode ``records`` rows, register the writer schema and fill ``input_topic``."""
    from scorer.bundle import load_bundle

    distribution = Distribution()
    bundles = train_bundles(state / "bundles", distribution, seed)
    training = load_bundle(bundles["linear"]).schema
    schema_text = writer_schema(training)
    schema_id = register(registry_url, f"{input_topic}-value", schema_text)
    stream = distribution.sample(records, seed=seed + 2)
    values, keys = encode_bodies(stream, schema_text, schema_id, base_ms=int(time.time() * 1000))
    create_topics(bootstrap, [input_topic])
    produce_all(bootstrap, input_topic, values, keys)
    return Workload(
        bootstrap, registry_url, bundles, schema_text, schema_id, values, keys, input_topic, distribution, seed
    )
