"""The evaluation sidecar: joins predictions with late labels and keeps rolling Evaluate Model metrics.

It reads two topics with one consumer: the scorer's predictions and the ground-truth labels. Both are
keyed by record id, so with equal partition counts and the ``range`` assignor a prediction and its
label land on the same replica. Each pair goes into a ``LabelJoiner`` (bounded, deduplicating) and the
joined rows into one ``Evaluator`` per model name and version, whose windows Prometheus reads at scrape
time.

Every consumed batch is handled as columns, because the sidecar has to keep up with the scorer it sits
beside and per-record Python (a decoded dict, a facts object, a call into the joiner and the evaluator per
record) made it twice as slow as the scorer (``docs/sidecar-performance.md``). The batch is split by
topic; each side is decoded into a polars frame (``RecordDecoder.decode_frames``: one columnar read per
writer schema); from a prediction frame only what evaluation reads is kept (``Evaluator.score_of``, for
binary models the probability of the positive class, picked out of the map by polars); each side goes to
the joiner in one call, predictions first; what joined goes to the evaluators in one call per model. A
batch happens at one instant, its latest record timestamp.

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

import polars as pl
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from prometheus_client import REGISTRY, CollectorRegistry

from scorer.codec import RecordDecoder
from scorer.config import EvaluateSettings
from scorer.errors import RegistryUnavailable
from scorer.evaluation import BinaryMetrics, Evaluator, RegressionMetrics
from scorer.join import Joined, LabelJoiner
from scorer.kafka import create_consumer
from scorer.metrics import SCORE_BOUNDS, EvaluationCollector, EvaluationView, WindowView, serve_metrics
from scorer.registry import Registry, retry_unavailable
from scorer.runtime import settle_heap

__all__ = ["EvaluationSidecar"]

log = logging.getLogger("scorer.evaluate")

CONSUME_BATCH = 5000
"""Most records handled as one batch: polars' fixed cost per frame (about 0.2 ms a call) is then spread
over thousands of rows; a quiet stream still gives small batches at once (``consume`` returns what it has)."""

SIDECAR_CONSUMER = {
    "partition.assignment.strategy": "range",
    "enable.auto.commit": "false",
    "max.partition.fetch.bytes": str(8 << 20),
}
"""``range`` puts partition i of both topics on the same member: co-partitioned joins. Fetches of up to
8 MB a partition (librdkafka's default is 1 MB): the sidecar reads two records per row, and with 1 MB
fetches it waited on the dev broker for a third of its time (64-79k rows/s at 70% of a core; 83k with
8 MB, measured by ``bench.sidecar``). A rebuild after a restart re-reads a span of both topics, too.
Prefetch stays bounded by ``queued.max.messages.kbytes`` (``scorer.kafka``)."""


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
                messages = self.consumer.consume(num_messages=CONSUME_BATCH, timeout=0.5)
                if messages:
                    with self._lock:
                        self._handle(messages)
        finally:
            self.consumer.close()
            self.registry.close()
            if self._metrics_server is not None:
                self._metrics_server.shutdown()

    # ------------------------------------------------------------------ records
    def _handle(self, messages: list[Message]) -> None:
        """One consumed batch: split by topic, decode each side into columns, join, evaluate, expire."""
        predictions_topic = self.settings.predictions_topic
        # One pass per accessor (list comprehensions) costs less than one loop with a branch per record.
        if any([message.error() is not None for message in messages]):
            for message in messages:
                if message.error() is not None:
                    log.warning("consumer error: %s", message.error().str())
            messages = [message for message in messages if message.error() is None]
            if not messages:
                return
        timestamps = [message.timestamp()[1] for message in messages]
        if min(timestamps) < self._replay_from_ms:  # a broker that cannot seek by time hands us older records
            kept = [i for i, timestamp in enumerate(timestamps) if timestamp >= self._replay_from_ms]
            messages, timestamps = [messages[i] for i in kept], [timestamps[i] for i in kept]
            if not messages:
                return
        self._clock_ms = max(self._clock_ms, max(timestamps))
        topics = [message.topic() for message in messages]
        values = [message.value() for message in messages]
        predictions = [value for topic, value in zip(topics, values, strict=True) if topic == predictions_topic]
        labels = [value for topic, value in zip(topics, values, strict=True) if topic != predictions_topic]
        if predictions:
            for frame in self._decode(predictions, predictions_topic):
                self._take_predictions(frame)
        if labels:
            for frame in self._decode(labels, self.settings.labels_topic):
                self._take_labels(frame)
        self.joiner.expire(self._clock_ms)

    def _decode(self, values: list[bytes | None], topic: str) -> list[pl.DataFrame]:
        try:
            decoded, rejections = self.decoder.decode_frames(values)
        except RegistryUnavailable:  # a new schema id while the registry is down: wait for it, with backoff
            decoded, rejections = retry_unavailable(
                lambda: self.decoder.decode_frames(values),
                lambda: self._stopping,
                lambda exc, _b: log.warning("%s", exc),
            )
        for rejection in rejections:
            self._count_invalid(topic, rejection.reason.value)
        return [part.frame for part in decoded]  # in batch order: the first label for an id wins

    def ingest(self, topic: str, record: dict[str, Any], timestamp_ms: int | None = None) -> None:
        """One decoded record of either topic (a dict as fastavro reads it): join it, evaluate, expire.

        For tests and tools that drive the sidecar without Kafka; the consumer loop hands over whole
        decoded batches instead.
        """
        if timestamp_ms is not None:
            self._clock_ms = max(self._clock_ms, timestamp_ms)
        frame = _frame_of(record)
        if topic == self.settings.predictions_topic:
            self._take_predictions(frame)
        else:
            self._take_labels(frame)
        self.joiner.expire(self._clock_ms)

    def _take_predictions(self, frame: pl.DataFrame) -> None:
        """Keep of each prediction its evaluator and score; join those whose labels wait; evaluate them."""
        missing = next((f for f in PREDICTION_FIELDS if f not in frame.columns), None)
        if missing is not None:
            self._count_invalid(self.settings.predictions_topic, f"missing_field_{missing}", frame.height)
            return
        required = {name: f"missing_field_{name}" for name in ("id", "model_name", "model_version")}
        frame = self._without_nulls(frame, required, self.settings.predictions_topic)
        probability = pl.col("scored_probability") if "scored_probability" in frame.columns else pl.lit(None)
        frame = frame.with_columns(
            pl.col("id", "model_name", "model_version").cast(pl.String),
            probability.cast(pl.Float64, strict=False).alias("scored_probability"),
        )
        probabilities = frame.schema.get("scored_probabilities")
        if not (isinstance(probabilities, pl.List) and isinstance(probabilities.inner, pl.Struct)):
            frame = frame.with_columns(pl.lit(None, MAP_OF_DOUBLES).alias("scored_probabilities"))
        if not frame.height:
            return
        models = frame.select("model_name", "model_version").unique(maintain_order=True).rows()
        if len(models) == 1:
            evaluator = self._evaluator_for(models[0], frame)
            payloads = [(evaluator, score) for score in _scores(frame, evaluator)]
        else:  # a rollout: several model versions in one batch; payloads stay in arrival order
            payloads = [None] * frame.height  # type: ignore[list-item]
            for model in models:
                rows = frame.with_row_index("row").filter(
                    (pl.col("model_name") == model[0]) & (pl.col("model_version") == model[1])
                )
                evaluator = self._evaluator_for(model, rows)
                for row, score in zip(rows.get_column("row").to_list(), _scores(rows, evaluator), strict=True):
                    payloads[row] = (evaluator, score)
        ids = frame.get_column("id").to_list()
        self._evaluate(self.joiner.add_predictions(ids, payloads, self._clock_ms))

    def _take_labels(self, frame: pl.DataFrame) -> None:
        if "id" not in frame.columns or "label" not in frame.columns:
            self._count_invalid(self.settings.labels_topic, "missing_field", frame.height)
            return
        frame = self._without_nulls(frame, {"id": "missing_field"}, self.settings.labels_topic)
        ids = frame.get_column("id").cast(pl.String).to_list()
        if "event_time" in frame.columns:
            event_time = frame.get_column("event_time")  # epoch ms: the decoder reads timestamp-millis plainly
            if isinstance(event_time.dtype, pl.Datetime):
                event_time = event_time.dt.epoch("ms")
            times = event_time.cast(pl.Int64, strict=False).fill_null(self._clock_ms).to_list()
        else:
            times = [self._clock_ms] * frame.height
        labels = frame.get_column("label").to_list()
        self._evaluate(self.joiner.add_labels(ids, labels, times, self._clock_ms))

    def _without_nulls(self, frame: pl.DataFrame, reasons: dict[str, str], topic: str) -> pl.DataFrame:
        """``frame`` without the rows that have no value in one of the fields ``reasons`` names, each counted
        as invalid with that field's reason.

        Outside the contract (the schemas make these fields non-null), but a writer schema that made them
        nullable still passes the registry: such rows are counted, never joined under a ``None`` id or model.
        """
        for name, reason in reasons.items():
            missing = frame.get_column(name).null_count()
            if missing:
                self._count_invalid(topic, reason, missing)
                frame = frame.filter(pl.col(name).is_not_null())
        return frame

    def _evaluate(self, joined: Joined[tuple[Evaluator, object]]) -> None:
        """Hand the joined rows to their models' evaluators, one call per model."""
        if not joined:
            return
        by_evaluator: dict[Evaluator, tuple[list[object], list[object], list[int]]] = {}
        # The usual case: one model, so every payload holds its evaluator. (A payload's evaluator is always in
        # self.evaluators: both are created by _take_predictions and reset together with the joiner.)
        if len(self.evaluators) == 1:
            evaluator = next(iter(self.evaluators.values()))
            by_evaluator[evaluator] = (joined.labels, [score for _, score in joined.payloads], joined.event_times_ms)
            self._add_rows(by_evaluator)
            return
        for (evaluator, score), label, event_time_ms in zip(
            joined.payloads, joined.labels, joined.event_times_ms, strict=True
        ):
            columns = by_evaluator.get(evaluator)
            if columns is None:
                columns = by_evaluator[evaluator] = ([], [], [])
            columns[0].append(label)
            columns[1].append(score)
            columns[2].append(event_time_ms)
        self._add_rows(by_evaluator)

    def _add_rows(self, by_evaluator: dict[Evaluator, tuple[list[object], list[object], list[int]]]) -> None:
        for evaluator, (labels, scores, times) in by_evaluator.items():
            not_evaluable = len(labels) - evaluator.add_scored(labels, scores, times)
            if not_evaluable:
                self._count_invalid(self.settings.labels_topic, "not_evaluable", not_evaluable)

    def _evaluator_for(self, model: tuple[str, str], frame: pl.DataFrame) -> Evaluator:
        """The evaluator of a model version; a new one takes task and classes from the first row's map."""
        evaluator = self.evaluators.get(model)
        if evaluator is None:
            first = frame.get_column("scored_probabilities")[0]
            classes = None if first is None else [entry["key"] for entry in first]
            evaluator = self.evaluators[model] = self._new_evaluator(classes)
        return evaluator

    def _new_evaluator(self, classes: list[str] | None) -> Evaluator:
        """Task and classes come from the first prediction of a model version (its probability map)."""
        s = self.settings
        windows = {"count_window": s.count_window, "time_windows_s": s.time_window_seconds}
        if classes is None:
            return Evaluator("regression", **windows)
        if len(classes) == 2:
            positive = s.positive_class or classes[-1]
            return Evaluator("binary", classes, positive, s.threshold, **windows)
        return Evaluator("multiclass", classes, **windows)

    def _count_invalid(self, topic: str, reason: str, records: int = 1) -> None:
        self.invalid[(topic, reason)] = self.invalid.get((topic, reason), 0) + records

    # ------------------------------------------------------------------ scrape
    def view(self) -> EvaluationView:
        """What Prometheus sees: computed under the lock, at scrape time."""
        with self._lock:
            windows = []
            late: dict[tuple[str, str, str], int] = {}
            for (name, version), evaluator in self.evaluators.items():
                if not evaluator.rows_seen:
                    continue  # created by a prediction, but nothing has joined yet: nothing to show
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


PREDICTION_FIELDS = ("id", "scored_label", "model_name", "model_version")
"""What the sidecar cannot do without; ``scored_probability`` and ``scored_probabilities`` may be absent."""

MAP_OF_DOUBLES = pl.List(pl.Struct({"key": pl.String, "value": pl.Float64}))
"""How a decoded frame holds an Avro map of doubles (``scorer.avroblock``)."""


def _scores(frame: pl.DataFrame, evaluator: Evaluator) -> list[Any]:
    """``Evaluator.score_of`` for every row of a prediction frame, computed by polars.

    Binary: the map's value for the positive class (the last entry with that key, as a dict built from the
    map keeps it), else ``scored_probability``; null when neither has one. Otherwise the scored label.
    """
    if evaluator.task != "binary":
        return frame.get_column("scored_label").to_list()
    entry = pl.element()
    from_map = (
        pl.col("scored_probabilities")
        .list.eval(entry.filter(entry.struct.field("key") == evaluator.positive_class).struct.field("value"))
        .list.last()
        .cast(pl.Float64, strict=False)
    )
    return frame.select(from_map.fill_null(pl.col("scored_probability"))).to_series().to_list()


def _frame_of(record: dict[str, Any]) -> pl.DataFrame:
    """A one-row frame shaped as ``RecordDecoder.decode_frames`` gives: a map as key/value structs."""
    columns = {}
    for name, value in record.items():
        if isinstance(value, dict):
            entries = [[{"key": str(k), "value": v} for k, v in value.items()]]
            columns[name] = pl.Series(name, entries, dtype=MAP_OF_DOUBLES, strict=False)
        else:
            columns[name] = pl.Series(name, [value], strict=False)
    return pl.DataFrame(columns)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")
