"""Replicas join and leave one consumer group mid-stream: partitions move, nothing is lost."""

from __future__ import annotations

import datetime as dt
import re
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from scorer.pipeline import REPLAY_AFTER_LOSS
from tests.faults.common import Feed, collect_outputs, running, wait_until
from tests.fixtures.stack import QUIET
from tests.integration.helpers import scorer_env, start_scorer
from tests.integration.test_restarts import _register_input_schema

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECORDS = 32_000
RATE = 1_000  # 30 s of input: a join takes two rebalance rounds (~3.5 s each) plus the process start
BATCH = 200
PARTITIONS = 6
_EVENT = re.compile(r"scorer\.pipeline: (assigned|revoked|lost) (.*?)(?:: finishing.*)?$", re.MULTILINE)
_REVOKED = re.compile(r"^(\S+ \S+) INFO scorer\.pipeline: revoked (.*?): finishing", re.MULTILINE)
# librdkafka's group-protocol debug line (debug=cgrp): every join round names the group leader
_JOIN_ROUND = re.compile(
    r"^%7\|(\d+\.\d+)\|JOINGROUP\|.*? LeaderId (\S+?)(?: \(me\))?, my MemberId (\S+?),", re.MULTILINE
)


def revoked_partitions(log: str, since: float, until: float) -> int:
    """Partitions this replica gave up (revoke callbacks) between the wall times ``since`` and ``until``."""
    count = 0
    for stamp, partitions in _REVOKED.findall(log):
        when = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if since <= when < until and partitions != "nothing":
            count += len(partitions.split(", "))
    return count


def member_id(log: str) -> str | None:
    """The member id the group gave this replica (its last join round)."""
    rounds = _JOIN_ROUND.findall(log)
    return rounds[-1][2] if rounds else None


def rounds_led_by(leader: str, logs: list[str], since: float) -> int:
    """Join rounds after ``since`` (unix time) in which the broker named ``leader`` the group leader."""
    return sum(
        1 for log in logs for when, lead, _me in _JOIN_ROUND.findall(log) if float(when) > since and lead == leader
    )


def stranded(bootstrap: str, group: str, topic: str, ids: set[str]) -> tuple[set[str], set[str]]:
    """Split inputs without an output into (still uncommitted: the next owner of their partition scores
    them, committed: really lost), by reading the input topic and the group's committed offsets."""
    inputs = collect_outputs(bootstrap, topic, None, ids, timeout_s=30).predictions  # the input records
    where = {m.key().decode(): (m.partition(), m.offset()) for m in inputs}
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, **QUIET})
    try:
        partitions = sorted({partition for partition, _offset in where.values()})
        committed = {
            tp.partition: tp.offset for tp in consumer.committed([TopicPartition(topic, p) for p in partitions], 10)
        }
    finally:
        consumer.close()
    behind = {i for i in ids if where[i][1] < committed.get(where[i][0], -1)}
    return ids - behind, behind


def owned(log: str) -> set[int]:
    """The partitions a replica owns now, replaying its incremental assign / revoke / lost log lines."""
    current: set[int] = set()
    for event, partitions in _EVENT.findall(log):
        numbers = {int(p) for p in re.findall(r"\[(\d+)\]", partitions)}
        current = current | numbers if event == "assigned" else current - numbers
    return current


