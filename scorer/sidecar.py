"""The evaluation sidecar: joins predictions with late labels and keeps rolling Evaluate Model metrics.

It reads two topics with one consumer: the scorer's predictions and the ground-truth labels. Both are
keyed by record id, so with equal partition counts and the ``range`` assignor a prediction and its
label land on the same replica. Each pair goes into a ``LabelJoiner`` (bounded, deduplicating) and the
joined rows into one ``Evaluator`` per model name and version, whose windows Prometheus reads at scrape
time.

Restarts never double-count because the sidecar keeps no offsets: on every assignment it seeks back
``rebuild_span_s`` (by record timestamp) and rebuilds windows and pending joins from the topics. The
joiner's clock is the largest record timestamp seen, not the wall clock, so a replay expires by the same
rule as the live run (the README's "Restarts" says where the rebuilt state can still differ). What a
rebuild cannot recover is anything older than the span.

May import: L0-L2 modules (through adapters for Kafka, the registry and Prometheus).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from prometheus_client import REGISTRY, CollectorRegistry

from scorer.codec import RecordDecoder
from scorer.config import EvaluateSettings
from scorer.errors import RegistryUnavailable
from scorer.evaluation import BinaryMetrics, Evaluator, RegressionMetrics
from scorer.join import JoinedRow, LabelJoiner, PredictionFacts
from scorer.kafka import create_consumer
from scorer.metrics import SCORE_BOUNDS, EvaluationCollector, EvaluationView, WindowView, serve_metrics
from scorer.registry import Registry, retry_unavailable
from scorer.runtime import settle_heap

__all__ = ["EvaluationSidecar"]

log = logging.getLogger("scorer.evaluate")

SIDECAR_CONSUMER = {"partition.assignment.strategy": "range", "enable.auto.commit": "false"}
"""``range`` puts partition i of both topics on the same member: co-partitioned joins."""


class EvaluationSidecar:
    """``scorer evaluate``. ``start()`` connects; ``run()`` loops until ``request_stop()``."""

    def __init__(self, settings: EvaluateSettings, registry: CollectorRegistry = REGISTRY) -> None:
        self.settings = settings
        self._prometheus_registry = registry
        self._lock = threading.Lock()
        self._stopping = False
        self._reset_state()

    def _reset_state(self) -> None:
        s = self.settings
        self.joiner = LabelJoiner(
            ttl_ms=int(s.label_ttl_s * 1000), max_pending=s.max_pending, max_remembered=s.max_remembered_ids
        )
        self.evaluators: dict[tuple[str, str], Evaluator] = {}
        self.invalid: dict[tuple[str, str], int] = {}
        self._clock_ms = 0

    def start(self) -> None:
        s = self.settings
        self.registry = Registry(s.registry_config())
        self.decoder = RecordDecoder(self.registry.schema_text, plain_types=True)
        self._metrics_server = serve_metrics(s.metrics_port, s.metrics_host, self._prometheus_registry)
        self._prometheus_registry.register(EvaluationCollector(self.view))
        self.consumer: Consumer = create_consumer(s, s.group_id, overrides=SIDECAR_CONSUMER)
        self.consumer.subscribe(
            [s.predictions_topic, s.labels_topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        settle_heap()  # start-up objects out of the collector's way (scorer.runtime)
        log.info(
            "evaluating %s against %s; windows %s + last %d",
            s.predictions_topic,
            s.labels_topic,
            s.time_windows,
            s.count_window,
        )

    def request_stop(self, *_args: Any) -> None:
        self._stopping = True

    def run(self) -> None:
        try:
            while not self._stopping:
                messages = self.consumer.consume(num_messages=1000, timeout=0.5)
                if messages:
                    with self._lock:
                        for message in messages:
                            self._handle(message)
        finally:
            self.consumer.close()
            self.registry.close()
            if self._metrics_server is not None:
                self._metrics_server.shutdown()

    # ------------------------------------------------------------------ records
    def _handle(self, message: Message) -> None:
        if message.error() is not None:
            log.warning("consumer error: %s", message.error().str())
            return
        _kind, timestamp = message.timestamp()
        if timestamp < self._replay_from_ms:
            return  # older than the rebuild span: a broker that cannot seek by time hands it to us anyway
        self._clock_ms = max(self._clock_ms, timestamp)
        topic = message.topic()
        try:
            decoded = self.decoder.decode(message.value())
        except RegistryUnavailable:  # a new schema id while the registry is down: wait for it, with backoff
            decoded = retry_unavailable(
                lambda: self.decoder.decode(message.value()),
                lambda: self._stopping,
                lambda exc, _b: log.warning("%s", exc),
            )
        if isinstance(decoded, tuple):
            self._count_invalid(topic, decoded[0].value)
            return
        self.ingest(topic, decoded)

    def ingest(self, topic: str, record: dict[str, Any], timestamp_ms: int | None = None) -> None:
        """One decoded record of either topic: join it, evaluate what it completes, expire what is too old.

        ``_handle`` calls it for every record it decoded (the clock already holds the record's timestamp);
        tests call it with a ``timestamp_ms`` to drive the sidecar without Kafka.
        """
        if timestamp_ms is not None:
            self._clock_ms = max(self._clock_ms, timestamp_ms)
        joined = self._prediction(record) if topic == self.settings.predictions_topic else self._label(record)
        if joined is not None:
            self._evaluate(joined)
        self.joiner.expire(self._clock_ms)

    def _prediction(self, record: dict[str, Any]) -> JoinedRow | None:
        try:
            facts = PredictionFacts(
                id=str(record["id"]),
                model_name=str(record["model_name"]),
                model_version=str(record["model_version"]),
                scored_label=record["scored_label"],
                scored_probability=record.get("scored_probability"),
                scored_probabilities=record.get("scored_probabilities"),
            )
        except KeyError as exc:
            self._count_invalid(self.settings.predictions_topic, f"missing_field_{exc.args[0]}")
            return None
        return self.joiner.add_prediction(facts, self._clock_ms)

    def _label(self, record: dict[str, Any]) -> JoinedRow | None:
        if "id" not in record or "label" not in record:
            self._count_invalid(self.settings.labels_topic, "missing_field")
            return None
        event_time = record.get("event_time")
        event_ms = _millis(event_time) if event_time is not None else self._clock_ms
        return self.joiner.add_label(str(record["id"]), record["label"], event_ms, self._clock_ms)

    def _evaluate(self, row: JoinedRow) -> None:
        key = (row.prediction.model_name, row.prediction.model_version)
        evaluator = self.evaluators.get(key)
        if evaluator is None:
            evaluator = self.evaluators[key] = self._new_evaluator(row.prediction)
        if not evaluator.add(row):
            self._count_invalid(self.settings.labels_topic, "not_evaluable")

    def _new_evaluator(self, prediction: PredictionFacts) -> Evaluator:
        """Task and classes come from the first prediction of a model version (its probability map)."""
        s = self.settings
        windows = {"count_window": s.count_window, "time_windows_s": s.time_window_seconds}
        probabilities = prediction.scored_probabilities
        if probabilities is None:
            return Evaluator("regression", **windows)
        classes = list(probabilities)
        if len(classes) == 2:
            positive = s.positive_class or classes[-1]
            return Evaluator("binary", classes, positive, s.threshold, **windows)
        return Evaluator("multiclass", classes, **windows)

    def _count_invalid(self, topic: str, reason: str) -> None:
        self.invalid[(topic, reason)] = self.invalid.get((topic, reason), 0) + 1

    # ------------------------------------------------------------------ scrape
    def view(self) -> EvaluationView:
        """What Prometheus sees: computed under the lock, at scrape time."""
        with self._lock:
            windows = []
            late: dict[tuple[str, str, str], int] = {}
            for (name, version), evaluator in self.evaluators.items():
                windows += window_views(name, version, evaluator)
                for window, count in evaluator.late_rows.items():
                    late[(name, version, window)] = count
            counts = self.joiner.counts
            return EvaluationView(
                windows, {k: getattr(counts, k) for k in counts.__dataclass_fields__}, dict(self.invalid), late
            )

    # ------------------------------------------------------------------ rebuild
    _replay_from_ms = 0

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Seek every partition back ``rebuild_span_s`` and start the windows from nothing."""
        with self._lock:
            self._reset_state()
            self._replay_from_ms = int(time.time() * 1000 - self.settings.rebuild_span_s * 1000)
        consumer.assign(start_offsets(consumer, partitions, self._replay_from_ms))
        log.info("assigned %d partitions; rebuilding from %s", len(partitions), _iso(self._replay_from_ms))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.unassign()


def window_views(name: str, version: str, evaluator: Evaluator) -> list[WindowView]:
    """What Prometheus is shown of one model version: each window's metrics and its additive series."""
    snapshot = evaluator.snapshot()
    views = []
    for window in evaluator.window_names:
        metric = evaluator.metric(window)
        views.append(
            WindowView(
                name,
                version,
                window,
                snapshot[window],
                confusion=None if evaluator.task == "regression" else evaluator.confusion_cells(window),
                sums=metric.sums() if isinstance(metric, RegressionMetrics) else None,
                score_buckets=metric.score_buckets(SCORE_BOUNDS) if isinstance(metric, BinaryMetrics) else None,
            )
        )
    return views


SEEK_BUDGET_S = 15.0
"""How long the lookups of one assignment may take in all (they run inside the rebalance callback)."""


def start_offsets(
    consumer: Consumer, partitions: list[TopicPartition], from_ms: int, budget_s: float = SEEK_BUDGET_S
) -> list[TopicPartition]:
    """Where each assigned partition starts reading: the first record at or after ``from_ms``.

    A partition with no record that recent starts at its end offset, read *before* the time lookup: the
    logical OFFSET_END is resolved at the first fetch, and an end read after the lookup, like it, would skip
    records written in between. Whenever a lookup fails (an error for the partition, a timeout, a broker
    that cannot seek by time) the partition is read from the beginning instead: the timestamp filter in
    ``_handle`` drops what is older than the span, so that costs time, never records.
    """
    deadline = time.monotonic() + budget_s
    ends: dict[tuple[str, int], int] = {}
    for tp in partitions:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            _low, high = consumer.get_watermark_offsets(tp, timeout=remaining, cached=False)
        except Exception as exc:  # noqa: BLE001 - any failure: this partition is read from the beginning
            log.warning("cannot read the end of %s [%d] (%s)", tp.topic, tp.partition, exc)
            continue
        ends[(tp.topic, tp.partition)] = int(high)
    wanted = [TopicPartition(tp.topic, tp.partition, from_ms) for tp in partitions]
    try:
        found = consumer.offsets_for_times(wanted, timeout=max(0.1, deadline - time.monotonic()))
    except Exception as exc:  # noqa: BLE001 - fall back to reading from the start, filtered by timestamp
        log.warning("cannot seek by time (%s): reading from the beginning", exc)
        return [TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in partitions]
    starts = []
    for tp in found:
        offset = tp.offset
        if tp.error is not None:
            log.warning(
                "cannot seek %s [%d] by time (%s): reading from the beginning", tp.topic, tp.partition, tp.error
            )
            offset = OFFSET_BEGINNING
        elif offset < 0:  # nothing at or after from_ms
            offset = ends.get((tp.topic, tp.partition), OFFSET_BEGINNING)
        starts.append(TopicPartition(tp.topic, tp.partition, offset))
    return starts


def _millis(value: Any) -> int:
    """Epoch milliseconds (the decoder reads timestamp-millis as its long); a datetime is converted."""
    if isinstance(value, dt.datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")
