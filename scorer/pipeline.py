"""The scoring service: Kafka in, predictions and dead letters out, offsets committed only after delivery.

One loop on the main thread, the model on a worker thread::

    main:    poll until batch k is due -> decode k (codec) -> hand k to the worker
             -> encode + produce k-1 (its scores are ready) -> poll for batch k+1 ...
    worker:  validate + score k (scoring) while the main thread works on k+1 and k-1
    later:   batch acknowledged? commit input offsets (strictly in order)

Batches are produced in input order, one at a time: batch k is encoded and produced only after
batch k-1 was. The model releases the GIL in its numeric kernels, so scoring one batch while decoding
the next and producing the previous uses both cores of a small machine.

Delivery contract (at-least-once): an input offset is committed only when every output derived from the
records before it (prediction or dead letter) has been acknowledged. Up to ``MAX_IN_FLIGHT`` batches may
wait for acknowledgements while the next ones are scored, so broker round trips overlap with compute;
they are committed strictly in order. A crash between produce and commit replays those batches
(duplicates, never loss). Per-key order holds because outputs are produced in input order by an
idempotent producer.

Rebalance: when partitions are revoked mid-batch, the batch collected so far is finished and committed
before the partitions go. SIGTERM/SIGINT: stop polling, finish the batch, commit, leave the group.

May import: every L0-L2 module. The core modules below it never see Kafka.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import REGISTRY, CollectorRegistry

from scorer.batching import BatchWindow, next_offsets
from scorer.bundle import ModelBundle, load_bundle
from scorer.codec import DecodedBatch, FeatureDecoder, PredictionEncoder
from scorer.config import RunSettings
from scorer.deadletter import dead_letter_headers
from scorer.errors import (
    ConfigError,
    DeliveryError,
    KafkaClientError,
    RegistryError,
    RegistryUnavailable,
    RejectReason,
    SchemaError,
)
from scorer.kafka import (
    BatchDelivery,
    FailedOutput,
    OutputRecord,
    commit_offsets,
    consume_available,
    create_admin,
    create_consumer,
    create_producer,
    ensure_topics,
)
from scorer.metrics import ScorerMetrics, serve_metrics
from scorer.registry import Registry, retry_unavailable
from scorer.runtime import settle_heap
from scorer.schema import check_readable, prediction_schema
from scorer.scoring import Scorer, ScoreResult, limit_model_threads
from scorer.types import Rejection, SourceRef

__all__ = ["ScoringPipeline", "run_pipeline"]

log = logging.getLogger("scorer.pipeline")

PERMANENT_PRODUCE_ERRORS = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_MSG}
)
"""Delivery errors that retrying cannot fix: the output is dead-lettered instead. Timeouts and broker
outages are not here: those outputs are produced again, never dead-lettered."""

PROGRESS_EVERY_S = 10.0
IN_FLIGHT_POLL_S = 0.005
SCORING_POLL_S = 0.002
"""While the worker scores a batch, polls are this short, so that its outputs leave soon after it is done."""
MAX_DEAD_LETTER_VALUE = 900_000
"""Dead letters carry the input value up to this size, under librdkafka's default message.max.bytes."""
UNREACHABLE_AFTER_S = 2.0
"""Acknowledgements missing this long mark the broker unreachable (readiness 0) until they arrive."""
KEEP_ALIVE_AFTER_S = 1.0
"""A batch still scoring after this long pauses the partitions and keeps polling (see ``_await_scores``)."""
MAX_IN_FLIGHT = 4
"""Batches produced but not yet acknowledged before the loop waits: bounds memory and replay after a crash."""
REPLAY_AFTER_CRASH = MAX_IN_FLIGHT + 1
"""Batches a crash can replay: those awaiting acknowledgements plus the one being produced."""
REPLAY_AFTER_LOSS = MAX_IN_FLIGHT + 2
"""Batches a lost assignment (the group expired this replica, e.g. during a broker outage) can replay: as
after a crash, plus the batch the model scored meanwhile, which is still produced (its outputs are
delivered) but no longer committed, as its partitions are not this replica's any more."""


