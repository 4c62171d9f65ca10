"""Unit tests of the pipeline's partition ownership: records of a partition that left are never scored.

confluent-kafka's ``consume`` can return records fetched before a rebalance callback that ran during the
same call (confluent-kafka-python issue #1013). Scoring such a record of a lost partition would commit
that partition past the records the loss dropped: the new owner, started from the older commit, would
skip them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry

from scorer.config import RunSettings, load_settings
from scorer.pipeline import ScoringPipeline

ENV = {
    "SCORER_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    "SCORER_SCHEMA_REGISTRY_URL": "http://127.0.0.1:9",
    "SCORER_INPUT_TOPIC": "features",
    "SCORER_OUTPUT_TOPIC": "predictions",
    "SCORER_MODEL": "/nonexistent",
}


class Record:
    """The three accessors of a confluent-kafka Message the filter reads."""

    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def topic(self) -> str:
        return "features"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def error(self) -> None:
        return None


@pytest.fixture
def pipeline() -> Iterator[ScoringPipeline]:
    settings = load_settings(RunSettings, {}, ENV)
    pipeline = ScoringPipeline(settings, registry=CollectorRegistry())
    pipeline._on_assign(None, [TopicPartition("features", 0), TopicPartition("features", 1)])
    yield pipeline
    pipeline._worker.shutdown()


def test_records_of_a_partition_lost_during_the_call_are_not_scored(pipeline: ScoringPipeline) -> None:
    pipeline._rebalanced = False
    pipeline._collected = [Record(1, 10)]
    pipeline._on_lost(None, [TopicPartition("features", 1)])
    returned = [Record(0, 5), Record(1, 11), Record(0, 6)]
    kept = pipeline._current(returned)
    assert [(r.partition(), r.offset()) for r in kept] == [(0, 5), (0, 6)]
    assert pipeline._collected == [], "the lost partition's collected records are dropped too"


def test_a_partition_assigned_again_is_read_again(pipeline: ScoringPipeline) -> None:
    pipeline._on_lost(None, [TopicPartition("features", 1)])
    pipeline._on_assign(None, [TopicPartition("features", 1)])
    kept = pipeline._current([Record(1, 3)])
    assert [(r.partition(), r.offset()) for r in kept] == [(1, 3)]


def test_calls_without_a_rebalance_keep_every_record(pipeline: ScoringPipeline) -> None:
    pipeline._rebalanced = False
    returned = [Record(0, 1), Record(7, 1)]
    assert pipeline._current(returned) == returned
