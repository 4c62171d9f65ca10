"""``scorer labels``: publish ground truth from a CSV or Parquet file to the labels topic.

The records follow the labels contract (``schemas/label.avsc``): ``id``, ``label`` typed like the
model's label, ``event_time``. They are keyed by id, like predictions, so that a prediction and its
label land on the same partition number. Serialisation is confluent-kafka's ``AvroSerializer``, which
registers the schema under ``<labels-topic>-value`` (library first: nothing here is hot).

May import: L0-L2 modules.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pandas as pd
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from scorer.config import KafkaSettings
from scorer.errors import ConfigError
from scorer.kafka import create_producer
from scorer.schema import avro_field_type, label_schema

__all__ = ["publish_labels"]


def publish_labels(
    settings: KafkaSettings,
    frame: pd.DataFrame,
    topic: str,
    id_column: str = "id",
    label_column: str = "label",
    event_time_column: str | None = None,
    label_type: str | None = None,
    rate: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Produce one label record per row; returns the number delivered.

    Rows without an event time get the current time. ``rate`` paces the stream (records per second).
    """
    for column, setting in ((id_column, "--id-column"), (label_column, "--label-column")):
        if column not in frame.columns:
            raise ConfigError(setting, f"column {column!r} is not in the file (columns: {list(frame.columns)})")
    if event_time_column and event_time_column not in frame.columns:
        raise ConfigError("--event-time-column", f"column {event_time_column!r} is not in the file")
    kind = label_type or avro_field_type(frame[label_column].dtype)
    now_ms = int(time.time() * 1000)
    times = (  # before any connection: a file refused here opens none
        _epoch_millis(frame[event_time_column], event_time_column)
        if event_time_column
        else pd.Series(now_ms, index=frame.index)
    )
    registry = SchemaRegistryClient(settings.registry_config())
    serializer = AvroSerializer(registry, json.dumps(label_schema(kind)))
    producer = create_producer(settings)
    context = SerializationContext(topic, MessageField.VALUE)
    convert = float if kind == "double" else (lambda v: v)
    started = time.monotonic()
    failures: list[str] = []

    def on_delivery(error: object, _message: object) -> None:
        if error is not None:
            failures.append(str(error))

    for n, (record_id, label, event_ms) in enumerate(zip(frame[id_column], frame[label_column], times, strict=True), 1):
        record = {"id": str(record_id), "label": convert(label.item() if hasattr(label, "item") else label)}
        record["event_time"] = int(event_ms)
        value = serializer(record, context)
        while True:
            try:
                producer.produce(topic, key=str(record_id).encode(), value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        if rate:
            ahead = started + n / rate - time.monotonic()
            if ahead > 0:
                producer.poll(0)
                time.sleep(ahead)
        if progress and n % 10_000 == 0:
            progress(n)
    producer.flush(60)
    registry.__exit__()
    if failures:
        raise ConfigError("--labels-topic", f"{len(failures)} labels were not delivered, first: {failures[0]}")
    return len(frame)


def _epoch_millis(column: pd.Series, name: str) -> pd.Series:
    """Event times (datetimes, or text pandas parses; naive ones are UTC) as epoch milliseconds.

    ``as_unit`` first: pandas keeps the resolution it parsed or read (seconds to nanoseconds: CSV text parses
    to microseconds, a Parquet timestamp keeps its own unit), so the integer value alone does not say ms.
    A numeric column is refused: pandas would read its numbers as nanoseconds, and whether they are
    seconds or milliseconds is not something to guess (the label contract's ``event_time`` is in ms).
    """
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        raise ConfigError(
            "--event-time-column",
            f"column {name!r} holds numbers ({column.dtype}); give dates and times (ISO 8601 text or a "
            "timestamp column), for example pd.to_datetime(values, unit='ms') before writing the file",
        )
    try:
        times = pd.to_datetime(column, utc=True)
    except (ValueError, TypeError) as exc:  # pandas' DateParseError is a ValueError
        raise ConfigError("--event-time-column", f"column {name!r} is not dates and times: {exc}") from exc
    if times.isna().any():
        raise ConfigError("--event-time-column", f"column {name!r} has {int(times.isna().sum())} empty values")
    return times.dt.as_unit("ms").astype("int64")
