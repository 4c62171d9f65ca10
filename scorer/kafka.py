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
from dataclasses import dataclass
from typing import Any, NamedTuple

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from scorer.config import KafkaSettings
from scorer.errors import ConfigError, KafkaClientError

__all__ = [
    "BatchDelivery",
    "FailedOutput",
    "OutputRecord",
    "commit_offsets",
    "consume_available",
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
    # librdkafka prefetches up to 64 MB per consumer by default; 16 MB is still about 65,000 records of
    # 250 bytes (a dozen default batches) and keeps peak RSS down by about 15 MB on a backlog (bench/)
    "queued.max.messages.kbytes": "16384",
    "statistics.interval.ms": "5000",
}
PRODUCER_DEFAULTS = {
    "enable.idempotence": "true",
    "acks": "all",
    "linger.ms": "5",
    "statistics.interval.ms": "0",
}


_CONSUMER_ONLY = (
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "fetch.",
    "isolation.level",
    "auto.offset.reset",
    "group.",
    "partition.assignment.strategy",
    "enable.auto.",
    "auto.commit.",
    "queued.",
)
_PRODUCER_ONLY = (
    "acks",
    "linger.ms",
    "batch.",
    "compression.",
    "enable.idempotence",
    "transactional.",
    "transaction.",
    "delivery.timeout.ms",
    "message.timeout.ms",
    "queue.buffering.",
    "retries",
)
"""One set of pass-through settings serves both clients; each gets only what it understands, so that
librdkafka does not log a configuration warning for the other's settings at every start."""


def _for(role: str, config: dict[str, str]) -> dict[str, str]:
    """The settings a ``consumer``, ``producer`` or ``admin`` client understands (admin: neither's own)."""
    other = {"consumer": _PRODUCER_ONLY, "producer": _CONSUMER_ONLY}.get(role, _CONSUMER_ONLY + _PRODUCER_ONLY)
    return {k: v for k, v in config.items() if not k.startswith(other)}


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
        **_for("consumer", settings.client_config()),
        "group.id": group_id,
        **callbacks,
    }
    return _build(Consumer, config)


def create_producer(settings: KafkaSettings, **extra: Any) -> Producer:
    config: dict[str, Any] = {**PRODUCER_DEFAULTS, **_for("producer", settings.client_config()), **extra}
    return _build(Producer, config)


def create_admin(settings: KafkaSettings) -> AdminClient:
    return _build(AdminClient, _for("admin", settings.client_config()))


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


class OutputRecord(NamedTuple):
    """One record to produce, with the batch position of the input it answers.

    A named tuple, not a frozen dataclass: one is built per output on the hot path, and a frozen
    dataclass's ``__init__`` costs several times more.
    """

    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]
    source_index: int


@dataclass(frozen=True, slots=True)
class FailedOutput:
    """An output the broker did not acknowledge, with librdkafka's verdict."""

    record: OutputRecord
    code: int
    reason: str
    fatal: bool


class BatchDelivery:
    """The outputs of one input batch while they are in flight.

    One bound callback serves every record of the batch (a closure per record costs more than the
    produce call). librdkafka retries internally until ``delivery.timeout.ms``; a failure reported here
    is final for that attempt. ``produce`` can also refuse a record at once (too large, unknown topic):
    that is reported the same way, so the pipeline has one place to decide between dead letter, retry
    and stop. Failed records are found again by their ``scorer.source.*`` headers.
    """

    def __init__(self, outputs: Sequence[OutputRecord]) -> None:
        self.outputs = list(outputs)
        self.pending = 0
        self.failures: list[FailedOutput] = []
        self._by_source: dict[tuple[str, bytes, bytes], OutputRecord] | None = None

    def produce(self, producer: Producer, records: Sequence[OutputRecord]) -> None:
        callback = self.on_delivery
        produce = producer.produce
        for n, record in enumerate(records, start=1):
            while True:
                try:
                    produce(record.topic, record.value, record.key, headers=record.headers, on_delivery=callback)
                    self.pending += 1
                    break
                except BufferError:
                    producer.poll(0.05)  # local queue full: let deliveries drain, then retry this record
                except KafkaException as exc:
                    error = exc.args[0]
                    self.failures.append(FailedOutput(record, error.code(), _describe_error(error), error.fatal()))
                    break
            if n % 1000 == 0:
                producer.poll(0)

    def on_delivery(self, error: KafkaError | None, message: Message) -> None:
        self.pending -= 1
        if error is not None:
            self.failures.append(
                FailedOutput(self._record_of(message), error.code(), _describe_error(error), error.fatal())
            )

    def take_failures(self) -> list[FailedOutput]:
        failures, self.failures = self.failures, []
        return failures

    def _record_of(self, message: Message) -> OutputRecord:
        if self._by_source is None:
            self._by_source = {_source_key(r.topic, r.headers): r for r in self.outputs}
        return self._by_source[_source_key(str(message.topic()), message.headers() or [])]

    def add(self, records: Sequence[OutputRecord]) -> None:
        """Outputs added after the first produce (dead letters for refused predictions)."""
        self.outputs += records
        self._by_source = None


def _source_key(topic: str, headers: Sequence[tuple[str, bytes | None]]) -> tuple[str, bytes, bytes]:
    found = dict(headers)
    return topic, found.get("scorer.source.partition") or b"", found.get("scorer.source.offset") or b""


def _describe_error(error: KafkaError) -> str:
    return f"{error.name()}: {error.str()}"


def consume_available(consumer: Consumer, wanted: int, timeout: float) -> list[Message]:
    """Up to ``wanted`` messages: those the client has already fetched, else the first to arrive within
    ``timeout``, with whatever came in beside it.

    Written by hand because confluent-kafka's ``consume(n, timeout)`` returns early only once it holds ``n``
    messages: a batch that is not yet full would wait out the whole timeout before its records are even
    seen. ``poll(timeout)`` returns at the first message, and ``consume(n, 0)`` takes what is buffered
    without waiting.
    """
    if wanted <= 0:
        return []
    messages = consumer.consume(num_messages=wanted, timeout=0)
    if messages or timeout <= 0:
        return messages
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(num_messages=wanted - 1, timeout=0)] if wanted > 1 else [first]


def commit_offsets(consumer: Consumer, offsets: dict[tuple[str, int], int], asynchronous: bool = False) -> None:
    """Commit ``offsets`` (next offset to read per topic-partition); synchronously unless told otherwise."""
    if not offsets:
        return
    partitions = [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]
    try:
        consumer.commit(offsets=partitions, asynchronous=asynchronous)
    except KafkaException as exc:
        error = exc.args[0]
        raise KafkaClientError(
            f"commit failed: {error.str()}", fatal=error.fatal(), retriable=error.retriable()
        ) from exc
