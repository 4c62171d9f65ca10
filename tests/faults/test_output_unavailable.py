"""The output topic goes away for a while, or refuses a prediction for good."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from scorer.bundle import build_bundle, load_bundle
from tests.faults.common import Feed, collect_outputs, running, wait_until
from tests.fixtures.models import TrainedModel, binary_data
from tests.fixtures.stack import QUIET, read_topic
from tests.integration.helpers import scorer_env, start_scorer
from tests.integration.test_restarts import _register_input_schema

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = 12  # from the deletion: 3 s before phase 2 starts, then 9 s of input with the topic missing


def committed(bootstrap: str, group: str, topic: str, partitions: int = 3) -> dict[int, int]:
    """The group's committed offsets (OffsetFetch only: this consumer never joins the group)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, **QUIET})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in found}


@pytest.mark.timeout(150)
def test_output_topic_deleted_and_recreated(
    stack, trained, topic_factory, producer, registry_client, tmp_path, fault_results
):
    """Delete the output topic while the scorer runs, feed input for 10 s, recreate the topic.

    What can be checked, and why: the predictions acknowledged before the deletion went away with the old
    topic (that is the operator's doing, not a loss by the scorer), so the test first lets the scorer
    finish phase 1 and deletes the topic only then. Every input of phase 2 is produced after the deletion,
    so none of its predictions can belong in the old topic: each must be found, as a prediction or a dead
    letter, in the recreated topic. While the topic is missing the scorer must not commit any phase-2
    offset (its outputs are not acknowledged): the group's committed offsets stay at the end of phase 1
    for the whole outage, and move past it only after the recreation.

    Two dev-broker gaps shape the setup. Tansu acknowledges writes to a deleted topic from a producer
    that still has its metadata cached (the records vanish: real Kafka answers UNKNOWN_TOPIC_OR_PARTITION),
    and it auto-creates a topic on any metadata request that allows it (librdkafka producers do by
    default). So the scorer runs with ``allow.auto.create.topics=false`` (as on a cluster without
    auto-creation) and refreshes metadata every second, and phase 2 starts 3 s after the deletion: by then
    the scorer's producer knows the topic is gone, and holds its outputs as it would on real Kafka.
    """
    model = trained("binary")
    source, sink = topic_factory("features"), topic_factory("predictions")
    _register_input_schema(registry_client, source, model)
    env = scorer_env(
        stack,
        source,
        sink,
        model,
        SCORER_MAX_BATCH_SIZE="200",
        SCORER_KAFKA_ALLOW_AUTO_CREATE_TOPICS="false",
        SCORER_KAFKA_TOPIC_METADATA_REFRESH_INTERVAL_MS="1000",
    )
    admin = AdminClient({"bootstrap.servers": stack.bootstrap, **QUIET})
    dlq = f"{source}.dlq"
    scorer = start_scorer(env, tmp_path)
    with running(scorer):
        scorer.wait_for_log(f"assigned {source}[", timeout_s=60)
        before = Feed(producer, registry_client, source, model, 2000, None, prefix="before")
        before.join(30)
        collect_outputs(stack.bootstrap, sink, dlq, before.ids, timeout_s=30, settle_s=0.2)
        inputs = read_topic(stack.bootstrap, source, expected=len(before.ids), timeout_s=10)
        phase1_end = {p: max(m.offset() for m in inputs if m.partition() == p) + 1 for p in range(3)}
        wait_until(lambda: committed(stack.bootstrap, env["SCORER_GROUP_ID"], source) == phase1_end, 15)

        admin.delete_topics([sink])[sink].result(timeout=15)
        deleted = time.monotonic()
        time.sleep(3)
        after = Feed(producer, registry_client, source, model, 8000, 700, prefix="after")
        during = []
        while time.monotonic() - deleted < OUTAGE_S:
            during.append(committed(stack.bootstrap, env["SCORER_GROUP_ID"], source))
            time.sleep(1)
        assert scorer.process.poll() is None, f"the scorer exited:\n{scorer.output()[-3000:]}"
        admin.create_topics([NewTopic(sink, 3, replication_factor=-1)])[sink].result(timeout=15)
        recreated = time.time()
        after.join(30)
        outputs = collect_outputs(stack.bootstrap, sink, dlq, after.ids, timeout_s=60)
        final = committed(stack.bootstrap, env["SCORER_GROUP_ID"], source)
        scorer.sigterm()
        assert scorer.wait(30) == 0, scorer.output()[-3000:]

    lost, extra = outputs.account(after.ids)
    log = scorer.output()
    fault_results.add(
        f"output topic deleted, recreated after {OUTAGE_S} s",
        len(after.ids),
        len(lost),
        extra,
        outputs.first_after(recreated),
        f"counted: inputs produced after the deletion; {log.count('outputs not delivered')} redelivery rounds",
    )
    past = [c for c in during if any(c[p] > phase1_end[p] for p in c)]
    assert not past, f"offsets committed past undelivered outputs while the topic was missing: {past[0]} > {phase1_end}"
    assert not lost, f"{len(lost)} inputs produced after the deletion have no output in the recreated topic"
    assert all(final[p] > phase1_end[p] for p in final), "offsets move on once the outputs are delivered"
    assert not outputs.dead_letters, "a missing topic is waited for, never a reason to dead-letter"


