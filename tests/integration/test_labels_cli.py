"""`scorer labels FILE` against the real broker and registry: the labels contract, every row, and a bad file.

The command runs as an operator runs it (``python -m scorer labels``, connection settings in the
environment); the refusals run ``main`` in-process, which is the same code without the start-up time. What is checked is what the sidecar and other consumers rely on: the subject
``<topic>-value`` holds the label schema with ``label`` typed like the file's column, each record carries
that schema's id, is keyed by its id, and has the file's label and event time (in epoch milliseconds).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from scorer.cli import main
from tests.fixtures.stack import read_topic
from tests.integration.helpers import run_cli

pytestmark = pytest.mark.integration

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _millis(text: str) -> int:
    """ISO 8601 with an offset -> epoch milliseconds, in integers (no float rounding)."""
    return (dt.datetime.fromisoformat(text) - EPOCH) // dt.timedelta(milliseconds=1)


def _event_times(n: int) -> list[str]:
    """Millisecond event times in three time zones, so a wrong unit or a dropped offset shows."""
    offsets = ["+00:00", "+02:00", "-05:30"]
    return [f"2026-03-01T10:{i % 60:02d}:{i % 60:02d}.{(37 * i) % 1000:03d}{offsets[i % 3]}" for i in range(n)]


def _case_frame(case: str, n: int = 60) -> tuple[pd.DataFrame, list[str], str, list[object], list[str] | None]:
    """(file frame, extra CLI args, the Avro type of ``label``, the labels as published, the event times or None)."""
    if case == "csv-string-with-event-times":
        times = _event_times(n)
        labels = ["yes" if i % 3 else "no" for i in range(n)]
        frame = pd.DataFrame({"id": [f"c-{i}" for i in range(n)], "churned": labels, "ts": times})
        return frame, ["--label-column", "churned", "--event-time-column", "ts"], "string", labels, times
    if case == "csv-long-numeric-ids":
        labels = [i % 4 for i in range(n)]
        frame = pd.DataFrame({"id": list(range(1000, 1000 + n)), "label": labels})
        return frame, [], "long", labels, None
    if case == "parquet-double-with-timestamps":
        times = _event_times(n)
        labels = [100.0 + 0.125 * i for i in range(n)]
        frame = pd.DataFrame(
            {"id": [f"p-{i}" for i in range(n)], "price": labels, "when": pd.to_datetime(times, utc=True)}
        )
        return frame, ["--label-column", "price", "--event-time-column", "when"], "double", labels, times
    labels = [i % 2 == 0 for i in range(n)]  # parquet-boolean
    frame = pd.DataFrame({"id": [f"b-{i}" for i in range(n)], "label": labels})
    return frame, [], "boolean", labels, None


@pytest.mark.parametrize(
    "case",
    ["csv-string-with-event-times", "csv-long-numeric-ids", "parquet-double-with-timestamps", "parquet-boolean"],
)
def test_labels_file_is_published_under_the_label_contract(
    case, stack, topic_factory, registry_client, tmp_path, monkeypatch, capsys
):
    frame, args, label_type, labels, times = _case_frame(case)
    path = tmp_path / ("labels.csv" if case.startswith("csv") else "labels.parquet")
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    topic = topic_factory("labels", partitions=3)

    before_ms = int(time.time() * 1000)
    result = run_cli(stack, monkeypatch, capsys, "labels", str(path), "--labels-topic", topic, *args)
    after_ms = int(time.time() * 1000)
    assert result.returncode == 0, result.stderr
    assert f"{len(frame)} labels published to {topic}" in result.stdout

    registered = registry_client.get_latest_version(f"{topic}-value")
    schema = json.loads(registered.schema.schema_str)
    assert schema["name"] == "Label" and schema["namespace"] == "scorer"
    fields = {spec["name"]: spec["type"] for spec in schema["fields"]}
    assert fields == {
        "id": "string",
        "label": label_type,
        "event_time": {"type": "long", "logicalType": "timestamp-millis"},
    }

    messages = read_topic(stack.bootstrap, topic, expected=len(frame), timeout_s=30)
    deserializer = AvroDeserializer(registry_client)
    context = SerializationContext(topic, MessageField.VALUE)
    received = {}
    for message in messages:
        assert message.value()[0] == 0, "Confluent wire format"
        assert int.from_bytes(message.value()[1:5], "big") == registered.schema_id
        record = deserializer(message.value(), context)
        assert message.key().decode() == record["id"], "labels are keyed by their id"
        assert record["id"] not in received, f"{record['id']} published twice"
        received[record["id"]] = record
    ids = [str(i) for i in frame["id"]]
    assert sorted(received) == sorted(ids), "every row arrives once"
    for i, record_id in enumerate(ids):
        record = received[record_id]
        assert record["label"] == labels[i] and type(record["label"]) is type(labels[i]), record
        event_ms = (record["event_time"] - EPOCH) // dt.timedelta(milliseconds=1)
        if times is None:  # no event-time column: the time of publishing
            assert before_ms <= event_ms <= after_ms, record
        else:
            assert event_ms == _millis(times[i]), f"{record_id}: {record['event_time']} is not {times[i]}"


@pytest.mark.parametrize(
    ("columns", "flags", "message"),
    [
        ({"id": "ab", "churned": "ny"}, [], "--label-column: column 'label' is not in the file"),
        ({"key": "ab", "label": "ny"}, [], "--id-column: column 'id' is not in the file"),
        (
            {"id": "ab", "label": "ny"},
            ["--event-time-column", "ts"],
            "--event-time-column: column 'ts' is not in the file",
        ),
        (
            {"id": "ab", "label": "ny", "ts": ["2026-03-01T10:00:00Z", None]},
            ["--event-time-column", "ts"],
            "--event-time-column: column 'ts' has 1 empty values",
        ),
        (
            {"id": "ab", "label": "ny", "ts": ["2026-03-01T10:00:00Z", "yesterday-ish"]},
            ["--event-time-column", "ts"],
            "--event-time-column: column 'ts' is not dates and times",
        ),
        (
            {"id": "ab", "label": "ny", "ts": [1_772_359_200_000, 1_772_359_260_000]},
            ["--event-time-column", "ts"],
            "--event-time-column: column 'ts' holds numbers (int64)",
        ),
    ],
    ids=["no-label-column", "no-id-column", "no-event-time-column", "empty-event-time", "unparsable", "numbers"],
)
def test_a_malformed_file_fails_naming_the_column_and_publishes_nothing(
    columns, flags, message, stack, topic_factory, registry_client, tmp_path: Path, monkeypatch, capsys
):
    path = tmp_path / "truth.csv"
    pd.DataFrame({name: list(values) for name, values in columns.items()}).to_csv(path, index=False)
    topic = topic_factory("labels", partitions=3)

    for key in [k for k in os.environ if k.startswith("SCORER_")]:
        monkeypatch.delenv(key)
    connection = ["--bootstrap-servers", stack.bootstrap, "--schema-registry-url", stack.registry_url]
    code = main(["labels", str(path), "--labels-topic", topic, *connection, *flags])  # in-process: quicker
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert stderr.startswith(f"scorer: error: {message}"), stderr
    with pytest.raises(SchemaRegistryError) as error:
        registry_client.get_latest_version(f"{topic}-value")
    assert error.value.http_status_code == 404, "no schema is registered for a file that is refused"
    assert read_topic(stack.bootstrap, topic, expected=1, timeout_s=0.5) == [], "nothing is published"
