"""Shared steps of the integration tests: produce features, start a scorer, read its outputs back."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from scorer.cli import main
from scorer.demo import feature_writer_schema, produce_features
from tests.fixtures.models import TrainedModel
from tests.fixtures.process import ScorerProcess
from tests.fixtures.stack import Stack, read_topic


def scorer_env(stack: Stack, input_topic: str, output_topic: str, model: TrainedModel, **extra: str) -> dict[str, str]:
    return {
        "SCORER_BOOTSTRAP_SERVERS": stack.bootstrap,
        "SCORER_SCHEMA_REGISTRY_URL": stack.registry_url,
        "SCORER_INPUT_TOPIC": input_topic,
        "SCORER_OUTPUT_TOPIC": output_topic,
        "SCORER_MODEL": str(model.path),
        "SCORER_GROUP_ID": f"scorer-{input_topic}",
        "SCORER_CREATE_TOPICS": "true",
        **extra,
    }


def produce_rows(
    producer: Producer,
    registry: SchemaRegistryClient,
    topic: str,
    model: TrainedModel,
    n: int,
    seed: int = 0,
    rate: float | None = None,
    background: bool = False,
) -> tuple[list[str], object]:
    """Produce ``n`` training rows (sampled with replacement) as framed Avro; returns ids and the rows.

    With ``background`` the rows are produced by a thread (paced at ``rate``/s) while the test goes on;
    the first row is produced before returning so that the input schema is registered.
    """
    rows = model.frame.sample(n=n, replace=True, random_state=seed).reset_index(drop=True)
    ids = [f"{topic}-{i}" for i in range(n)]
    serializer = AvroSerializer(registry, json.dumps(feature_writer_schema(model.bundle.schema)))
    if not background:
        produce_features(producer, serializer, topic, rows, ids, rate)
        return ids, rows
    produce_features(producer, serializer, topic, rows.iloc[:1], ids[:1])
    thread = threading.Thread(target=produce_features, args=(producer, serializer, topic, rows.iloc[1:], ids[1:], rate))
    thread.start()
    return ids, rows


def start_scorer(env: dict[str, str], tmp_path: Path, name: str = "scorer") -> ScorerProcess:
    return ScorerProcess(env, tmp_path / f"{name}.log")


def read_predictions(
    stack: Stack, registry: SchemaRegistryClient, topic: str, expected: int, timeout_s: float = 90
) -> list:
    deserializer = AvroDeserializer(registry)
    context = SerializationContext(topic, MessageField.VALUE)
    messages = read_topic(stack.bootstrap, topic, expected, timeout_s)
    return [(m, deserializer(m.value(), context)) for m in messages]


def duplicates(ids: list[str]) -> int:
    return sum(count - 1 for count in Counter(ids).values())


def wait_for_outputs(bootstrap: str, topic: str, at_least: int, timeout_s: float = 60.0) -> int:
    """Block until ``topic`` holds at least ``at_least`` records (a stop then lands mid-stream, even on a
    loaded machine where a fixed sleep might end before the first batch)."""
    deadline = time.monotonic() + timeout_s
    count = 0
    while time.monotonic() < deadline:
        count = len(read_topic(bootstrap, topic, expected=at_least, timeout_s=1.0))
        if count >= at_least:
            return count
        time.sleep(0.2)
    raise AssertionError(f"only {count} records reached {topic} within {timeout_s} s")


def run_cli(stack: Stack, monkeypatch, capsys, *args: str) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    """``scorer ARGS`` in this process, with only the stack's addresses in the environment.

    For the short commands (labels, sample): a subprocess would spend most of its time importing.
    """
    for key in [k for k in os.environ if k.startswith("SCORER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SCORER_BOOTSTRAP_SERVERS", stack.bootstrap)
    monkeypatch.setenv("SCORER_SCHEMA_REGISTRY_URL", stack.registry_url)
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["scorer", *args], code, captured.out, captured.err)
