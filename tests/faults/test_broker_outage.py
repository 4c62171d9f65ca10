"""The network path to the broker fails mid-stream (held bytes, then reset and refused connections)."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from scorer.devstack import free_port
from scorer.pipeline import REPLAY_AFTER_LOSS
from tests.faults.common import Feed, TansuBroker, collect_outputs, metric, running, scorer_with_metrics, wait_until
from tests.faults.proxy import TcpProxy
from tests.fixtures.stack import QUIET, Stack
from tests.integration.helpers import start_scorer
from tests.integration.test_restarts import _register_input_schema

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECORDS = 30_000
CUT_AFTER = 3_000  # scored records before the cut: the rest of the backlog is being fetched and scored
PAUSE_S = 3  # bytes held: requests hang, nothing fails yet
DROP_S = 10  # connections reset and refused: the broker is unreachable
GRACE_S = 3  # how long the scorer may take to notice refused connections (librdkafka reports them at once)
BATCH = 200


@pytest.fixture
def proxied_broker(tmp_path):
    """A Tansu broker of its own that advertises a proxy's port: every client byte goes through the proxy."""
    broker_port = free_port()
    proxy = TcpProxy(broker_port)
    proxy_port = proxy.start()
    broker = TansuBroker(tmp_path / "broker.log", broker_port, advertised_port=proxy_port)
    try:
        yield proxy, f"127.0.0.1:{proxy_port}"
    finally:
        broker.stop()
        proxy.close()


@pytest.mark.timeout(150)
def test_broker_connection_cut_and_restored(stack, trained, registry_client, proxied_broker, tmp_path, fault_results):
    """Hold every byte for 3 s, then reset and refuse every connection for 10 s, then restore.

    The scorer keeps running (librdkafka reconnects, undelivered outputs are produced again, nothing is
    committed before its outputs are acknowledged), loses nothing, and ``scorer_ready`` is 0 while the
    broker is unreachable and 1 again after.
    """
    proxy, bootstrap = proxied_broker
    model = trained("binary")
    admin = AdminClient({"bootstrap.servers": bootstrap, **QUIET})
    source, sink = f"features-{uuid.uuid4().hex[:8]}", f"predictions-{uuid.uuid4().hex[:8]}"
    for future in admin.create_topics([NewTopic(t, 3, replication_factor=-1) for t in (source, sink)]).values():
        future.result(timeout=15)
    _register_input_schema(registry_client, source, model)
    env, port = scorer_with_metrics(
        Stack(bootstrap, stack.registry_url), source, sink, model, SCORER_MAX_BATCH_SIZE=str(BATCH)
    )
    # The test's own producer goes through the proxy too: idempotent, so its retries across the outage do
    # not write an input twice (a CI run counted 111 such inputs' outputs as the scorer's duplicates).
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, **QUIET})
    scorer = start_scorer(env, tmp_path)
    ready: list[tuple[float, float | None]] = []  # (wall time, scorer_ready)

    def sample_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ready.append((time.time(), metric(port, "scorer_ready")))
            time.sleep(0.25)

    with running(scorer):
        scorer.wait_for_log(f"assigned {source}[", timeout_s=60)
        feed = Feed(producer, registry_client, source, model, RECORDS, rate=None)
        wait_until(lambda: (metric(port, "scorer_records_scored_total") or 0) >= CUT_AFTER, 60, interval_s=0.05)
        sample_for(0.5)
        proxy.pause()
        paused = time.time()
        scored_at_cut = metric(port, "scorer_records_scored_total") or 0
        sample_for(PAUSE_S)
        proxy.drop()
        dropped = time.time()
        sample_for(DROP_S)
        proxy.resume()
        restored = time.time()
        back = wait_until(lambda: metric(port, "scorer_ready") == 1, 30, message="scorer_ready did not return to 1")
        assert scorer.process.poll() is None, f"the scorer exited during the outage:\n{scorer.output()[-3000:]}"
        feed.join(90)
        outputs = collect_outputs(bootstrap, sink, f"{source}.dlq", feed.ids, timeout_s=90)
        scorer.sigterm()
        assert scorer.wait(30) == 0, scorer.output()[-3000:]
        outputs = collect_outputs(bootstrap, sink, f"{source}.dlq", feed.ids, timeout_s=30)

        inputs = collect_outputs(bootstrap, source, None, feed.ids, timeout_s=30)

    lost, extra = outputs.account(feed.ids)
    assert inputs.account(feed.ids) == (set(), 0), "the feed itself lost or duplicated inputs"
    during = [value for t, value in ready if dropped + GRACE_S <= t < restored]
    before = [value for t, value in ready if t < paused]
    fault_results.add(
        f"broker unreachable ({PAUSE_S} s held + {DROP_S} s refused)",
        len(feed.ids),
        len(lost),
        extra,
        outputs.first_after(restored),
        f"cut after {scored_at_cut:,.0f} scored; scorer_ready back to 1 after {back:.1f} s",
    )
    problems = []
    if lost:
        problems.append(f"{len(lost)} inputs have no output after the outage")
    if not before or any(v != 1 for v in before):
        problems.append(f"not ready before the outage: {before}")
    if not during or any(v != 0 for v in during):
        problems.append(f"scorer_ready while the broker refused connections (from {GRACE_S} s in): {during}")
    # the group expires the unreachable member: its uncommitted batches are scored again by the next owner
    if extra > REPLAY_AFTER_LOSS * BATCH:
        problems.append(f"{extra} duplicates: more than the {REPLAY_AFTER_LOSS} uncommitted batches of {BATCH}")
    assert not problems, "; ".join(problems)
