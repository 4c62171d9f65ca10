"""The schema registry is unreachable at start-up, and again mid-run.

Documented behaviour (README, "Running against your cluster"): a registry that cannot be reached is
retried with exponential backoff (0.2 s doubling up to 10 s apart), each retry logged as a warning, until
it answers or the process is stopped; the scorer never exits and never dead-letters a good record just
because the registry blinked. (Each attempt itself takes a few seconds against a refused port: the
registry client retries connection errors internally before giving up, so retries are logged about
5 s apart at first.) Writer schemas already seen are cached, so they keep scoring without it.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from scorer.codec import frame_value
from scorer.demo import feature_writer_schema
from tests.faults.common import RegistryProcess, collect_outputs, metric, running, scorer_with_metrics, wait_until
from tests.fixtures.stack import Stack
from tests.integration.helpers import start_scorer
from tests.integration.test_dead_letters import _body
from tests.integration.test_restarts import _register_input_schema

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_BACKOFF = re.compile(r"retrying in ([\d.]+) s")


@pytest.fixture
def registry(tmp_path):
    """A dev registry process of this test's own, so that the test can stop and start it."""
    process = RegistryProcess(tmp_path / "registry-state", tmp_path / "registry.log").start()
    client = SchemaRegistryClient({"url": process.url})
    try:
        yield process, client
    finally:
        client.__exit__()
        process.stop()


@pytest.mark.timeout(120)
def test_registry_down_at_start_up_is_retried_until_it_is_back(
    stack, trained, topic_factory, producer, registry, tmp_path, fault_results
):
    """Start-up with the registry stopped: the scorer logs each retry with its backoff, does not exit, and
    starts scoring once the registry answers again on the same port with the same state."""
    process, client = registry
    model = trained("binary")
    source, sink = topic_factory("features"), topic_factory("predictions")
    _register_input_schema(client, source, model)
    process.stop()
    env, _port = scorer_with_metrics(Stack(stack.bootstrap, process.url), source, sink, model)
    scorer = start_scorer(env, tmp_path)
    with running(scorer):
        wait_until(lambda: len(_BACKOFF.findall(scorer.output())) >= 2, 60, message="fewer than 2 retries logged")
        assert scorer.process.poll() is None, f"the scorer exited:\n{scorer.output()[-3000:]}"
        backoffs = [float(b) for b in _BACKOFF.findall(scorer.output())]
        process.start()
        back = time.time()
        scorer.wait_for_log(f"assigned {source}[", timeout_s=60)
        started = time.time() - back
        ids = [f"{source}-{i}" for i in range(500)]
        _produce(producer, source, _schema_id(client, source), model, ids)
        outputs = collect_outputs(stack.bootstrap, sink, f"{source}.dlq", ids, timeout_s=60)

    lost, extra = outputs.account(ids)
    fault_results.add(
        "registry down at start-up",
        len(ids),
        len(lost),
        extra,
        started,
        f"{len(backoffs)} retries logged ({', '.join(map(str, backoffs))} s); recovery = registry back → assigned",
    )
    assert "the schema registry cannot be reached" in scorer.output()
    assert len(backoffs) >= 2 and backoffs == sorted(backoffs) and backoffs[-1] > backoffs[0], (
        f"retries must back off: {backoffs}"
    )
    assert not lost and extra == 0, f"{len(lost)} lost, {extra} duplicates"
    assert not outputs.dead_letters


@pytest.mark.timeout(150)
def test_registry_down_mid_run_cached_schemas_score_and_a_new_schema_id_waits(
    stack, trained, topic_factory, producer, registry, tmp_path, fault_results
):
    """Registry stopped mid-run: records with a writer schema the scorer has seen keep scoring; a record
    with a schema id it has not seen waits (the batch is retried with backoff, partitions paused) and is
    scored, not dead-lettered, once the registry is back. Everything behind it waits too, in order."""
    process, client = registry
    model = trained("binary")
    source, sink = topic_factory("features"), topic_factory("predictions")
    writer = feature_writer_schema(model.bundle.schema)
    v1 = client.register_schema(f"{source}-value", Schema(json.dumps(writer), "AVRO"))
    extended = {**writer, "fields": [*writer["fields"], {"name": "note", "type": "string", "default": ""}]}
    v2 = client.register_schema(f"{source}-value", Schema(json.dumps(extended), "AVRO"))
    env, port = scorer_with_metrics(Stack(stack.bootstrap, process.url), source, sink, model)
    scorer = start_scorer(env, tmp_path)
    warm, cached = [f"warm-{i}" for i in range(300)], [f"cached-{i}" for i in range(300)]
    new, behind = [f"new-{i}" for i in range(50)], [f"behind-{i}" for i in range(100)]
    dlq = f"{source}.dlq"
    with running(scorer):
        scorer.wait_for_log(f"assigned {source}[", timeout_s=60)
        _produce(producer, source, v1, model, warm)
        collect_outputs(stack.bootstrap, sink, dlq, warm, timeout_s=30, settle_s=0.2)

        process.stop()
        _produce(producer, source, v1, model, cached)
        while_down = collect_outputs(stack.bootstrap, sink, dlq, cached, timeout_s=30, settle_s=0.2)
        assert not while_down.account(cached)[0], "records with a cached schema id are scored without the registry"
        assert not process.answers()

        _produce(producer, source, v2, model, new, schema=extended)
        _produce(producer, source, v1, model, behind)
        wait_until(lambda: f"schema id {v2}" in scorer.output(), 30, message="no registry retry for the new id")
        wait_until(lambda: metric(port, "scorer_ready") == 0, 10, message="scorer_ready stays 1 while it waits")
        time.sleep(3)
        waiting = collect_outputs(stack.bootstrap, sink, dlq, [], timeout_s=5, settle_s=0.5)
        assert not set(waiting.keys("predictions")) & set(new), "a record scored with a schema nobody could fetch"
        assert not waiting.dead_letters, "a good record was dead-lettered because the registry was down"
        assert scorer.process.poll() is None
        retries = metric(port, "scorer_registry_retries_total")

        process.start()
        back = time.time()
        outputs = collect_outputs(stack.bootstrap, sink, dlq, warm + cached + new + behind, timeout_s=60)
        wait_until(lambda: metric(port, "scorer_ready") == 1, 10, message="scorer_ready did not return to 1")

    ids = warm + cached + new + behind
    lost, extra = outputs.account(ids)
    fault_results.add(
        "registry down mid-run (new schema id)",
        len(ids),
        len(lost),
        extra,
        outputs.first_after(back),
        f"{len(cached)} cached-schema records scored while down; {retries:.0f} retries for the new id",
    )
    assert not outputs.dead_letters, (
        f"dead letters: {[dict(m.headers())['scorer.reason'] for m in outputs.dead_letters]}"
    )
    assert not lost and extra == 0, f"{len(lost)} lost, {extra} duplicates"


