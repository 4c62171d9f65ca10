"""``scorer sample``: look at recent records of a topic without writing code ("Visualize"), or save them.

Reads the last ``count`` records of every partition of a topic (predictions, labels, dead letters: any
Confluent-framed Avro, decoded with its registered schema; dead letters are shown by their headers) and
prints them as a table, or writes them to CSV or Parquet ("save the results as a dataset").

May import: L0-L2 modules.
"""

from __future__ import annotations

import uuid
from collections import deque
from pathlib import Path
from typing import Any

import pandas as pd
from confluent_kafka import Consumer, TopicPartition

from scorer.codec import RecordDecoder
from scorer.config import KafkaSettings
from scorer.errors import ConfigError
from scorer.kafka import create_consumer
from scorer.registry import Registry

__all__ = ["sample_topic"]


def sample_topic(settings: KafkaSettings, topic: str, count: int = 20, timeout_s: float = 10.0) -> pd.DataFrame:
    """The last ``count`` records of each partition of ``topic`` as a frame, newest last per partition."""
    consumer = create_consumer(
        settings, f"scorer-sample-{uuid.uuid4().hex[:8]}", overrides={"enable.auto.commit": "false"}
    )
    registry = Registry(settings.registry_config())
    try:
        partitions = _partitions(consumer, topic)
        starts = []
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
            # some brokers count batches in the high watermark: start earlier, keep the last ``count``
            starts.append(TopicPartition(topic, partition, max(low, high - 2 * count)))
        consumer.assign(starts)
        decoder = RecordDecoder(registry.schema_text)
        kept: dict[int, deque[dict[str, Any]]] = {p: deque(maxlen=count) for p in partitions}
        idle = 0
        while idle < 2:
            messages = consumer.consume(num_messages=1000, timeout=timeout_s / 5)
            idle = 0 if messages else idle + 1
            for message in messages:
                if message.error() is None:
                    kept[message.partition()].append(_row(message, decoder))
        rows = [row for partition in partitions for row in kept[partition]]
        return pd.DataFrame(rows)
    finally:
        consumer.close()
        registry.close()


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise ConfigError("--topic", f"topic {topic!r} does not exist")
    return sorted(metadata.partitions)


def _row(message: Any, decoder: RecordDecoder) -> dict[str, Any]:
    headers = {key: (value or b"").decode("utf-8", "replace") for key, value in message.headers() or []}
    row: dict[str, Any] = {"partition": message.partition(), "offset": message.offset()}
    decoded = decoder.decode(message.value()) if message.value() else None
    if isinstance(decoded, dict):
        for key, value in decoded.items():
            row[key] = _short(value)
    else:  # not Avro we can read (a dead letter keeps the original bytes): show why it is here
        row["key"] = (message.key() or b"").decode("utf-8", "replace")
        row.update({k: v for k, v in headers.items() if k.startswith("scorer.")})
    return row


def _short(value: Any) -> Any:
    """Maps (class probabilities) as compact text; everything else as it is."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
    return value


def write_table(frame: pd.DataFrame, path: Path) -> None:
    if path.suffix.lower() == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix.lower() in {".parquet", ".pq"}:
        frame.to_parquet(path, index=False)
    else:
        raise ConfigError("--out", f"{path}: use a .csv or .parquet file name")
