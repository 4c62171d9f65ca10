"""Where a (re)started sidecar begins reading each partition (``sidecar.start_offsets``).

A wrong start either double-reads (harmless: the timestamp filter drops old records) or skips records
(labels never joined, predictions never evaluated), so every failure of a lookup must fall back to reading
from the beginning, and "nothing in the span" must start at an end offset read before the time lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from scorer.sidecar import start_offsets

FROM_MS = 1_796_000_000_000


@dataclass
class Found:
    """An ``offsets_for_times`` answer (confluent-kafka's ``TopicPartition.error`` cannot be set from Python)."""

    topic: str
    partition: int
    offset: int
    error: KafkaError | None = None


class FakeConsumer:
    """Answers the two lookups from tables; records the order of the calls."""

    def __init__(self, by_time: dict[tuple[str, int], int], ends: dict[tuple[str, int], int]) -> None:
        self.by_time, self.ends = by_time, ends
        self.calls: list[str] = []
        self.errors: dict[tuple[str, int], KafkaError] = {}
        self.by_time_raises = False

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float, cached: bool) -> tuple[int, int]:
        assert not cached, "a cached end offset may be stale"
        assert 0 < timeout <= 15
        self.calls.append(f"end {tp.topic}[{tp.partition}]")
        key = (tp.topic, tp.partition)
        if key not in self.ends:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        return 0, self.ends[key]

    def offsets_for_times(self, wanted: list[TopicPartition], timeout: float) -> list[Found]:
        self.calls.append("by time")
        assert all(tp.offset == FROM_MS for tp in wanted)
        if self.by_time_raises:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        found = []
        for tp in wanted:
            key = (tp.topic, tp.partition)
            error = self.errors.get(key)
            found.append(Found(tp.topic, tp.partition, -1 if error else self.by_time[key], error))
        return found


PARTITIONS = [TopicPartition("predictions", 0), TopicPartition("labels", 0), TopicPartition("labels", 1)]


def offsets(result: list[TopicPartition]) -> dict[tuple[str, int], int]:
    return {(tp.topic, tp.partition): tp.offset for tp in result}


def test_partitions_start_at_the_first_record_of_the_span_or_at_the_end_read_before_the_lookup() -> None:
    consumer = FakeConsumer(
        by_time={("predictions", 0): 120, ("labels", 0): -1, ("labels", 1): 7},
        ends={("predictions", 0): 500, ("labels", 0): 42, ("labels", 1): 9},
    )
    result = offsets(start_offsets(consumer, PARTITIONS, FROM_MS))
    assert result == {("predictions", 0): 120, ("labels", 0): 42, ("labels", 1): 7}
    assert consumer.calls.index("by time") == len(consumer.calls) - 1, (
        "end offsets are read before the time lookup: one read after it could skip records written in between"
    )


def test_a_partition_whose_lookup_fails_is_read_from_the_beginning() -> None:
    consumer = FakeConsumer(
        by_time={("predictions", 0): -1, ("labels", 0): -1, ("labels", 1): 3},
        ends={("labels", 0): 42, ("labels", 1): 9},  # the end of predictions[0] cannot be read
    )
    consumer.errors[("labels", 1)] = KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION)
    result = offsets(start_offsets(consumer, PARTITIONS, FROM_MS))
    assert result == {("predictions", 0): OFFSET_BEGINNING, ("labels", 0): 42, ("labels", 1): OFFSET_BEGINNING}


def test_a_broker_that_cannot_seek_by_time_is_read_from_the_beginning() -> None:
    consumer = FakeConsumer(by_time={}, ends={("predictions", 0): 5, ("labels", 0): 5, ("labels", 1): 5})
    consumer.by_time_raises = True
    result = offsets(start_offsets(consumer, PARTITIONS, FROM_MS))
    assert set(result.values()) == {OFFSET_BEGINNING}


def test_the_lookups_stop_at_the_budget_and_what_is_left_reads_from_the_beginning() -> None:
    consumer = FakeConsumer(
        by_time={("predictions", 0): -1, ("labels", 0): -1, ("labels", 1): -1},
        ends={("predictions", 0): 5, ("labels", 0): 6, ("labels", 1): 7},
    )
    result = offsets(start_offsets(consumer, PARTITIONS, FROM_MS, budget_s=0))
    assert set(result.values()) == {OFFSET_BEGINNING}, "with no time left no end is known: never skip to the end"
