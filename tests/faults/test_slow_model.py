"""A model slower than the consumer's max poll interval on one batch: no rebalance storm, no loss."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from scorer.bundle import build_bundle, load_bundle
from scorer.demo import feature_writer_schema
from tests.faults.common import Feed, collect_outputs, running
from tests.faults.slow_model import MARKER_FEATURE, MARKER_VALUE, SlowModel
from tests.fixtures.models import TrainedModel, binary_data
from tests.integration.helpers import scorer_env, start_scorer
from tests.integration.test_restarts import _register_input_schema

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLEEP_S = 12
MAX_POLL_INTERVAL_MS = 8000  # at least the 6 s session timeout, well under the model's 12 s


@pytest.fixture(scope="module")
def slow_model(trained, tmp_path_factory) -> TrainedModel:
    fast = trained("binary")
    path = tmp_path_factory.mktemp("bundle-slow")
    build_bundle(SlowModel(fast.estimator, SLEEP_S), binary_data(), "label", "slow", "1").save(path)
    return TrainedModel(load_bundle(path), path, fast.frame)


@pytest.mark.timeout(120)
def test_a_batch_slower_than_max_poll_interval_keeps_the_membership(
    stack, slow_model, topic_factory, producer, registry_client, tmp_path, fault_results
):
    """The scorer pauses its partitions and keeps polling while the model works (``pipeline._await_scores``), so
    the group does not throw it out: no revoke after the first assignment, the slow batch is scored once."""
    source, sink = topic_factory("features"), topic_factory("predictions")
    _register_input_schema(registry_client, source, slow_model)
    env = scorer_env(
        stack,
        source,
        sink,
        slow_model,
        SCORER_MAX_BATCH_SIZE="200",
        SCORER_KAFKA_MAX_POLL_INTERVAL_MS=str(MAX_POLL_INTERVAL_MS),
    )
    scorer = start_scorer(env, tmp_path)
    with running(scorer):
        scorer.wait_for_log(f"assigned {source}[", timeout_s=60)
        feed = Feed(producer, registry_client, source, slow_model, 6000, 1000)
        time.sleep(2)
        serializer = AvroSerializer(registry_client, json.dumps(feature_writer_schema(slow_model.bundle.schema)))
        row = {**slow_model.frame.iloc[0].to_dict(), MARKER_FEATURE: MARKER_VALUE}
        value = serializer({"id": "marker", **row, "event_time": int(time.time() * 1000)}, _context(source))
        producer.produce(source, key=b"marker", value=value)
        producer.flush(10)
        slow_since = time.time()
        feed.join(60)
        ids = [*feed.ids, "marker"]
        outputs = collect_outputs(stack.bootstrap, sink, f"{source}.dlq", ids, timeout_s=60)
        scorer.sigterm()
        assert scorer.wait(30) == 0, scorer.output()[-3000:]
        outputs = collect_outputs(stack.bootstrap, sink, f"{source}.dlq", ids, timeout_s=30)

    log = scorer.output()
    lost, extra = outputs.account(ids)
    revokes = log.count("scorer.pipeline: revoked ") - 1  # the last one is the SIGTERM's
    marker_out = [m for m in outputs.predictions if m.key() == b"marker"]
    done = marker_out[0].timestamp()[1] / 1000 - slow_since if marker_out else None
    fault_results.add(
        f"slow model ({SLEEP_S} s > max.poll.interval {MAX_POLL_INTERVAL_MS // 1000} s)",
        len(ids),
        len(lost),
        extra,
        done,
        f"{revokes} revokes, {log.count('slow model: sleeping')} slow batch(es) scored",
    )
    assert "the model is slow on this batch" in log
    assert log.count("slow model: sleeping") == 1, "the slow batch was scored more than once (replayed)"
    assert revokes <= 1, f"{revokes} revokes after the first assignment: a rebalance storm"
    assert not lost, f"{len(lost)} inputs have no output"
    assert extra == 0, f"{extra} duplicates"


def _context(topic: str) -> SerializationContext:
    return SerializationContext(topic, MessageField.VALUE)