def _schema_id(client: SchemaRegistryClient, source: str) -> int:
    return client.get_latest_version(f"{source}-value").schema_id


def _produce(producer, topic: str, schema_id: int, model, ids: list[str], schema: dict | None = None) -> None:  # noqa: ANN001
    """Framed Avro written without the registry (the test's serializer must work while it is down)."""
    schema = schema or feature_writer_schema(model.bundle.schema)
    rows = model.frame.sample(n=len(ids), replace=True, random_state=len(ids)).to_dict("records")
    extra = {"note": "v2"} if any(f["name"] == "note" for f in schema["fields"]) else {}
    for record_id, row in zip(ids, rows, strict=True):
        record = {"id": record_id, **row, "event_time": int(time.time() * 1000), **extra}
        producer.produce(topic, key=record_id.encode(), value=frame_value(schema_id, _body(schema, record)))
        producer.poll(0)
    producer.flush(10)


DRAIN_S = 10


@pytest.mark.timeout(120)
def test_sigterm_while_a_batch_waits_for_the_registry_stops_in_order(
    stack, trained, topic_factory, producer, registry, tmp_path, fault_results
):
    """SIGTERM while a batch with a new schema id waits for the registry.

    The batch cannot be finished, so it is not committed: a restart replays it. The stop must still be
    the documented orderly one: settle and commit what was delivered, close the consumer (leave the
    group), log ``stopped:`` and exit 0 within the drain timeout. After the registry is back, a new
    scorer scores everything once.
    """
    process, client = registry
    model = trained("binary")
    source, sink = topic_factory("features"), topic_factory("predictions")
    writer = feature_writer_schema(model.bundle.schema)
    v1 = client.register_schema(f"{source}-value", Schema(json.dumps(writer), "AVRO"))
    extended = {**writer, "fields": [*writer["fields"], {"name": "note", "type": "string", "default": ""}]}
    v2 = client.register_schema(f"{source}-value", Schema(json.dumps(extended), "AVRO"))
    env, _port = scorer_with_metrics(
        Stack(stack.bootstrap, process.url), source, sink, model, SCORER_DRAIN_TIMEOUT_S=str(DRAIN_S)
    )
    warm, new, behind = (
        [f"warm-{i}" for i in range(300)],
        [f"new-{i}" for i in range(50)],
        [f"b-{i}" for i in range(100)],
    )
    dlq = f"{source}.dlq"
    first = start_scorer(env, tmp_path, "first")
    with running(first):
        first.wait_for_log(f"assigned {source}[", timeout_s=60)
        _produce(producer, source, v1, model, warm)
        collect_outputs(stack.bootstrap, sink, dlq, warm, timeout_s=30, settle_s=0.2)
        process.stop()
        _produce(producer, source, v2, model, new, schema=extended)
        _produce(producer, source, v1, model, behind)
        wait_until(lambda: f"schema id {v2}" in first.output(), 30, message="no registry retry for the new id")
        stopped = time.monotonic()
        first.sigterm()
        code = first.wait(DRAIN_S + 20)
        took = time.monotonic() - stopped

    process.start()
    restarted = time.time()
    second = start_scorer(env, tmp_path, "second")
    with running(second):
        outputs = collect_outputs(stack.bootstrap, sink, dlq, warm + new + behind, timeout_s=60)
        second.sigterm()
        assert second.wait(30) == 0, second.output()[-3000:]
        outputs = collect_outputs(stack.bootstrap, sink, dlq, warm + new + behind, timeout_s=30)

    ids = warm + new + behind
    lost, extra = outputs.account(ids)
    fault_results.add(
        "SIGTERM while a batch waits for the registry",
        len(ids),
        len(lost),
        extra,
        outputs.first_after(restarted),
        f"exit code {code} after {took:.1f} s (drain timeout {DRAIN_S} s)",
    )
    assert not lost and extra == 0, f"{len(lost)} lost, {extra} duplicates"
    assert not outputs.dead_letters
    assert took < DRAIN_S, f"the stop took {took:.1f} s"
    log = first.output()
    assert code == 0 and "stopped:" in log, f"not an orderly stop (exit code {code}):\n{log[-1500:]}"
