"""Features in, predictions out, against the real dev broker and registry, with `scorer run` as a process."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.integration.helpers import produce_rows, read_predictions, scorer_env, start_scorer

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_every_prediction_equals_the_models_own_output(
    task, stack, trained, topic_factory, producer, registry_client, tmp_path
):
    model = trained(task)
    source, sink = topic_factory("features"), topic_factory("predictions")
    ids, rows = produce_rows(producer, registry_client, source, model, n=400)
    scorer = start_scorer(scorer_env(stack, source, sink, model, SCORER_MAX_BATCH_SIZE="64"), tmp_path)
    try:
        outputs = read_predictions(stack, registry_client, sink, expected=len(ids))
    finally:
        scorer.sigterm()
        assert scorer.wait(60) == 0, scorer.output()[-2000:]

    by_id = {record["id"]: (message, record) for message, record in outputs}
    assert len(outputs) == len(ids) and set(by_id) == set(ids), "N records in must give exactly N predictions out"
    order = [by_id[i][1] for i in ids]
    # Same rows, same model: equal up to the last bits, which BLAS may sum in another order for a
    # 64-row batch than for the 400-row reference call.
    exact = {"rtol": 1e-12, "atol": 0}
    estimator = model.estimator
    if task == "regression":
        np.testing.assert_allclose([r["scored_label"] for r in order], estimator.predict(rows), **exact)
        assert all(r["scored_probabilities"] is None and r["scored_probability"] is None for r in order)
    else:
        expected_proba = estimator.predict_proba(rows)
        classes = [str(c) for c in estimator.classes_]
        got_proba = np.array([[r["scored_probabilities"][c] for c in classes] for r in order])
        np.testing.assert_allclose(got_proba, expected_proba, **exact)
        assert [r["scored_label"] for r in order] == estimator.predict(rows).tolist()
        if task == "binary":
            np.testing.assert_allclose([r["scored_probability"] for r in order], expected_proba[:, -1], **exact)
        else:
            assert all(r["scored_probability"] is None for r in order)
    message, record = by_id[ids[0]]
    assert message.key() == ids[0].encode(), "the prediction keeps the input key"
    headers = dict(message.headers())
    assert headers["scorer.source.topic"] == source.encode()
    assert record["model_name"] == f"test-{task}" and record["model_version"] == "1"


def test_incompatible_registry_schema_stops_start_up_naming_the_field(
    stack, trained, topic_factory, registry_client, tmp_path
):
    from confluent_kafka.schema_registry import Schema

    model = trained("binary")
    source = topic_factory("features")
    schema = {
        "type": "record",
        "name": "Features",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "x0", "type": "string"},
            {"name": "colour", "type": "string"},
        ],
    }
    registry_client.register_schema(f"{source}-value", Schema(json.dumps(schema), "AVRO"))
    scorer = start_scorer(scorer_env(stack, source, topic_factory("predictions"), model), tmp_path)
    assert scorer.wait(60) == 3
    output = scorer.output()
    assert "cannot be read as the training schema" in output
    assert 'x0: written as "string", training type "double"' in output
    assert "x1: missing from the writer schema" in output