@dataclass
class _Scoring:
    """A batch decoded on the main thread whose scores the worker thread is computing."""

    messages: list[Message]
    refs: list[SourceRef]
    decoded: DecodedBatch
    future: Future[tuple[ScoreResult, float]]
    decode_seconds: float


@dataclass
class _InFlight:
    """A batch whose outputs are produced; its offsets are committed once they are all acknowledged."""

    delivery: BatchDelivery
    offsets: dict[tuple[str, int], int]
    messages: list[Message]
    refs: list[SourceRef]
    rejections: list[Rejection]
    predicted: int
    refused: int = 0
    attempt: int = 0


class ScoringPipeline:
    """The ``scorer run`` service. ``start()`` does the start-up checks; ``run()`` loops until stopped."""

    def __init__(
        self,
        settings: RunSettings,
        registry: CollectorRegistry = REGISTRY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = ScorerMetrics(registry)
        self._prometheus_registry = registry
        self._clock = clock
        self._stopping = False
        self._collected: list[Message] = []
        self._inflight: deque[_InFlight] = deque()
        self._refused: dict[tuple[int, int], str] = {}
        self._source_headers: dict[
            tuple[str, int], tuple[tuple[str, bytes], tuple[str, bytes]]
        ] = {}  # exactly-once: source (partition, offset) -> reason
        self._worker = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="scorer-model",
            initializer=limit_model_threads,
            initargs=(settings.model_threads,),
        )
        self._scoring = False  # waiting for a slow model inside _await_scores (partitions paused)
        self._pending: _Scoring | None = None  # the batch on the worker, produced before the next one
        self._down: set[str] = set()
        self._delivered: dict[tuple[str, int], int] = {}  # highest acknowledged offset + 1 per partition
        self._committed: dict[tuple[str, int], int] = {}  # what the last synchronous commits stored
        self._owned: set[tuple[str, int]] = set()  # the partitions assigned to this replica now
        self._rebalanced = False  # a rebalance callback ran during the current consume call
        self._counts = {"consumed": 0, "scored": 0, "rejected": 0}
        self.bundle: ModelBundle | None = None
        self._metrics_server: Any = None

    # ----------------------------------------------------------------- start-up
    def start(self) -> None:
        """Load the model, check schemas, create clients. Every failure here names what to fix."""
        s = self.settings
        try:
            trusted = [t.strip() for t in s.model_trusted_types.split(",") if t.strip()]
            self.bundle = load_bundle(Path(s.model), expected_sha256=s.model_sha256 or None, trusted_types=trusted)
        except FileNotFoundError as exc:
            raise ConfigError("--model", str(exc)) from exc
        bundle = self.bundle
        log.info("model %s version %s (%s) loaded from %s", bundle.name, bundle.version, bundle.task, s.model)
        self.metrics.model_info.labels(bundle.name, bundle.version, bundle.task).set(1)
        self._metrics_server = serve_metrics(s.metrics_port, s.metrics_host, self._prometheus_registry)

        self.registry = Registry(s.registry_config())
        self._check_input_schema()
        output_schema = prediction_schema(bundle.schema, bundle.schema.label_type, s.include_features)
        output_id = self._with_registry(lambda: self.registry.register(f"{s.output_topic}-value", output_schema))
        log.info("prediction schema registered under %s-value with id %d", s.output_topic, output_id)

        self.decoder = FeatureDecoder(bundle.schema, s.id_field, self.registry.schema_text, s.max_record_bytes)
        self.scorer = Scorer(bundle, s.id_field, s.unknown_categories, s.include_features)
        self.encoder = PredictionEncoder(output_schema, output_id)
        self._model_tag = f"{bundle.name}:{bundle.version}"

        admin = create_admin(s)
        ensure_topics(admin, [s.input_topic], create=False, partitions=1, setting="--input-topic")
        ensure_topics(
            admin, [s.output_topic, s.dead_letter_topic], s.create_topics, s.topic_partitions, "--output-topic"
        )
        self.producer = self._new_producer()
        self.consumer = create_consumer(s, s.group_id, stats_cb=self.metrics.on_stats, error_cb=self._on_client_error)
        self.consumer.subscribe(
            [s.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        settle_heap()  # the libraries and the model are loaded: keep the collector off them (scorer.runtime)
        self.metrics.ready.set(1)

    def _new_producer(self) -> Producer:
        """Idempotent producer; in exactly-once mode also transactional (and its transactions initialised)."""
        s = self.settings
        if s.processing_guarantee == "at-least-once":
            return create_producer(s, error_cb=self._on_client_error)
        transactional_id = s.transactional_id or f"scorer-{s.group_id}-{socket.gethostname()}"
        producer = create_producer(s, error_cb=self._on_client_error, **{"transactional.id": transactional_id})
        try:
            producer.init_transactions(30)
        except KafkaException as exc:
            raise KafkaClientError(
                f"cannot initialise transactions as {transactional_id!r}: {exc}", fatal=True
            ) from exc
        log.info("exactly-once: transactional id %s", transactional_id)
        return producer

    def _check_input_schema(self) -> None:
        s, bundle = self.settings, self.bundle
        assert bundle is not None  # noqa: S101 - start() loads it first
        subject = f"{s.input_topic}-value"
        try:
            latest = self._with_registry(lambda: self.registry.latest(subject))
        except RegistryError as exc:
            if exc.error_code == 40401:
                raise SchemaError(
                    f"no schema is registered under {subject}: producers must register the feature schema "
                    f"(see `scorer schema {s.model}` for the model's training schema)"
                ) from exc
            raise
        differences = check_readable(bundle.schema, latest.schema)
        if differences:
            raise SchemaError(
                f"the latest schema of {subject} (id {latest.schema_id}, version {latest.version}) cannot be read "
                f"as the training schema of {bundle.name} {bundle.version}:\n  " + "\n  ".join(differences),
                fields=differences,
            )
        log.info(
            "input subject %s version %d (id %d) is readable by the model", subject, latest.version, latest.schema_id
        )

    def _with_registry(self, call: Callable[[], Any]) -> Any:
        def on_retry(exc: Exception, backoff: float) -> None:
            if self._pending is not None and not self._scoring:
                self._produce_pending()  # its schemas were cached: its outputs need not wait for the registry
            self.metrics.registry_retries.inc()
            self._mark("registry", down=True)
            log.warning("%s; retrying in %.1f s", exc, backoff)

        sleep = self._keep_alive if getattr(self, "consumer", None) is not None else time.sleep
        result = retry_unavailable(call, lambda: self._stopping, on_retry, sleep=sleep)
        self._mark("registry", down=False)
        return result

    def _mark(self, dependency: str, down: bool) -> None:
        """Readiness: 1 only while neither the broker nor the registry is known to be unreachable."""
        if down:
            self._down.add(dependency)
        else:
            self._down.discard(dependency)
        self.metrics.ready.set(0 if self._down or self._stopping else 1)

    # ----------------------------------------------------------------- the loop
    def request_stop(self, *_args: Any) -> None:
        """Signal handler: finish the current batch, commit, and leave."""
        if not self._stopping:
            log.info("stop requested: finishing the current batch")
        self._stopping = True

    def run(self) -> None:
        window = BatchWindow(self.settings.max_batch_size, self.settings.max_wait_ms / 1000, self._clock)
        last_progress = self._clock()
        try:
            while not self._stopping:
                self._collect(window)
                if window.is_due(len(self._collected)):
                    self._process_collected()
                    window.reset()
                elif self._pending is not None and self._pending.future.done():
                    self._produce_pending()
                elif self._inflight:
                    self._settle(until=MAX_IN_FLIGHT)
                if self._clock() - last_progress >= PROGRESS_EVERY_S:
                    last_progress = self._clock()
                    log.info("progress: %s", ", ".join(f"{k} {v}" for k, v in self._counts.items()))
        finally:
            self._drain()

    def _collect(self, window: BatchWindow) -> None:
        wanted = window.max_records - len(self._collected)
        timeout = window.poll_timeout(len(self._collected))
        if self._pending is not None:  # scores are due: come back soon to produce them
            timeout = min(timeout, SCORING_POLL_S)
        elif self._inflight:  # acknowledgements are due: come back soon to commit them
            timeout = min(timeout, IN_FLIGHT_POLL_S)
        self._rebalanced = False
        messages = self._current(consume_available(self.consumer, wanted, timeout))
        if messages and "broker" in self._down and messages[0].error() is None:
            self._mark("broker", down=False)  # records arrive: the broker is reachable again
        for message in messages:
            error = message.error()
            if error is None:
                self._collected.append(message)
            elif error.fatal():
                raise DeliveryError(f"consumer failed: {error.str()}", fatal=True)
            else:
                log.warning("consumer error: %s", error.str())
        window.opened(len(self._collected))

    def _current(self, messages: list[Message]) -> list[Message]:
        """``messages`` without those of partitions this replica no longer owns.

        A consume call during which a rebalance callback ran can return records fetched before it, of
        partitions just revoked or lost (confluent-kafka-python issue #1013). Scoring them would commit
        their partition past records the revoke or loss dropped, after the new owner started from the
        old commit: those records would be lost. Only such calls are filtered (``_collect`` clears the
        flag before each), as librdkafka discards outdated fetches itself in later calls.
        """
        return self._owned_only(messages) if self._rebalanced else messages

    def _owned_only(self, messages: list[Message]) -> list[Message]:
        owned = self._owned
        return [m for m in messages if m.error() is not None or (m.topic(), m.partition()) in owned]

    def _drain(self) -> None:
        deadline = self._clock() + self.settings.drain_timeout_s
        try:
            self._process_collected()
            self._produce_pending()
            self._settle(until=0, deadline=deadline)
        finally:
            self.metrics.ready.set(0)
            self._worker.shutdown(wait=True)
            self.consumer.close()  # leaves the group at once so partitions move without a session timeout
            self.producer.flush(max(0.0, deadline - self._clock()))
            self.registry.close()
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
            log.info("stopped: %s", ", ".join(f"{k} {v}" for k, v in self._counts.items()))

    # ----------------------------------------------------------------- one batch
    def _process_collected(self) -> None:
        messages, self._collected = self._collected, []
        if not messages:
            return
        try:
            self._process(messages)
        except RegistryUnavailable:
            if not self._stopping:
                raise
            # stopping while the registry is still away: these records are not committed, so the next
            # owner of their partitions scores them; what is in flight is still settled and committed
            log.warning("stopping before the registry came back: %d records left for the next start", len(messages))

    def _process(self, messages: list[Message]) -> None:
        """Decode one batch and hand it to the model; produce the batch the model finished before it.

        At-least-once: a produced batch joins the in-flight queue and the loop goes on polling and scoring
        the next batches while the broker acknowledges it (I/O and compute overlap); ``_settle`` commits
        batches in order once all their outputs are acknowledged. Exactly-once: one transaction per batch,
        decoded, scored and produced before the next one is read (no overlap: a transaction holds one batch).
        """
        scoring = self._submit(messages)
        if self.settings.processing_guarantee == "exactly-once":
            self._transact(self._complete(scoring))
            return
        self._produce_pending()
        self._pending = scoring

    def _produce_pending(self) -> None:
        """Wait for the worker's batch, encode it and produce its outputs (a no-op when there is none)."""
        scoring, self._pending = self._pending, None
        if scoring is None:
            return
        batch = self._complete(scoring)
        started = time.perf_counter()
        batch.delivery.produce(self.producer, batch.delivery.outputs)
        self._inflight.append(batch)
        self.metrics.stage_seconds.labels(stage="produce").observe(time.perf_counter() - started)
        self._settle(until=MAX_IN_FLIGHT)

    def _submit(self, messages: list[Message]) -> _Scoring:
        """Decode on this thread (registry lookups and retries stay here), then score on the worker."""
        started = time.perf_counter()
        refs = [SourceRef(msg.topic(), msg.partition(), msg.offset()) for msg in messages]
        values = [msg.value() for msg in messages]
        decoded = self._with_registry(lambda: self.decoder.decode(values))
        future = self._worker.submit(self._timed_score, decoded.frame)
        return _Scoring(messages, refs, decoded, future, time.perf_counter() - started)

    def _timed_score(self, frame: Any) -> tuple[ScoreResult, float]:
        """On the worker thread: the scores and how long they took (the main thread was busy meanwhile)."""
        started = time.perf_counter()
        return self.scorer.score(frame), time.perf_counter() - started

    def _complete(self, scoring: _Scoring) -> _InFlight:
        """Everything after the model: predictions and dead letters in input order, ready to produce."""
        m, messages, refs, decoded = self.metrics, scoring.messages, scoring.refs, scoring.decoded
        result, score_seconds = self._await_scores(scoring.future)
        t_scored = time.perf_counter()
        encoded = self.encoder.encode_scores(result)
        t_encoded = time.perf_counter()

        outputs = self._prediction_outputs(result.indices, encoded, messages, refs)
        rejections = decoded.rejections
        if result.rejections:  # rejected while scoring: give them the schema id the decoder saw
            schema_of = dict(zip(decoded.indices, decoded.schema_ids, strict=True))
            rejections = rejections + [replace(r, schema_id=schema_of.get(r.index)) for r in result.rejections]
        if self._refused:  # exactly-once retry: predictions the broker refused before become dead letters
            refused = {i for i in result.indices if (refs[i].partition, refs[i].offset) in self._refused}
            outputs = [record for record in outputs if record.source_index not in refused]
            for i in sorted(refused):
                reason = self._refused.pop((refs[i].partition, refs[i].offset))
                rejections.append(Rejection(i, RejectReason.OUTPUT_REJECTED, reason))
        if rejections:
            outputs += [self._dead_letter(messages[r.index], refs[r.index], r) for r in rejections]
            outputs.sort(key=lambda record: record.source_index)
        for stage, seconds in (
            ("decode", scoring.decode_seconds),
            ("score", score_seconds),
            ("encode", t_encoded - t_scored),
        ):
            m.stage_seconds.labels(stage=stage).observe(seconds)
        m.batch_size.observe(len(messages))
        refused = sum(1 for r in rejections if r.reason is RejectReason.OUTPUT_REJECTED)
        return _InFlight(BatchDelivery(outputs), next_offsets(refs), messages, refs, rejections, len(result) - refused)

    def _await_scores(self, future: Future[tuple[ScoreResult, float]]) -> tuple[ScoreResult, float]:
        """The worker's result; if it takes long, keep the group membership alive meanwhile.

        A model slower than ``max.poll.interval.ms`` would otherwise get this replica thrown out of the
        group (and its batch replayed elsewhere, again and again). The partitions are paused, so the
        polls that keep the membership fetch nothing new.
        """
        try:
            return future.result(timeout=KEEP_ALIVE_AFTER_S)
        except FutureTimeout:
            pass
        log.info("the model is slow on this batch: pausing partitions and polling while it works")
        self._scoring = True
        try:
            while not future.done():
                self._keep_alive(0.5)
        finally:
            self._scoring = False
        return future.result()

    def _keep_alive(self, seconds: float) -> None:
        """Poll with every partition paused: keeps the group membership without fetching records."""
        assignment = self.consumer.assignment()
        self.consumer.pause(assignment)
        try:
            deadline = self._clock() + seconds
            while self._clock() < deadline:
                # the slow path: always filter (a rebalance callback in this call also sets the caller's flag)
                for message in self._owned_only(self.consumer.consume(num_messages=1000, timeout=min(0.2, seconds))):
                    if message.error() is None:
                        self._collected.append(message)  # fetched before the pause: scored next, in order
                self.producer.poll(0)
        finally:
            self.consumer.resume(self.consumer.assignment())

    def _transact(self, batch: _InFlight) -> None:
        """Exactly-once: outputs and input offsets in one transaction; on failure, abort and rewind.

        The rewind seeks the batch's partitions back to its first offsets, so the loop reads and scores
        it again. A prediction the broker refused for good is remembered by its source offset and
        dead-lettered on the next attempt instead of failing forever.
        """
        producer, started = self.producer, time.perf_counter()
        try:
            producer.begin_transaction()
            batch.delivery.produce(producer, batch.delivery.outputs)
            for failure in batch.delivery.take_failures():  # refused at produce time (e.g. too large)
                self._remember_refusal(batch, failure)
            if self._refused:
                raise KafkaException(KafkaError(KafkaError._FAIL, "outputs refused; retrying with dead letters"))  # noqa: SLF001
            partitions = [TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()]
            producer.send_offsets_to_transaction(partitions, self.consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(60)
        except KafkaException as exc:
            error = exc.args[0]
            for failure in batch.delivery.take_failures():
                self._remember_refusal(batch, failure)
            if error.fatal() or not error.txn_requires_abort() and not error.retriable() and not self._refused:
                raise KafkaClientError(f"transaction failed: {error.str()}", fatal=True) from exc
            log.warning("transaction aborted (%s): rewinding %d records", error.str(), len(batch.messages))
            producer.abort_transaction(30)
            self.metrics.delivery_retries.inc()
            self._rewind(batch)
            return
        self.metrics.stage_seconds.labels(stage="produce").observe(time.perf_counter() - started)
        self._account(batch)

    def _remember_refusal(self, batch: _InFlight, failure: FailedOutput) -> None:
        record = failure.record
        if record.topic == self.settings.output_topic and failure.code in PERMANENT_PRODUCE_ERRORS:
            ref = batch.refs[record.source_index]
            self._refused[(ref.partition, ref.offset)] = f"the prediction was refused: {failure.reason}"
        elif record.topic == self.settings.dead_letter_topic and failure.code in PERMANENT_PRODUCE_ERRORS:
            raise DeliveryError(f"a dead letter was refused by the broker: {failure.reason}")

    def _rewind(self, batch: _InFlight) -> None:
        """Seek each partition of the batch back to its first record (and drop what was read after it)."""
        first: dict[tuple[str, int], int] = {}
        for ref in batch.refs:
            key = (ref.topic, ref.partition)
            first[key] = min(first.get(key, ref.offset), ref.offset)
        self._collected = [m for m in self._collected if (m.topic(), m.partition()) not in first]
        for (topic, partition), offset in first.items():
            self.consumer.seek(TopicPartition(topic, partition, offset))

    def _settle(self, until: int, deadline: float | None = None) -> None:
        """Serve delivery reports, handle failures, and commit every leading batch that is fully delivered.

        Blocks until at most ``until`` batches are still in flight (0: all of them, with a synchronous
        commit, as on a rebalance or shutdown).
        """
        self.producer.poll(0)
        offsets: dict[tuple[str, int], int] = {}
        while self._inflight:
            head = self._inflight[0]
            if head.delivery.pending:
                if len(self._inflight) <= until:
                    break
                self._wait_for(head, deadline)
                continue
            failures = head.delivery.take_failures()
            if failures:
                self._retry(head, failures)
                continue
            self._inflight.popleft()
            offsets.update(head.offsets)
            self._account(head)
            if "broker" in self._down:  # its acknowledgements arrived: the broker is back
                self._mark("broker", down=False)
        self._delivered.update(offsets)
        if until == 0:
            # everything acknowledged so far, synchronously: an earlier asynchronous commit may have failed
            # (e.g. during a rebalance) and must not be lost with the partitions
            offsets = dict(self._delivered)
        # Only partitions this replica owns: a batch read before its partition was lost is delivered (its
        # outputs exist), but committing it would overwrite the new owner's commits with stale ones.
        # And nothing a synchronous commit already stored: the drain commits everything, then closing the
        # consumer revokes the partitions; a commit there has nothing to add but can wait for a coordinator
        # the closing group no longer has (a SIGTERMed replica on the dev broker hung there once).
        committed = self._committed
        offsets = {k: v for k, v in offsets.items() if k in self._owned and committed.get(k) != v}
        if offsets:
            started = time.perf_counter()
            try:
                commit_offsets(self.consumer, offsets, asynchronous=until > 0)
                if until == 0:
                    committed.update(offsets)
            except KafkaClientError as exc:
                if exc.fatal:
                    raise
                # e.g. the partitions moved while a slow batch scored: the new owner re-reads from the last
                # commit, so this costs duplicates, never loss
                log.warning("commit refused (%s): the next owner replays these records", exc)
            self.metrics.stage_seconds.labels(stage="commit").observe(time.perf_counter() - started)

    def _wait_for(self, batch: _InFlight, deadline: float | None) -> None:
        """Poll until the batch's outputs are all acknowledged or failed; a broker outage just waits."""
        started = waited_since = self._clock()
        while batch.delivery.pending:
            self.producer.poll(0.1)
            if deadline is not None and self._clock() >= deadline:
                raise DeliveryError(f"{batch.delivery.pending} outputs not acknowledged before the drain deadline")
            if self._clock() - started >= UNREACHABLE_AFTER_S:
                self._mark("broker", down=True)
            if self._clock() - waited_since >= 10.0:
                log.warning("waiting for %d output acknowledgements (broker unreachable?)", batch.delivery.pending)
                waited_since = self._clock()
        self._mark("broker", down=False)

    def _retry(self, batch: _InFlight, failures: list[FailedOutput]) -> None:
        """Refused predictions become dead letters; transient failures are produced again.

        Raises ``DeliveryError`` when a dead letter itself is refused for good: then nothing of this
        batch is committed and a restart replays it.
        """
        again: list[OutputRecord] = []
        for failure in failures:
            record = failure.record
            if failure.fatal:
                self._recreate_producer(failure.reason)
            permanent = failure.code in PERMANENT_PRODUCE_ERRORS
            if record.topic == self.settings.output_topic and permanent:
                index = record.source_index
                rejection = Rejection(
                    index, RejectReason.OUTPUT_REJECTED, f"the prediction was refused: {failure.reason}"
                )
                batch.rejections.append(rejection)
                batch.refused += 1
                letter = self._dead_letter(batch.messages[index], batch.refs[index], rejection)
                batch.delivery.add([letter])
                again.append(letter)
            elif record.topic == self.settings.dead_letter_topic and permanent:
                raise DeliveryError(f"a dead letter was refused by the broker: {failure.reason}")
            else:
                again.append(record)
        batch.attempt += 1
        self.metrics.delivery_retries.inc()
        log.warning("%d outputs not delivered (attempt %d); producing them again", len(again), batch.attempt)
        if batch.attempt > 1:
            time.sleep(min(5.0, 0.2 * 2**batch.attempt))
        batch.delivery.produce(self.producer, again)

    def _account(self, batch: _InFlight) -> None:
        """Metrics and counts of a batch whose outputs are all acknowledged."""
        m = self.metrics
        scored = batch.predicted - batch.refused
        for rejection in batch.rejections:
            m.rejected.labels(reason=rejection.reason.value).inc()
        m.scored.inc(scored)
        m.batches.inc()
        m.consumed.labels(topic=self.settings.input_topic).inc(len(batch.messages))
        timestamps = np.fromiter(
            (msg.timestamp()[1] for msg in batch.messages), dtype=np.float64, count=len(batch.messages)
        )
        timestamps = timestamps[timestamps > 0]
        m.end_to_end.observe_many(np.maximum(0.0, time.time() - timestamps / 1000.0))
        self._counts["consumed"] += len(batch.messages)
        self._counts["scored"] += scored
        self._counts["rejected"] += len(batch.rejections)

    def _prediction_outputs(
        self, indices: list[int], encoded: list[bytes], messages: list[Message], refs: list[SourceRef]
    ) -> list[OutputRecord]:
        """Prediction records with the input's key and ``scorer.source.*`` headers, in input order."""
        topic = self.settings.output_topic
        source = self._source_headers
        outputs = []
        for i, value in zip(indices, encoded, strict=True):
            ref = refs[i]
            fixed = source.get((ref.topic, ref.partition))
            if fixed is None:  # the topic and partition headers are the same for every record: build once
                fixed = source[(ref.topic, ref.partition)] = (
                    ("scorer.source.topic", ref.topic.encode()),
                    ("scorer.source.partition", b"%d" % ref.partition),
                )
            headers = [fixed[0], fixed[1], ("scorer.source.offset", b"%d" % ref.offset)]
            outputs.append(OutputRecord(topic, value, messages[i].key(), headers, i))
        return outputs

    def _dead_letter(self, message: Message, ref: SourceRef, rejection: Rejection) -> OutputRecord:
        """The input, unchanged, with the reason in headers; a value too large to produce is left out
        (``scorer.value.omitted`` gives its size; the source topic and offset still lead to it)."""
        headers = dead_letter_headers(rejection, ref, self._model_tag, message.headers())
        value = message.value() or b""
        if len(value) > MAX_DEAD_LETTER_VALUE:
            headers.append(("scorer.value.omitted", str(len(value)).encode()))
            value = b""
        return OutputRecord(self.settings.dead_letter_topic, value, message.key(), headers, rejection.index)

    def _recreate_producer(self, reason: str) -> None:
        """A fatal producer error (e.g. the broker forgot the idempotent producer id): start a new one.

        The old producer's queued records are purged; their delivery reports come back as failures of
        their batches, which then produce them again on the new producer.
        """
        log.warning("producer failed fatally (%s): creating a new producer", reason)
        old = self.producer
        self.producer = self._new_producer()
        old.purge()
        old.flush(0)

    # ----------------------------------------------------------------- callbacks
    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._rebalanced = True
        self._owned.update((p.topic, p.partition) for p in partitions)
        log.info("assigned %s", _describe(partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Finish and commit what was collected before the partitions move to another replica."""
        log.info("revoked %s: finishing %d collected records", _describe(partitions), len(self._collected))
        if self._scoring:  # called from _keep_alive while the model works: do not start another batch
            revoked = {(p.topic, p.partition) for p in partitions}
            self._collected = [m for m in self._collected if (m.topic(), m.partition()) not in revoked]
        else:
            self._process_collected()
            self._produce_pending()
        self._settle(until=0)
        for p in partitions:
            self._delivered.pop((p.topic, p.partition), None)
            self._committed.pop((p.topic, p.partition), None)
            self._owned.discard((p.topic, p.partition))
        self._rebalanced = True

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions lost without a clean revoke cannot be committed: drop their records (a new owner replays)."""
        lost = {(p.topic, p.partition) for p in partitions}
        self._collected = [m for m in self._collected if (m.topic(), m.partition()) not in lost]
        for key in lost:
            self._delivered.pop(key, None)
            self._committed.pop(key, None)
        self._owned -= lost
        self._rebalanced = True
        log.warning("lost %s", _describe(partitions))

    def _on_client_error(self, error: KafkaError) -> None:
        """librdkafka ``error_cb`` of both clients: it retries by itself; we only report and mark readiness."""
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):  # noqa: SLF001 - public librdkafka codes
            self._mark("broker", down=True)
            log.debug("kafka client: %s", error.str())
        else:
            log.warning("kafka client: %s", error.str())


def _describe(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"


def run_pipeline(settings: RunSettings, registry: CollectorRegistry = REGISTRY) -> None:
    """Start and run the scorer until SIGTERM/SIGINT (the CLI installs the signal handlers)."""
    pipeline = ScoringPipeline(settings, registry)
    pipeline.start()
    pipeline.run()
