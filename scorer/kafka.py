"""Kafka adapter: builds clients from settings, tracks deliveries, and translates client errors once.

The defaults here are scorer's delivery contract, so they live in one place:

- consumer: no auto-commit and no auto offset store (offsets are committed by the pipeline only after
  the outputs of a batch are acknowledged), ``cooperative-sticky`` assignment (a rebalance moves only the
  partitions that must move), ``fetch.wait.max.ms=10`` for latency (see docs: a broker that does not
  answer a waiting fetch early, like the dev broker, would otherwise add up to 500 ms per batch);
- producer: idempotent (no duplicates or reordering from retries, so order per key holds), ``acks=all``.

User pass-through settings (``--kafka-config``) override these defaults.

May import: errors, config. Third-party: confluent_kafka.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from scorer.config import KafkaSettings, redact
from scorer.errors import ConfigError, DeliveryError, KafkaClientError

__all__ = [
    "DeliveryTracker",
    "OutputRecord",
    "commit_offsets",
    "create_admin",
    "create_consumer",
    "create_producer",
    "ensure_topics",
]

CONSUMER_DEFAULTS = {
    "enable.auto.commit": "false",
    "enable.auto.offset.store": "false",
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
    "fetch.wait.max.ms": "10",
    "statistics.interval.ms": "5000",
}
PRODUCER_DEFAULTS = {
    "enable.idempotence": "true",
    "acks": "all",
    "linger.ms": "5",
    "statistics.interval.ms": "0",
}


def _build(kind: type, config: dict[str, Any]) -> Any:
    try:
        return kind(config)
    except (KafkaException, ValueError, TypeError) as exc:
        raise ConfigError("--kafka-config", f"librdkafka refused the {kind.__name__.lower()} settings: {exc}") from exc


def create_consumer(
    settings: KafkaSettings, group_id: str, overrides: dict[str, str] | None = None, **callbacks: Callable[..., Any]
) -> Consumer:
    """A group consumer with scorer's defaults, then ``overrides`` (a service's own), then the user's settings.

    ``callbacks`` are librdkafka callbacks (``stats_cb``, ``error_cb``...).
    """
    config: dict[str, Any] = {
        **CONSUMER_DEFAULTS,
        **(overrides or {}),
        **settings.client_config(),
        "group.id": group_id,
        **callbacks,
    }
    return _build(Consumer, config)


def create_producer(settings: KafkaSettings, **extra: Any) -> Producer:
    config: dict[str, Any] = {**PRODUCER_DEFAULTS, **settings.client_config(), **extra}
    return _build(Producer, config)


def create_admin(settings: KafkaSettings) -> AdminClient:
    config = {
        k: v for k, v in settings.client_config().items() if not k.startswith(("fetch.", "session.", "heartbeat."))
    }
    return _build(AdminClient, config)


def ensure_topics(admin: AdminClient, topics: Iterable[str], create: bool, partitions: int, setting: str) -> None:
    """Check that ``topics`` exist; create the missing ones when ``create``, else fail naming ``setting``."""
    try:
        existing = set(admin.list_topics(timeout=15).topics)
    except KafkaException as exc:
        raise KafkaClientError(f"cannot list topics (is the broker reachable?): {exc}", retriable=True) from exc
    missing = [t for t in topics if t not in existing]
    if not missing:
        return
    if not create:
        raise ConfigError(setting, f"topics {missing} do not exist: create them, or pass --create-topics")
    futures = admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=-1) for t in missing])
    for topic, future in futures.items():
        try:
            future.result(timeout=15)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise KafkaClientError(f"cannot create topic {topic}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """One record to produce, with the batch position of the input it answers."""

    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]
    source_index: int


@dataclass
class DeliveryTracker:
    """Produces a batch of outputs and reports which were not acknowledged.

    librdkafka retries internally until ``delivery.timeout.ms``; a failure reported here is final for
    that record. ``produce`` itself can refuse a record at once (too large, unknown topic): that is
    reported the same way, so the pipeline has one place to decide between dead letter and stop.
    """

    producer: Producer
    failures: list[tuple[OutputRecord, int, str, bool]] = field(default_factory=list)
    pending: int = 0

    def produce(self, records: Sequence[OutputRecord], poll_every: int = 1000) -> None:
        for n, record in enumerate(records, start=1):
            self._produce_one(record)
            if n % poll_every == 0:
                self.producer.poll(0)

    def _produce_one(self, record: OutputRecord) -> None:
        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            self.pending -= 1
            if error is not None:
                self.failures.append((record, error.code(), f"{error.name()}: {error.str()}", error.fatal()))

        while True:
            try:
                self.producer.produce(
                    record.topic, value=record.value, key=record.key, headers=record.headers, on_delivery=on_delivery
                )
                self.pending += 1
                return
            except BufferError:
                self.producer.poll(0.1)  # local queue full: let deliveries drain, then retry this record
            except KafkaException as exc:
                error = exc.args[0]
                self.failures.append((record, error.code(), f"{error.name()}: {error.str()}", error.fatal()))
                return

    def wait(self, timeout_s: float) -> None:
        """Wait until every produced record is acknowledged or failed.

        Raises:
            DeliveryError: records still unacknowledged after ``timeout_s`` (the broker is unreachable).
        """
        remaining = self.producer.flush(timeout_s)
        if remaining:
            raise DeliveryError(f"{remaining} output records not acknowledged within {timeout_s:.0f} s", retriable=True)

    def take_failures(self) -> list[tuple[OutputRecord, int, str, bool]]:
        failures, self.failures = self.failures, []
        return failures


def commit_offsets(consumer: Consumer, offsets: dict[tuple[str, int], int]) -> None:
    """Synchronously commit ``offsets`` (next offset to read per topic-partition)."""
    if not offsets:
        return
    partitions = [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]
    try:
        consumer.commit(offsets=partitions, asynchronous=False)
    except KafkaException as exc:
        error = exc.args[0]
        raise KafkaClientError(
            f"commit failed: {error.str()}", fatal=error.fatal(), retriable=error.retriable()
        ) from exc


def describe(config: dict[str, Any]) -> dict[str, Any]:
    """Settings for logs, with secrets redacted."""
    return redact({k: v for k, v in config.items() if not callable(v)})