@pytest.mark.timeout(200)
def test_a_replica_joins_and_another_leaves_mid_stream(
    stack, trained, topic_factory, producer, registry_client, tmp_path, fault_results
):
    """Two scorers share six partitions; a third joins, then one of the first two leaves (SIGTERM).

    A revoke finishes and commits the batch collected so far before the partitions move, so at most one
    batch per revoked partition is scored twice (by the old and the new owner), and nothing is lost. If
    the group declares an assignment lost instead (the dev broker sometimes answers a commit made while a
    rebalance is in progress with ILLEGAL_GENERATION), that replica's delivered but uncommitted batches
    are replayed: at most ``REPLAY_AFTER_LOSS`` batches more.
    """
    model = trained("binary")
    source, sink = topic_factory("features", partitions=PARTITIONS), topic_factory("predictions")
    _register_input_schema(registry_client, source, model)
    # debug=cgrp: librdkafka logs every join round with the leader the broker named (see the broker gap below)
    env = scorer_env(stack, source, sink, model, SCORER_MAX_BATCH_SIZE=str(BATCH), SCORER_KAFKA_DEBUG="cgrp")
    a, b = start_scorer(env, tmp_path, "a"), start_scorer(env, tmp_path, "b")
    with running(a, b) as processes:
        for scorer in (a, b):
            scorer.wait_for_log(f"assigned {source}[", timeout_s=60)
        feed = Feed(producer, registry_client, source, model, RECORDS, RATE)
        c = start_scorer(env, tmp_path, "c")
        processes.append(c)
        c.wait_for_log(f"assigned {source}[", timeout_s=60)
        # let the join settle (cooperative rebalancing moves partitions in two rounds) before the leave:
        # on the dev broker, a member leaving while a rebalance is still in progress can leave partitions
        # unowned for good (a broker gap, seen twice), which would test the broker, not the scorer
        wait_until(
            lambda: set().union(*(owned(p.output()) for p in (a, b, c))) == set(range(PARTITIONS)),
            30,
            message="the group did not settle: some partitions stay unowned after the join",
        )
        joined = time.time()
        time.sleep(1)
        assert not feed.done, "the leave must land while input arrives"
        a.sigterm()
        assert a.wait(30) == 0, a.output()[-3000:]
        left = time.time()
        feed.join(60)
        outputs = collect_outputs(stack.bootstrap, sink, f"{source}.dlq", feed.ids, timeout_s=45)
        ending = time.time()
        for scorer in (b, c):
            scorer.sigterm()
            assert scorer.wait(30) == 0, scorer.output()[-3000:]
        outputs = collect_outputs(stack.bootstrap, sink, f"{source}.dlq", feed.ids, timeout_s=20)

    lost, extra = outputs.account(feed.ids)
    logs = [p.output() for p in (a, b, c)]
    revoked = sum(revoked_partitions(log, feed.started, ending) for log in logs)
    lost_events = sum(log.count(" WARNING scorer.pipeline: lost ") for log in logs)
    # a lost assignment (the group said the member's generation is gone) is not a clean revoke: what was
    # delivered but not committed is replayed: at most REPLAY_AFTER_LOSS batches
    bound = revoked * BATCH + lost_events * REPLAY_AFTER_LOSS * BATCH
    # recovery: from the leave until the partitions the leaver gave up produce outputs again (new owners)
    moved = re.findall(r"revoked (.*?): finishing", a.output())[-1]
    recovery = outputs.first_after(left, [int(p) for p in re.findall(r"\[(\d+)\]", moved)])
    note = f"{revoked} partitions revoked mid-stream, {lost_events} assignments lost; bound {bound} duplicates"
    # The dev broker's gap: when the member that leaves is the group leader, Tansu sometimes keeps naming
    # it leader in every later join round; nobody computes an assignment, SyncGroup answers "rebalance in
    # progress" for ever and the leaver's partitions stay unowned (for new members too, and after the
    # group empties). Real Kafka elects a new leader. What the scorer controls then is that it committed
    # nothing past an input it did not score: those inputs wait for the next owner, none is lost.
    leaver = member_id(a.output())
    wedged = leaver is not None and rounds_led_by(leaver, [b.output(), c.output()], left) > 0
    if lost and wedged:
        waiting, lost = stranded(stack.bootstrap, env["SCORER_GROUP_ID"], source, lost)
        note += (
            f"; the broker kept the departed leader as group leader: {len(waiting)} inputs wait uncommitted "
            "for the next owner"
        )
    fault_results.add("rebalance: 3rd joins, 1 leaves", len(feed.ids), len(lost), extra, recovery, note)
    assert not lost, f"{len(lost)} inputs have no output after the rebalances (wedged group: {wedged})"
    assert revoked > 0, f"no partition moved mid-stream (joined at {joined}, left at {left})"
    assert extra <= bound, (
        f"{extra} duplicates: more than one batch per revoked partition ({revoked}) "
        f"and {REPLAY_AFTER_LOSS} batches per lost assignment ({lost_events})"
    )
