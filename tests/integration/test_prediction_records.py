"""What downstream consumers rely on: per-key order, headers that lead back to the input, the optional
features, and a model that fails on some rows costing only those rows (README, "Prediction records")."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
from confluent_kafka.schema_registry.avro import AvroSerializer

from scorer.bundle import build_bundle
from scorer.demo import feature_writer_schema, produce_features
from tests.fixtures.models import binary_data
from tests.fixtures.stack import read_topic
from tests.integration.helpers import read_predictions, scorer_env, start_scorer
from tests.integration.raising_model import RaisingModel

pytestmark = pytest.mark.integration

KEYS = 12
RECORDS = 600


def _offsets_by_key(stack, topic: str, expected: int) -> dict[str, list[tuple[int, int]]]:
    """(partition, offset) of every input record, per key, in the order they were written."""
    seen: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for message in sorted(read_topic(stack.bootstrap, topic, expected), key=lambda m: (m.partition(), m.offset())):
        seen[message.key().decode()].append((message.partition(), message.offset()))
    return seen


def test_predictions_keep_per_key_order_lead_back_to_their_input_and_carry_the_features(
    stack, trained, topic_factory, producer, registry_client, tmp_path
):
    model = trained("binary")
    source, sink = topic_factory("features", partitions=3), topic_factory("predictions")
    rows = model.frame.sample(n=RECORDS, replace=True, random_state=4).reset_index(drop=True)
    keys = [f"customer-{n % KEYS}" for n in range(RECORDS)]  # each key many times, spread over the partitions
    serializer = AvroSerializer(registry_client, json.dumps(feature_writer_schema(model.bundle.schema)))
    produce_features(producer, serializer, source, rows, keys)
    inputs = _offsets_by_key(stack, source, RECORDS)

    env = scorer_env(stack, source, sink, model, SCORER_MAX_BATCH_SIZE="50", SCORER_INCLUDE_FEATURES="true")
    scorer = start_scorer(env, tmp_path)
    try:
        outputs = read_predictions(stack, registry_client, sink, expected=RECORDS)
    finally:
        scorer.sigterm()
        assert scorer.wait(60) == 0, scorer.output()[-2000:]
    assert len(outputs) == RECORDS

    row_at = {position: n for n, position in enumerate(_positions(inputs, keys))}
    traced: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for message, record in sorted(outputs, key=lambda pair: (pair[0].partition(), pair[0].offset())):
        headers = dict(message.headers())
        key = message.key().decode()
        assert record["id"] == key
        assert headers["scorer.source.topic"] == source.encode()
        position = (int(headers["scorer.source.partition"]), int(headers["scorer.source.offset"]))
        traced[key].append(position)
        assert position in row_at, f"{position} names no input record"
        written = rows.iloc[row_at[position]].to_dict()
        assert record["features"].keys() == written.keys(), "--include-features appends the training record"
        for name, value in written.items():
            assert record["features"][name] == (pytest.approx(value) if isinstance(value, float) else value), name
    assert traced == inputs, "per key, predictions come out in input order, one per input record"


def _positions(inputs: dict[str, list[tuple[int, int]]], keys: list[str]) -> list[tuple[int, int]]:
    """The (partition, offset) of each produced row, in production order (a key's records keep their order)."""
    cursor: dict[str, int] = defaultdict(int)
    positions = []
    for key in keys:
        positions.append(inputs[key][cursor[key]])
        cursor[key] += 1
    return positions


def test_a_model_that_raises_on_some_rows_costs_only_those_rows(
    stack, trained, topic_factory, producer, registry_client, tmp_path
):
    binary = trained("binary")
    bundle = tmp_path / "raising-bundle"
    build_bundle(RaisingModel(binary.estimator), binary_data(), "label", "raising", "1").save(bundle)
    source, sink = topic_factory("features"), topic_factory("predictions")
    rows = binary.frame.sample(n=300, replace=True, random_state=5).reset_index(drop=True)
    bad = [17, 140, 141, 299]
    rows.loc[bad, "x3"] = 1000.0
    ids = [f"row-{n}" for n in range(len(rows))]
    serializer = AvroSerializer(registry_client, json.dumps(feature_writer_schema(binary.bundle.schema)))
    produce_features(producer, serializer, source, rows, ids)

    env = scorer_env(stack, source, sink, binary, SCORER_MODEL=str(bundle), SCORER_MAX_BATCH_SIZE="64")
    scorer = start_scorer(env, tmp_path)
    try:
        outputs = read_predictions(stack, registry_client, sink, expected=len(rows) - len(bad))
        letters = read_topic(stack.bootstrap, f"{source}.dlq", expected=len(bad))
    finally:
        scorer.sigterm()
        assert scorer.wait(60) == 0, "a model error never stops the scorer: " + scorer.output()[-2000:]
    scored = {record["id"]: record for _, record in outputs}
    assert set(scored) == {ids[n] for n in range(len(rows)) if n not in bad}, "every good row is scored once"
    assert len(outputs) == len(scored)
    good = rows.drop(index=bad)
    expected = binary.estimator.predict_proba(good)[:, -1]
    np.testing.assert_allclose([scored[ids[n]]["scored_probability"] for n in good.index], expected, rtol=1e-12)
    assert sorted(m.key().decode() for m in letters) == sorted(ids[n] for n in bad)
    for letter in letters:
        headers = dict(letter.headers())
        assert headers["scorer.reason"] == b"model_error"
        assert b"x3 out of the range" in headers["scorer.detail"], "the dead letter carries the model's message"