LONG = 1200  # bytes per class name: every prediction carries them three times (label and probability map)


@pytest.fixture(scope="module")
def long_label_model(tmp_path_factory) -> TrainedModel:
    """The binary test model with long class names: its predictions are ~3.7 kB, its inputs ~70 bytes."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = binary_data()
    frame["label"] = frame["label"].map({"yes": "Y" * LONG, "no": "N" * LONG})
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), ["x0", "x1", "x2", "x3"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["colour"]),
        ]
    )
    model = make_pipeline(pre, LogisticRegression()).fit(frame.drop(columns="label"), frame["label"])
    path = tmp_path_factory.mktemp("bundle-long-labels")
    build_bundle(model, frame, "label", "long-labels", "1").save(path)
    return TrainedModel(load_bundle(path), path, frame.drop(columns="label"))


@pytest.mark.timeout(90)
def test_a_prediction_refused_for_good_is_dead_lettered(
    stack, long_label_model, topic_factory, producer, registry_client, tmp_path, fault_results
):
    """``message.max.bytes=3000``: every prediction (~3.7 kB) is refused by the producer (MSG_SIZE_TOO_LARGE,
    permanent), while its dead letter (the ~70-byte input plus ~400 bytes of headers) fits. Each input
    becomes a dead letter with reason ``output_rejected``, and the offsets are committed after them."""
    source, sink = topic_factory("features"), topic_factory("predictions")
    _register_input_schema(registry_client, source, long_label_model)
    env = scorer_env(
        stack, source, sink, long_label_model, SCORER_MAX_BATCH_SIZE="100", SCORER_KAFKA_MESSAGE_MAX_BYTES="3000"
    )
    scorer = start_scorer(env, tmp_path)
    with running(scorer):
        scorer.wait_for_log(f"assigned {source}[", timeout_s=60)
        feed = Feed(
            producer, registry_client, source, long_label_model, 500, None, prefix=f"big-{uuid.uuid4().hex[:6]}"
        )
        feed.join(30)
        started = time.time()
        outputs = collect_outputs(stack.bootstrap, sink, f"{source}.dlq", feed.ids, timeout_s=60)
        inputs = read_topic(stack.bootstrap, source, expected=len(feed.ids), timeout_s=10)
        end = {p: max(m.offset() for m in inputs if m.partition() == p) + 1 for p in range(3)}
        wait_until(lambda: committed(stack.bootstrap, env["SCORER_GROUP_ID"], source) == end, 15)
        scorer.sigterm()
        assert scorer.wait(30) == 0, scorer.output()[-3000:]

    lost, extra = outputs.account(feed.ids)
    fault_results.add(
        "prediction refused for good (too large)",
        len(feed.ids),
        len(lost),
        extra,
        outputs.first_after(started - 5),
        "every prediction dead-lettered as output_rejected",
    )
    assert not lost and extra == 0, f"{len(lost)} lost, {extra} duplicates"
    assert not outputs.predictions
    reasons = {dict(m.headers())["scorer.reason"] for m in outputs.dead_letters}
    assert reasons == {b"output_rejected"}, reasons
    detail = dict(outputs.dead_letters[0].headers())["scorer.detail"]
    assert b"MSG_SIZE_TOO_LARGE" in detail, detail
