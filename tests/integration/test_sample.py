"""`scorer sample`: the latest records of a topic as a table, or saved as a dataset."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from scorer.schema import TrainingSchema, prediction_schema
from tests.integration.helpers import run_cli

pytestmark = pytest.mark.integration


def test_sample_prints_the_latest_predictions_and_saves_them(
    stack, topic_factory, producer, registry_client, tmp_path, monkeypatch, capsys
):
    topic = topic_factory("predictions", partitions=1)
    schema = prediction_schema(TrainingSchema(features=(), label="y", label_type="string"), "string")
    serializer = AvroSerializer(registry_client, json.dumps(schema))
    context = SerializationContext(topic, MessageField.VALUE)
    for i in range(30):
        record = {
            "id": f"r{i}",
            "scored_label": "yes",
            "scored_probability": 0.75,
            "scored_label_probability": 0.75,
            "scored_probabilities": {"no": 0.25, "yes": 0.75},
            "model_name": "churn",
            "model_version": "3",
            "scored_at": 1_796_000_000_000,
        }
        producer.produce(topic, key=record["id"].encode(), value=serializer(record, context))
    producer.produce(topic, key=b"bad", value=b"not avro", headers=[("scorer.reason", b"bad_magic_byte")])
    producer.flush(10)

    shown = run_cli(stack, monkeypatch, capsys, "sample", "--topic", topic, "--count", "5")
    assert shown.returncode == 0, shown.stderr
    assert "r29" in shown.stdout and "r26" in shown.stdout, "the latest five records"
    assert "r25" not in shown.stdout and "r10" not in shown.stdout, "and not older ones"
    assert "yes=0.750" in shown.stdout and "bad_magic_byte" in shown.stdout

    out = tmp_path / "sample.parquet"
    saved = run_cli(stack, monkeypatch, capsys, "sample", "--topic", topic, "--count", "100", "--out", str(out))
    assert saved.returncode == 0, saved.stderr
    frame = pd.read_parquet(out)
    assert frame["id"].dropna().tolist() == [f"r{i}" for i in range(30)]
    assert set(frame["model_version"].dropna()) == {"3"}

    missing = run_cli(stack, monkeypatch, capsys, "sample", "--topic", "no-such-topic")
    assert missing.returncode == 2 and "no-such-topic" in missing.stderr
