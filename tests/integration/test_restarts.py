"""Stopping a scorer mid-stream, gently (SIGTERM) or not (SIGKILL), loses no input record."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka.schema_registry import Schema

from scorer.demo import feature_writer_schema
from scorer.pipeline import REPLAY_AFTER_CRASH
from tests.fixtures.stack import read_topic
from tests.integration.helpers import (
    duplicates,
    produce_rows,
    read_predictions,
    scorer_env,
    start_scorer,
    wait_for_outputs,
)

# Process kills and restarts take a scorer's start-up twice each: they run with the fault suite
# (make test-faults, which CI runs after make test), keeping make test short.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECORDS = 20_000
RATE = 4_000
BATCH = 200


def _register_input_schema(registry_client, source: str, model) -> None:
    schema = feature_writer_schema(model.bundle.schema)
    registry_client.register_schema(f"{source}-value", Schema(json.dumps(schema), "AVRO"))


def _stop_mid_stream(scorer, stop, stack, sink, start_input) -> int:
    """Start the input once the scorer owns its partitions, stop the scorer while input is still arriving.

    Returns how many predictions existed by then.
    """
    scorer.wait_for_log("assigned", timeout_s=60)
    start_input()
    wait_for_outputs(stack.bootstrap, sink, at_least=RECORDS // 10)
    stop()
    done = len(read_topic(stack.bootstrap, sink, expected=RECORDS, timeout_s=2))
    assert 0 < done < RECORDS, f"the stop must land mid-stream, but {done} of {RECORDS} were scored"
    return done


def test_sigterm_drains_commits_and_restarts_without_duplicates(
    stack, trained, topic_factory, producer, registry_client, tmp_path, fault_results
):
    model = trained("binary")
    source, sink = topic_factory("features"), topic_factory("predictions")
    _register_input_schema(registry_client, source, model)
    env = scorer_env(stack, source, sink, model, SCORER_MAX_BATCH_SIZE=str(BATCH), SCORER_DRAIN_TIMEOUT_S="15")
    ids: list[str] = []

    def start_input() -> None:
        ids.extend(produce_rows(producer, registry_client, source, model, n=RECORDS, rate=RATE, background=True)[0])

    first = start_scorer(env, tmp_path, "first")
    stopped_at = []

    def stop() -> None:
        stopped_at.append(time.monotonic())
        first.sigterm()
        assert first.wait(30) == 0, first.output()[-2000:]

    _stop_mid_stream(first, stop, stack, sink, start_input)
    assert time.monotonic() - stopped_at[0] < 15 + 3, "SIGTERM must finish within the drain timeout"
    assert "stopped:" in first.output()

    second = start_scorer(env, tmp_path, "second")
    try:
        outputs = read_predictions(stack, registry_client, sink, expected=RECORDS, timeout_s=120)
    finally:
        second.sigterm()
        assert second.wait(60) == 0
    scored = [record["id"] for _, record in outputs]
    fault_results.add(
        "SIGTERM mid-stream, restart (make test)", RECORDS, len(set(ids) - set(scored)), duplicates(scored), None
    )
    assert set(scored) == set(ids), f"{len(set(ids) - set(scored))} input records have no prediction"
    assert duplicates(scored) == 0, "a drained stop commits everything it produced"


def test_sigkill_mid_stream_then_restart_loses_nothing(
    stack, trained, topic_factory, producer, registry_client, tmp_path, fault_results
):
    model = trained("binary")
    source, sink = topic_factory("features"), topic_factory("predictions")
    _register_input_schema(registry_client, source, model)
    env = scorer_env(stack, source, sink, model, SCORER_MAX_BATCH_SIZE=str(BATCH))
    ids: list[str] = []

    def start_input() -> None:
        ids.extend(produce_rows(producer, registry_client, source, model, n=RECORDS, rate=RATE, background=True)[0])

    first = start_scorer(env, tmp_path, "first")
    _stop_mid_stream(first, first.sigkill, stack, sink, start_input)

    second = start_scorer(env, tmp_path, "second")
    try:
        outputs = read_predictions(stack, registry_client, sink, expected=RECORDS, timeout_s=120)
    finally:
        second.sigterm()
        assert second.wait(60) == 0
    scored = [record["id"] for _, record in outputs]
    lost = set(ids) - set(scored)
    extra = duplicates(scored)
    fault_results.add("SIGKILL mid-stream, restart (make test)", RECORDS, len(lost), extra, None)
    assert not lost, f"{len(lost)} input records have no prediction after a SIGKILL"
    # at-least-once: only what was in flight (produced, not yet committed) when killed is scored again
    bound = REPLAY_AFTER_CRASH * BATCH
    assert extra <= bound, f"{extra} duplicates: more than the {REPLAY_AFTER_CRASH} uncommitted batches of {BATCH}"
